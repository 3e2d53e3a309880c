"""stable-diffusion.cpp in-process: one loaded model at a time, generations on a worker thread.

- Every call into the library runs on one dedicated worker thread; the library releases the
  GIL, so the event loop (HTTP, heartbeats) stays responsive.
- One generation at a time (an ``asyncio.Lock``): a context is not safe for concurrent use,
  and the progress and preview callbacks are process-wide. Both are cleared after every call
  into the library: the binding frees them when its call returns, and a later call without its
  own would jump into freed memory.
- A model is loaded on first use with the files its folder names (``ModelFolder.load_kwargs``);
  switching models frees the old context first, so memory holds one model; a model idle for
  ``idle_unload_s`` is unloaded. A folder that cannot be loaded answers 503
  ``model_load_failed`` with the reason, logged once; the failure is remembered, so requests in
  the next ``load_retry_s`` seconds get the same answer at once unless the folder's files change.
- A job of ``n`` images runs image by image (``batch_count=1``, seeds ``seed, seed+1, ...``:
  the pixels stable-diffusion.cpp's own batch gives, image ``i`` of a batch having the seed
  ``seed + i``), so a cancelled job (its client left) stops at the next image boundary. A job
  cancelled while it waits for the engine leaves at once. An image in progress cannot be
  interrupted: the C call has no abort hook and runs on the worker thread, so a cancelled job
  holds the engine (and counts as active) until that call returns, then ends.
- The running job's progress (image ``i`` of ``n``, step of steps, from the progress callback)
  is :meth:`SDEngine.jobs`, which heartbeats report. A step is logged at info level when
  ``progress_log_interval_s`` has passed since the job's last progress line (so a slow job shows
  its pace and a 1000-step job is not 1000 lines), the other steps at debug level; each image of
  a job of several and each job at info. The callbacks run on the worker thread while the
  library works; nothing redirects the process's output meanwhile (see ``sdcpp_log``), so every
  thread's log lines keep flowing during a generation.
- LoRAs come as the job's file -> weight map (checked by ``loras.plan_loras``); the binding gets
  them as tags the engine builds (``loras.prompt_with_loras``), applied at run time
  (``lora_apply_mode="at_runtime"``), so they never change the loaded weights of later jobs.
- A job with a :class:`JobListener` (a streamed answer) hears of every image as it is done and
  of the preview frames of the steps ``previews.preview_steps`` picks.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import json
import logging
import os
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from PIL import Image

from llmlb_node.api import JobProgress, OpenAIError
from llmlb_node.stable_diffusion import sdcpp_log
from llmlb_node.stable_diffusion.loras import prompt_with_loras
from llmlb_node.stable_diffusion.model_folder import ModelFolder, WeightsChoice, choose_weights
from llmlb_node.stable_diffusion.previews import preview_steps

log = logging.getLogger("llmlb.node.sd")

LOAD_RETRY_S = 30.0
PROGRESS_LOG_INTERVAL_S = 2.0
# "stable-diffusion.cpp:299  - " in front of sd.cpp's log lines.
SOURCE_LOCATION = re.compile(r"^[\w.-]+\.(?:cpp|hpp|h):\d+\s+-\s+")
# JobProgress counts are bounded (protocol.Count).
MAX_COUNT = 1_000_000


class JobListener(Protocol):
    """Who hears of a job's images as they come (a streamed answer)."""

    def partial(self, image_index: int, partial_index: int, frame: Image.Image) -> None:
        """A preview frame of image ``image_index``. Called on the engine's worker thread: hand
        it over (``loop.call_soon_threadsafe``) and return."""

    def completed(self, image_index: int, image: Image.Image) -> None:
        """Image ``image_index`` is done. Called on the event loop."""


@dataclass
class EngineJob:
    prompt: str
    negative_prompt: str
    width: int
    height: int
    steps: int
    cfg_scale: float
    sampler: str
    scheduler: str | None
    seed: int
    batch_count: int
    init_image: Image.Image | None = None
    mask_image: Image.Image | None = None
    strength: float = 0.75
    # None: the binding's default (guidance 3.5; flow_shift inf = the model's own).
    guidance: float | None = None
    flow_shift: float | None = None
    vae_tiling: bool = False
    cache_mode: str | None = None
    ref_images: list[Image.Image] = field(default_factory=list)
    # LoRA file (a known one, see loras.plan_loras) -> weight.
    loras: dict[Path, float] = field(default_factory=dict)
    # Partial images per image, made with preview_method, for the listener.
    partial_images: int = 0
    preview_method: str = "none"
    listener: JobListener | None = None


@dataclass
class LoadedModel:
    id: str
    context: Any
    choice: WeightsChoice
    loaded_at: float
    last_used: float


@dataclass
class RunningJob:
    """The job on the engine now, as heartbeats report it."""

    model: str
    images: int
    started: float
    image: int = 1
    step: int = 0
    steps: int = 0

    def progress(self) -> JobProgress:
        return JobProgress(
            model=self.model,
            step=min(max(self.step, 0), MAX_COUNT),
            steps=min(max(self.steps, 0), MAX_COUNT),
            image=min(self.image, MAX_COUNT),
            images=min(self.images, MAX_COUNT),
            elapsed_s=max(0.0, time.monotonic() - self.started),
        )


@dataclass(frozen=True)
class LoadFailure:
    error: OpenAIError
    files: tuple[tuple[str, int, int], ...]
    at: float


def free_memory_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def has_accelerator() -> bool:
    """Whether stable-diffusion.cpp was built with a GPU backend and a device is visible."""
    try:
        import stable_diffusion_cpp as sdc

        info = sdc.sd_get_system_info()
        text = info.decode() if isinstance(info, bytes) else str(info)
    except Exception:  # the library may be missing on a node that serves other runtimes
        return False
    return any(tag in text.upper() for tag in ("CUDA = 1", "VULKAN = 1", "METAL = 1", "HIPBLAS = 1"))


def weights_problem(path: Path) -> str | None:
    """A cheap integrity check before handing a file to the C++ loader (None: looks fine)."""
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(8)
            if path.suffix == ".gguf":
                return None if head[:4] == b"GGUF" else f"{path.name} is not a GGUF file"
            if path.suffix != ".safetensors":
                return None
            if len(head) < 8:
                return f"{path.name} is truncated"
            header_len = int.from_bytes(head, "little")
            if header_len <= 0 or 8 + header_len > size:
                return f"{path.name} is truncated or not a safetensors file"
            header = json.loads(fh.read(header_len))
    except (OSError, ValueError) as exc:
        return f"{path.name} is unreadable: {exc}"
    end = max((int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"), default=0)
    if 8 + header_len + end > size:
        return f"{path.name} is truncated ({size:,} of {8 + header_len + end:,} bytes)"
    return None


def folder_files(folder: ModelFolder) -> tuple[tuple[str, int, int], ...]:
    """Path, size and modification time of every file of a folder and of its components: when
    they change (a file replaced or fixed), a remembered load failure no longer holds."""
    paths: set[Path] = set(folder.components.values())
    with contextlib.suppress(OSError):
        paths.update(p for p in folder.path.iterdir() if p.is_file())
    found = []
    for path in sorted(paths):
        try:
            stat = path.stat()
        except OSError:
            found.append((str(path), -1, -1))
        else:
            found.append((str(path), stat.st_size, stat.st_mtime_ns))
    return tuple(found)


def _library_paths(kwargs: dict[str, Any]) -> Iterator[Path]:
    """The files a set of constructor arguments names (``*_path`` arguments)."""
    for key, value in kwargs.items():
        if key.endswith("_path") and value:
            yield Path(value)


def _tidy(line: str, kwargs: dict[str, Any]) -> str:
    """An sd.cpp log line for a client: without its source location, files by name only."""
    line = SOURCE_LOCATION.sub("", line, count=1)
    for path in _library_paths(kwargs):
        line = line.replace(str(path), path.name)
    return line


def _ignore_progress(step: int, steps: int, seconds: float, data: Any) -> None:
    """Stands in during loads, so sd.cpp does not print progress bars to stdout."""


_LOAD_PROGRESS: list[Any] = []  # the ctypes callback, created once and kept alive


def clear_callbacks() -> None:
    """Unregister the process-wide progress and preview callbacks (see the module docstring)."""
    from stable_diffusion_cpp import stable_diffusion_cpp as raw

    raw.sd_set_progress_callback(None, None)
    raw.sd_set_preview_callback(None, 0, 1, True, False, None)


_clear_progress_callback = clear_callbacks  # its name in earlier versions (tests use it)


@contextlib.contextmanager
def _quiet_load_progress() -> Iterator[None]:
    from stable_diffusion_cpp import stable_diffusion_cpp as raw

    if not _LOAD_PROGRESS:
        _LOAD_PROGRESS.append(raw.sd_progress_callback(_ignore_progress))
    raw.sd_set_progress_callback(_LOAD_PROGRESS[0], ctypes.c_void_p(0))
    try:
        yield
    finally:
        clear_callbacks()


def load_error(folder: ModelFolder, reason: str) -> OpenAIError:
    return OpenAIError(
        503,
        f"Model '{folder.id}' cannot be loaded on this node: {reason}",
        type="server_error",
        code="model_load_failed",
    )


class SDEngine:
    def __init__(
        self,
        *,
        threads: int = 0,
        idle_unload_s: float = 600.0,
        weights_preference: str = "auto",
        accelerator: bool | None = None,
        load_retry_s: float = LOAD_RETRY_S,
        progress_log_interval_s: float = PROGRESS_LOG_INTERVAL_S,
    ) -> None:
        self.threads = threads or (os.cpu_count() or 1)
        self.idle_unload_s = idle_unload_s
        self.weights_preference = weights_preference
        self.accelerator = has_accelerator() if accelerator is None else accelerator
        self.load_retry_s = load_retry_s
        self.progress_log_interval_s = progress_log_interval_s
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sd-engine")
        self._lock = asyncio.Lock()
        self.loaded: LoadedModel | None = None
        self.active_jobs = 0
        self.waiting_jobs = 0
        self.running: RunningJob | None = None
        self._load_failures: dict[str, LoadFailure] = {}
        self._reaper: asyncio.Task[None] | None = None
        self._job_counter = 0
        self._stopped = False

    # --- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        if self.idle_unload_s > 0:
            self._reaper = asyncio.create_task(self._reap_idle(), name="sd-idle-unload")

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        async with self._lock:
            await self._run(self._unload_sync)
        self._executor.shutdown(wait=True)

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _run_to_end(self, fn: Any, *args: Any) -> Any:
        """``_run``, but when cancelled, wait until ``fn`` has returned before raising
        ``CancelledError``: the worker thread cannot be stopped, and the caller must hold the
        lock (and count the job as active) until it really is done."""
        future = asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            while not future.done():
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait([future])
            raise

    async def _reap_idle(self) -> None:
        interval = max(0.2, min(5.0, self.idle_unload_s / 4))
        while True:
            await asyncio.sleep(interval)
            loaded = self.loaded
            if loaded is None or self._lock.locked():
                continue
            if time.monotonic() - loaded.last_used >= self.idle_unload_s:
                async with self._lock:
                    if self.loaded is loaded and time.monotonic() - loaded.last_used >= self.idle_unload_s:
                        log.info("model %s idle for %.0fs: unloading", loaded.id, self.idle_unload_s)
                        await self._run(self._unload_sync)

    # --- loading -------------------------------------------------------------------------
    def _unload_sync(self) -> None:
        if self.loaded is None:
            return
        model_id = self.loaded.id
        context, self.loaded.context = self.loaded.context, None
        self.loaded = None
        close = getattr(context, "close", None)
        if close is not None:
            close()  # frees the C context (weights) now, not whenever GC runs
        del context
        gc.collect()
        log.info("model %s unloaded", model_id)

    def _load_sync(self, folder: ModelFolder) -> None:
        """Load ``folder`` as ``self.loaded`` (set here, so a cancelled caller cannot lose it)."""
        import stable_diffusion_cpp as sdc

        sdcpp_log.install()
        self._unload_sync()  # one model in memory at a time
        choice = choose_weights(
            folder,
            accelerator=self.accelerator,
            free_memory_bytes=free_memory_bytes(),
            preference=self.weights_preference,
        )
        log.info(
            "loading model %s (%s) from %s (%s)",
            folder.id,
            folder.family.label,
            choice.path.name,
            choice.reason,
        )
        try:
            kwargs = folder.load_kwargs(choice.path)
        except (OSError, ValueError) as exc:
            raise load_error(folder, str(exc)) from exc
        for path in _library_paths(kwargs):
            if problem := weights_problem(path):
                raise load_error(folder, problem)
        kwargs.update(n_threads=self.threads, verbose=True)  # verbose: see sdcpp_log
        # LoRAs join the computation per call instead of being merged into the weights: a merge
        # and un-merge in f16 leaves the weights slightly changed for every later request
        # (measured: mean pixel difference 0.05 after one LoRA request).
        kwargs.setdefault("lora_apply_mode", "at_runtime")
        started = time.monotonic()
        sdcpp_log.take_errors()  # only this load's lines
        try:
            with _quiet_load_progress():
                context = sdc.StableDiffusion(**kwargs)
        except Exception as exc:
            raise load_error(folder, f"stable-diffusion.cpp refused {choice.path.name}: {exc}") from exc
        finally:
            sdcpp_log.quiet_binding()
        inner = getattr(context, "_model", None)
        if inner is not None and not getattr(inner, "model", None):
            # stable-diffusion-cpp-python 0.4.7 checks `ctx is None`, but ctypes hands back a
            # NULL pointer object, so a failed load goes unnoticed and freeing it segfaults.
            # Disarm the free and report the failure.
            inner.model = None
            reasons = "; ".join(_tidy(line, kwargs) for line in sdcpp_log.take_errors()) or "see the node log"
            raise load_error(folder, f"stable-diffusion.cpp refused {choice.path.name} ({reasons})")
        now = time.monotonic()
        log.info("model %s loaded in %.2fs", folder.id, now - started)
        self.loaded = LoadedModel(folder.id, context, choice, loaded_at=now, last_used=now)

    def _refuse_if_failed(self, folder: ModelFolder) -> None:
        """Raise the remembered load failure of ``folder`` while it holds."""
        failure = self._load_failures.get(folder.id)
        if failure is None:
            return
        if time.monotonic() - failure.at < self.load_retry_s and folder_files(folder) == failure.files:
            error = failure.error
            raise OpenAIError(error.status, error.message, type=error.type, code=error.code)
        del self._load_failures[folder.id]

    async def _load(self, folder: ModelFolder) -> None:
        files = folder_files(folder)
        try:
            await self._run_to_end(self._load_sync, folder)
        except OpenAIError as exc:
            if exc.code != "model_load_failed":
                raise
            self._load_failures[folder.id] = LoadFailure(exc, files, time.monotonic())
            log.error(
                "model %s cannot be loaded: %s; requests get 503 until its files change or for %gs",
                folder.id,
                exc.message.partition(": ")[2] or exc.message,
                self.load_retry_s,
            )
            raise
        self._load_failures.pop(folder.id, None)

    # --- generation ----------------------------------------------------------------------
    def _generate_sync(self, model: LoadedModel, job: EngineJob, job_id: int, index: int) -> Image.Image:
        """Image ``index`` of the job: ``job.seed`` (already ``seed + index``), ``batch_count`` 1."""
        running = self.running
        listener = job.listener
        # Steps whose previews are forwarded, by partial index; planned again from the number
        # of steps the sampler reports first (img2img samples fewer than asked).
        planned: dict[int, int] = {}
        replanned = False
        images = running.images if running is not None else 1
        of_images = f" (image {index + 1}/{images})" if images > 1 else ""
        last_line = time.monotonic()

        def plan(steps: int) -> None:
            planned.clear()
            planned.update({step: i for i, step in enumerate(preview_steps(steps, job.partial_images))})

        def progress(step: int, steps: int, seconds: float) -> None:
            nonlocal replanned, last_line
            if running is not None:
                running.step, running.steps = step, steps
            if step == 0 and not replanned:
                replanned = True
                plan(steps)
            if step <= 0:
                return
            now = time.monotonic()
            due = now - last_line >= self.progress_log_interval_s
            if due:
                last_line = now
            log.log(
                logging.INFO if due else logging.DEBUG,
                "job %d (%s): step %d/%d%s, %.2f s/step, about %.0fs left",
                job_id,
                model.id,
                step,
                steps,
                of_images,
                seconds,
                max(0, (images - index - 1) * steps + steps - step) * seconds,  # the job's
            )

        def preview(step: int, frames: list[Image.Image], is_noisy: bool) -> None:
            partial_index = planned.get(step)
            if partial_index is not None and frames and listener is not None:
                listener.partial(index, partial_index, frames[0])

        kwargs: dict[str, Any] = {
            "prompt": prompt_with_loras(job.prompt, job.loras),
            "negative_prompt": job.negative_prompt,
            "width": job.width,
            "height": job.height,
            "cfg_scale": job.cfg_scale,
            "sample_method": job.sampler,
            "sample_steps": job.steps,
            "seed": job.seed,
            "batch_count": 1,
            "progress_callback": progress,
            "vae_tiling": job.vae_tiling,
        }
        if job.scheduler:
            kwargs["scheduler"] = job.scheduler
        if job.guidance is not None:
            kwargs["guidance"] = job.guidance
        if job.flow_shift is not None:
            kwargs["flow_shift"] = job.flow_shift
        if job.cache_mode and job.cache_mode != "disabled":
            kwargs["cache_mode"] = job.cache_mode
        if job.init_image is not None:
            kwargs["init_image"] = job.init_image
            kwargs["strength"] = job.strength
        if job.mask_image is not None:
            kwargs["mask_image"] = job.mask_image
        if job.ref_images:
            kwargs["ref_images"] = job.ref_images
        if listener is not None and job.partial_images > 0 and job.preview_method != "none":
            plan(job.steps)
            kwargs.update(preview_method=job.preview_method, preview_callback=preview)
        try:
            images = model.context.generate_image(**kwargs)
        except Exception as exc:
            raise OpenAIError(
                500,
                f"stable-diffusion.cpp failed to generate: {exc}",
                type="server_error",
                code="generation_failed",
            ) from exc
        finally:
            clear_callbacks()
        if not images or len(images) != 1:
            raise OpenAIError(
                500,
                f"stable-diffusion.cpp returned {len(images or [])} image(s), expected 1",
                type="server_error",
                code="generation_failed",
            )
        return images[0]  # type: ignore[no-any-return]

    async def generate(self, folder: ModelFolder, job: EngineJob) -> list[Image.Image]:
        """The job's ``batch_count`` images (image ``i`` with seed ``job.seed + i``)."""
        self._refuse_if_failed(folder)
        self.waiting_jobs += 1
        try:
            await self._lock.acquire()  # cancelled here: the job is gone from the queue at once
        finally:
            self.waiting_jobs -= 1
        self.active_jobs += 1
        self.running = RunningJob(
            folder.id, images=job.batch_count, started=time.monotonic(), steps=job.steps
        )
        try:
            if self.loaded is None or self.loaded.id != folder.id:
                self._refuse_if_failed(folder)  # it may have failed while this job waited
                await self._load(folder)
            loaded = self.loaded
            assert loaded is not None
            self._job_counter += 1
            return await self._images(loaded, job, self._job_counter)
        finally:
            self.running = None
            self.active_jobs -= 1
            self._lock.release()

    async def _images(self, loaded: LoadedModel, job: EngineJob, job_id: int) -> list[Image.Image]:
        started = time.monotonic()
        images: list[Image.Image] = []
        try:
            for index in range(job.batch_count):
                if self.running is not None:
                    self.running.image, self.running.step = index + 1, 0
                one = replace(job, seed=job.seed + index, batch_count=1)
                image = await self._run_to_end(self._generate_sync, loaded, one, job_id, index)
                images.append(image)
                loaded.last_used = time.monotonic()
                if job.listener is not None:
                    job.listener.completed(index, image)
                if job.batch_count > 1:
                    log.info("job %d (%s): image %d/%d done", job_id, loaded.id, index + 1, job.batch_count)
        except asyncio.CancelledError:
            log.info(
                "job %d (%s): cancelled after %d of %d image(s)",
                job_id,
                loaded.id,
                len(images),
                job.batch_count,
            )
            raise
        log.info(
            "job %d (%s): %d image(s) %dx%d in %.2fs",
            job_id,
            loaded.id,
            len(images),
            job.width,
            job.height,
            time.monotonic() - started,
        )
        return images

    def jobs(self) -> list[JobProgress]:
        """The running job's progress (none when idle)."""
        running = self.running
        return [running.progress()] if running is not None else []

    def status(self) -> dict[str, Any]:
        return {
            "loaded_model": self.loaded.id if self.loaded else None,
            "weights": self.loaded.choice.path.name if self.loaded else None,
            "active_jobs": self.active_jobs,
            "waiting_jobs": self.waiting_jobs,
        }
