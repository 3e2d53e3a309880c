"""stable-diffusion.cpp in-process: one loaded model at a time, generations on a worker thread.

- Every call into the library runs on one dedicated worker thread; the library releases the
  GIL, so the event loop (HTTP, heartbeats) stays responsive.
- One generation at a time (an ``asyncio.Lock``): a context is not safe for concurrent use,
  and the progress callback is process-wide.
- A model is loaded on first use; switching models frees the old context first, so memory
  holds one model; a model idle for ``idle_unload_s`` is unloaded.
- A job of ``n`` images runs image by image (``batch_count=1``, seeds ``seed, seed+1, ...``:
  the pixels stable-diffusion.cpp's own batch gives, image ``i`` of a batch having the seed
  ``seed + i``), so a cancelled job (its client left) stops at the next image boundary. A job
  cancelled while it waits for the engine leaves at once. An image in progress cannot be
  interrupted: the C call has no abort hook and runs on the worker thread, so a cancelled job
  holds the engine (and counts as active) until that call returns, then ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from PIL import Image

from llmlb_node.api import OpenAIError
from llmlb_node.stable_diffusion.model_folder import ModelFolder, WeightsChoice, choose_weights

log = logging.getLogger("llmlb.node.sd")


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


@dataclass
class LoadedModel:
    id: str
    context: Any
    choice: WeightsChoice
    loaded_at: float
    last_used: float


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


def _clear_progress_callback() -> None:
    import stable_diffusion_cpp as sdc

    sdc.sd_set_progress_callback(None, None)


class SDEngine:
    def __init__(
        self,
        *,
        threads: int = 0,
        idle_unload_s: float = 600.0,
        weights_preference: str = "auto",
        accelerator: bool | None = None,
    ) -> None:
        self.threads = threads or (os.cpu_count() or 1)
        self.idle_unload_s = idle_unload_s
        self.weights_preference = weights_preference
        self.accelerator = has_accelerator() if accelerator is None else accelerator
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sd-engine")
        self._lock = asyncio.Lock()
        self.loaded: LoadedModel | None = None
        self.active_jobs = 0
        self.waiting_jobs = 0
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

        self._unload_sync()  # one model in memory at a time
        choice = choose_weights(
            folder,
            accelerator=self.accelerator,
            free_memory_bytes=free_memory_bytes(),
            preference=self.weights_preference,
        )
        log.info("loading model %s from %s (%s)", folder.id, choice.path.name, choice.reason)
        kwargs: dict[str, Any] = {
            "model_path": str(choice.path),
            "n_threads": self.threads,
            "verbose": False,
        }
        if (taesd := folder.aux(folder.profile.taesd)) is not None:
            kwargs["taesd_path"] = str(taesd)
        if (vae := folder.aux(folder.profile.vae)) is not None:
            kwargs["vae_path"] = str(vae)
        started = time.monotonic()
        problem = weights_problem(choice.path)
        if problem:
            raise OpenAIError(
                500, f"model '{folder.id}': {problem}", type="server_error", code="model_load_failed"
            )
        try:
            context = sdc.StableDiffusion(**kwargs)
        except Exception as exc:
            raise OpenAIError(
                500,
                f"stable-diffusion.cpp could not load model '{folder.id}' ({choice.path.name}): {exc}",
                type="server_error",
                code="model_load_failed",
            ) from exc
        inner = getattr(context, "_model", None)
        if inner is not None and not getattr(inner, "model", None):
            # stable-diffusion-cpp-python 0.4.7 checks `ctx is None`, but ctypes hands back a
            # NULL pointer object, so a failed load goes unnoticed and freeing it segfaults.
            # Disarm the free and report the failure.
            inner.model = None
            raise OpenAIError(
                500,
                f"stable-diffusion.cpp could not load model '{folder.id}' from "
                f"{choice.path.name} (see the node log for the reason)",
                type="server_error",
                code="model_load_failed",
            )
        now = time.monotonic()
        log.info("model %s loaded in %.2fs", folder.id, now - started)
        self.loaded = LoadedModel(folder.id, context, choice, loaded_at=now, last_used=now)

    # --- generation ----------------------------------------------------------------------
    def _generate_sync(self, model: LoadedModel, job: EngineJob, job_id: int) -> Image.Image:
        """One image: ``job.seed``, ``batch_count`` 1."""

        def progress(step: int, steps: int, seconds: float) -> None:
            log.info("job %d (%s): step %d/%d (%.2fs/it)", job_id, model.id, step, steps, seconds)

        kwargs: dict[str, Any] = {
            "prompt": job.prompt,
            "negative_prompt": job.negative_prompt,
            "width": job.width,
            "height": job.height,
            "cfg_scale": job.cfg_scale,
            "sample_method": job.sampler,
            "sample_steps": job.steps,
            "seed": job.seed,
            "batch_count": 1,
            "progress_callback": progress,
        }
        if job.scheduler:
            kwargs["scheduler"] = job.scheduler
        if job.init_image is not None:
            kwargs["init_image"] = job.init_image
            kwargs["strength"] = job.strength
        if job.mask_image is not None:
            kwargs["mask_image"] = job.mask_image
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
            # The binding registers the callback process-wide and frees it when the call
            # returns; a later call (or a model load, which reports progress too) would jump
            # into freed memory and crash. Unregister it.
            _clear_progress_callback()
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
        self.waiting_jobs += 1
        try:
            await self._lock.acquire()  # cancelled here: the job is gone from the queue at once
        finally:
            self.waiting_jobs -= 1
        self.active_jobs += 1
        try:
            if self.loaded is None or self.loaded.id != folder.id:
                await self._run_to_end(self._load_sync, folder)
            loaded = self.loaded
            assert loaded is not None
            self._job_counter += 1
            return await self._images(loaded, job, self._job_counter)
        finally:
            self.active_jobs -= 1
            self._lock.release()

    async def _images(self, loaded: LoadedModel, job: EngineJob, job_id: int) -> list[Image.Image]:
        started = time.monotonic()
        images: list[Image.Image] = []
        try:
            for index in range(job.batch_count):
                one = replace(job, seed=job.seed + index, batch_count=1)
                images.append(await self._run_to_end(self._generate_sync, loaded, one, job_id))
                loaded.last_used = time.monotonic()
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

    def status(self) -> dict[str, Any]:
        return {
            "loaded_model": self.loaded.id if self.loaded else None,
            "weights": self.loaded.choice.path.name if self.loaded else None,
            "active_jobs": self.active_jobs,
            "waiting_jobs": self.waiting_jobs,
        }
