"""Image uploads are bounded and decoded off the event loop (issue 8, item 7), a second mask and
an empty model are 400s (item 12). Real router and node processes, except one in-process test of
the decoder's concurrency bound."""

from __future__ import annotations

import asyncio
import io
import random
import struct
import threading
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from llmlb_core.api import ParsedForm, Upload
from llmlb_plugins.images import decoding
from llmlb_plugins.images.decoding import CheckedImage, ImageDecoder, ImageLimits
from llmlb_plugins.images.png_check import ADAM7, CHANNELS, check_png_data
from tests.support.images_util import alpha_mask, gradient, png_bytes
from tests.support.models import ImageSystem
from tests.support.servers import Proc, create_key, router_proc
from tests.system.test_images_bad_input import GOOD, expect, post_form, post_json

MB = 1024 * 1024
FAST = {"model": "demo", "prompt": "edit", "steps": "1", "response_format": "b64_json"}


def flat_png(side: int, shade: int, mode: str = "RGB") -> bytes:
    """A ``side`` x ``side`` PNG of one colour: large in pixels, tiny on the wire (``RGBA``: a
    fully transparent mask)."""
    out = io.BytesIO()
    colour = (shade, 255 - shade, 128) if mode == "RGB" else (0, 0, 0, 0)
    Image.new(mode, (side, side), colour).save(out, format="PNG", compress_level=1)
    return out.getvalue()


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


# --------------------------------------------------------------------------- item 12


def test_a_second_mask_part_is_a_400(image_system: ImageSystem) -> None:
    mask = ("m.png", png_bytes(alpha_mask(64, 64, (0, 0, 8, 8))), "image/png")
    response = post_form(
        image_system, "/v1/images/edits", FAST, [("image", GOOD), ("mask", mask), ("mask", mask)]
    )
    expect(response, 400, param="mask", code="duplicate_mask")
    one_mask = post_form(image_system, "/v1/images/edits", FAST, [("image", GOOD), ("mask", mask)])
    assert one_mask.status_code == 200, one_mask.text


@pytest.mark.parametrize("model", ["", "   "])
def test_an_empty_model_is_a_400_on_images(image_system: ImageSystem, model: str) -> None:
    expect(post_json(image_system, {"model": model, "prompt": "a cat", "steps": 1}), 400, param="model")
    for path in ("/v1/images/edits", "/v1/images/variations"):
        fields = {**FAST, "model": model}
        expect(post_form(image_system, path, fields, [("image", GOOD)]), 400, param="model")
    # Leaving the model out still means the only image model online.
    response = post_json(image_system, {"prompt": "a cat", "steps": 1, "response_format": "b64_json"})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {"model": "", "messages": [{"role": "user", "content": "hi"}]}),
        ("/v1/completions", {"model": "", "prompt": "hi"}),
        ("/v1/embeddings", {"model": "", "input": "hi"}),
        ("/v1/audio/speech", {"model": "", "input": "hi", "voice": "alloy"}),
    ],
)
@pytest.mark.parametrize("model", ["", "   "])
def test_an_empty_model_is_a_400_on_text_and_audio(
    image_system: ImageSystem, path: str, body: Any, model: str
) -> None:
    expect(post_json(image_system, {**body, "model": model}, path=path), 400, param="model")


@pytest.mark.parametrize("model", ["", "   "])
def test_an_empty_model_is_a_400_on_transcriptions(image_system: ImageSystem, model: str) -> None:
    for path in ("/v1/audio/transcriptions", "/v1/audio/translations"):
        response = post_form(
            image_system, path, {"model": model}, [("file", ("a.wav", b"RIFF0000", "audio/wav"))]
        )
        expect(response, 400, param="model")


# --------------------------------------------------------------------------- item 7: limits


@pytest.fixture
def small_budget_router(tmp_path: Path, procs: list[Proc]) -> Proc:
    """A router (no node) whose edits may carry 3 x 64x64 pixels in all."""
    proc = router_proc(tmp_path, env={"LLMLB_PLUGIN__IMAGES__MAX_REQUEST_PIXELS": str(3 * 64 * 64)})
    procs.append(proc)
    return proc.start().wait_healthy()


def test_pixels_per_request_are_bounded_before_decoding(small_budget_router: Proc) -> None:
    url, key = small_budget_router.url, create_key(small_budget_router.url, ["api"])

    def edit(files: list[tuple[str, tuple[str, bytes, str]]]) -> httpx.Response:
        return httpx.post(
            f"{url}/v1/images/edits", data=FAST, files=files, headers={"authorization": f"Bearer {key}"}
        )

    image = png_bytes(gradient(64, 64))
    mask = png_bytes(alpha_mask(64, 64, (0, 0, 8, 8)))
    over = edit([("image[]", ("a.png", image, "image/png"))] * 3 + [("mask", ("m.png", mask, "image/png"))])
    error = expect(over, 400, param="image", code="too_many_pixels")
    assert "16,384" in error["message"] and "12,288" in error["message"], error
    assert "max_request_pixels" in error["message"]
    # Truncated files over the budget: refused by their headers, nothing was decoded.
    truncated = ("t.png", image[: len(image) // 2], "image/png")
    expect(edit([("image[]", truncated)] * 4), 400, code="too_many_pixels")
    # Within the budget the images pass their checks (there is no node to send them to).
    within = edit([("image[]", ("a.png", image, "image/png"))] * 2 + [("mask", ("m.png", mask, "image/png"))])
    expect(within, 404, code="model_not_found")
    expect(edit([("image[]", truncated)]), 400, code="invalid_image")


def test_corrupt_jpeg_and_webp_are_refused(image_system: ImageSystem) -> None:
    for fmt in ("JPEG", "WEBP"):
        data = png_bytes(Image.effect_noise((256, 256), 60).convert("RGB"), fmt)
        response = post_form(
            image_system,
            "/v1/images/edits",
            FAST,
            [("image", ("a", data[: len(data) // 2], "application/octet-stream"))],
        )
        expect(response, 400, param="image", code="invalid_image")


def test_decodes_run_off_the_loop_at_most_n_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    running, most = 0, 0
    lock = threading.Lock()

    def slow_verify(checked: CheckedImage) -> None:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.15)  # a long decode, holding its thread
        with lock:
            running -= 1

    monkeypatch.setattr(decoding, "verify", slow_verify)
    decoder = ImageDecoder(
        ImageLimits(max_bytes=MB, max_pixels=64 * 64, max_request_pixels=10**6, decodes_at_once=2)
    )
    form = ParsedForm(files=[Upload("image[]", "a.png", "image/png", png_bytes(gradient(64, 64)))] * 2)

    async def scenario() -> float:
        longest_tick = 0.0

        async def ticker() -> None:
            nonlocal longest_tick
            while True:
                started = time.perf_counter()
                await asyncio.sleep(0.01)
                longest_tick = max(longest_tick, time.perf_counter() - started)

        tick = asyncio.create_task(ticker())
        reads = [decoder.read(form, max_images=4, mask_allowed=True, keep_pixels=False) for _ in range(4)]
        results = await asyncio.gather(*reads)
        tick.cancel()
        assert all(len(r.images) == 2 for r in results)
        return longest_tick

    longest_tick = asyncio.run(scenario())
    assert most == 2, most  # 8 decodes, never more than 2 at once
    assert longest_tick < 0.1, f"the event loop stalled for {longest_tick:.3f}s"


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def interlaced_png(width: int, height: int, colour: int = 2, depth: int = 8) -> bytes:
    """An Adam7-interlaced PNG (Pillow cannot write one) with random rows and filter types."""
    rng = random.Random(width * 1000 + height)
    bits = CHANNELS[colour] * depth
    raw = b""
    for x0, y0, dx, dy in ADAM7:
        w, h = (width - x0 + dx - 1) // dx, (height - y0 + dy - 1) // dy
        if w and h:
            raw += b"".join(bytes([rng.randrange(5)]) + rng.randbytes((w * bits + 7) // 8) for _ in range(h))
    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 1)
    palette = _chunk(b"PLTE", bytes(range(256)) * 3) if colour == 3 else b""
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + palette
        + _chunk(b"IDAT", zlib.compress(raw))
        + _chunk(b"IEND", b"")
    )


def pillow_png(mode: str, size: tuple[int, int], **options: Any) -> bytes:
    noise = Image.effect_noise(size, 80)
    image = noise.convert("RGB").quantize(2 ** options.get("bits", 8)) if mode == "P" else noise.convert(mode)
    out = io.BytesIO()
    image.save(out, format="PNG", **options)
    return out.getvalue()


def test_the_png_check_refuses_exactly_what_pillow_refuses() -> None:
    """The router checks PNGs without decoding them (plugins/images/png_check.py); the node
    decodes them with Pillow. On truncated and bit-flipped files of every PNG layout, both agree."""

    def pillow_accepts(data: bytes) -> bool:
        try:
            with Image.open(io.BytesIO(data)) as image:
                image.load()
        except Exception:
            return False
        return True

    def check_accepts(data: bytes) -> bool:
        try:
            check_png_data(data)
        except ValueError:
            return False
        return True

    bases = [
        pillow_png("1", (97, 61)),
        pillow_png("L", (97, 61)),
        pillow_png("LA", (50, 50)),
        pillow_png("RGB", (97, 61)),
        pillow_png("RGBA", (64, 33)),
        pillow_png("I;16", (40, 40)),
        pillow_png("P", (77, 40), bits=2),
        pillow_png("P", (33, 40), bits=4),
        pillow_png("P", (77, 40)),
        interlaced_png(37, 23),
        interlaced_png(13, 9, colour=3, depth=1),
        interlaced_png(5, 3, colour=0, depth=16),
        interlaced_png(1, 1),
        interlaced_png(64, 64, colour=6),
    ]
    compared = disagree = refused = 0
    for n, good in enumerate(bases):
        assert pillow_accepts(good) and check_accepts(good), n
        rng = random.Random(n)
        variants = [good[: rng.randrange(8, len(good))] for _ in range(20)]
        for _ in range(60):
            flipped = bytearray(good)
            flipped[rng.randrange(33, len(good))] ^= 1 << rng.randrange(8)
            variants.append(bytes(flipped))
        for data in variants:
            try:
                Image.open(io.BytesIO(data)).close()
            except Exception:
                continue  # refused by its header already, before either check runs
            compared += 1
            verdict = pillow_accepts(data)
            refused += not verdict
            disagree += verdict != check_accepts(data)
    assert compared > 800 and refused > 100, (compared, refused)
    assert disagree == 0, f"{disagree} of {compared} damaged PNGs judged differently from Pillow"


# --------------------------------------------------------------------------- item 7: memory


def _probe_health(url: str, stop: threading.Event, latencies: list[float]) -> None:
    with httpx.Client(timeout=30) as client:
        while not stop.is_set():
            started = time.perf_counter()
            assert client.get(f"{url}/health").status_code == 200
            latencies.append(time.perf_counter() - started)
            stop.wait(0.02)


def _sample_peak(pid: int, stop: threading.Event, peak: list[int]) -> None:
    while not stop.is_set():
        peak[0] = max(peak[0], rss(pid))
        stop.wait(0.005)


def test_large_edits_keep_router_memory_bounded_and_health_fast(image_system: ImageSystem) -> None:
    """A 4096x4096 PNG and its 4096x4096 mask per edit, 4 edits at once: the router checks them
    on worker threads without holding their pixels (before: decoded on the event loop, /health
    waited seconds, and hundreds of MB stayed in the process after the edits). (Four images per
    edit until issue 10: an SD1 model now refuses extra images, which are reference images.)"""
    router = image_system.router
    assert router.popen is not None
    pid = router.popen.pid
    files = [
        ("image", ("image.png", flat_png(4096, 90), "image/png")),
        ("mask", ("mask.png", flat_png(4096, 0, "RGBA"), "image/png")),
    ]
    warm = post_form(image_system, "/v1/images/edits", FAST, [("image", GOOD)])
    assert warm.status_code == 200, warm.text
    rest = rss(pid)

    stop = threading.Event()
    latencies: list[float] = []
    peak = [rest]
    watchers: list[Callable[[], None]] = [
        lambda: _probe_health(router.url, stop, latencies),
        lambda: _sample_peak(pid, stop, peak),
    ]
    with ThreadPoolExecutor(6) as pool:
        running = [pool.submit(w) for w in watchers]
        edits = [pool.submit(post_form, image_system, "/v1/images/edits", FAST, files) for _ in range(4)]
        answers = [e.result(timeout=300) for e in edits]
        stop.set()
        for r in running:
            r.result(timeout=30)
    assert all(a.status_code == 200 for a in answers), [a.text[:200] for a in answers]
    time.sleep(1.0)
    after = rss(pid)
    # Measured: +13 MB at the peak, +9 MB after (bench/upload_memory.py compares with before).
    assert peak[0] - rest < 100 * MB, f"peak {(peak[0] - rest) / MB:.0f} MB above rest"
    assert after - rest < 50 * MB, f"{(after - rest) / MB:.0f} MB above rest after the edits"
    assert len(latencies) >= 5
    assert max(latencies) < 1.0, f"/health took up to {max(latencies):.2f}s during the edits"
