"""stable-diffusion.cpp for the node: one loaded model, one job at a time, and jobs that stop.

- Where sd.cpp runs is a runner (:mod:`runners`), chosen by ``cancel``; everything else here is
  the same for both:

  - ``"now"`` (the default): in a worker process per loaded model
    (:class:`~llmlb_node.stable_diffusion.engine.worker_runner.WorkerRunner`). A job whose client left,
    or that runs past ``max_job_seconds``, stops at once, mid-image included: the worker is
    killed (SIGKILL, then reaped) and the job ends; then, holding the engine so that the next
    job waits for it, the same model is loaded again in a fresh worker. One line tells what the
    stop cost (``job 3 (demo): stopped mid-image (client gone) after 4.1s, 0 of 1 image(s) done;
    worker killed, model reloaded in 0.82s``), and :meth:`SDEngine.status` counts the stops and
    the reloads, with the last reload's time.
  - ``"next_image"``: in this process, on the engine's worker thread. The C call has no abort
    hook, so a job stops at the next image boundary: a cancelled job holds the engine (and counts
    as active) until the image in progress ends, and a job past ``max_job_seconds`` gets no
    further image.

  A job stopped for its time answers 504 ``job_timeout`` (saying what to do). ``max_job_seconds``
  counts from the job's first image (a model load is not interrupted); 0 means no limit.
- Every call into the runner runs on one dedicated worker thread; the library releases the GIL
  (and a worker process is another process), so the event loop (HTTP, heartbeats) stays
  responsive.
- One generation at a time (an ``asyncio.Lock``): a context is not safe for concurrent use, and
  sd.cpp's progress and preview callbacks are process-wide (:mod:`sdcpp_calls` clears them after
  every call). A job cancelled while it waits for the engine leaves at once.
- A model is loaded on first use with the files its folder names (``ModelFolder.load_kwargs``);
  switching models frees the old one first, so memory holds one model; a model idle for
  ``idle_unload_s`` is unloaded. A folder that cannot be loaded answers 503
  ``model_load_failed`` with the reason, logged once; the failure is remembered, so requests in
  the next ``load_retry_s`` seconds get the same answer at once unless the folder's files change.
- A job (:class:`~llmlb_node.stable_diffusion.jobs.job.SDJob`: the binding's arguments, typed,
  as the runtime translated the request) of ``n`` images runs image by image (``batch_count=1``,
  seeds ``seed, seed+1, ...``: the pixels stable-diffusion.cpp's own batch gives, image ``i`` of
  a batch having the seed ``seed + i``).
- The running job's progress (image ``i`` of ``n``, step of steps, from the progress callback)
  is :meth:`SDEngine.jobs`, which heartbeats report. A step is logged at info level when
  ``progress_log_interval_s`` has passed since the image's last progress line (so a slow job
  shows its pace and a 1000-step job is not 1000 lines), the other steps at debug level; each
  image of a job of several and each job at info. sd.cpp's own lines go to Python logging
  (:mod:`sdcpp_log`; from a worker process, relayed), and nothing redirects the process's output
  meanwhile, so every thread's log lines keep flowing during a generation.
- LoRAs come in the job's prompt as the tags the runtime built (``jobs.loras``); every model is
  loaded with ``lora_apply_mode="at_runtime"``, so they never change the loaded weights of later
  jobs.
- A job with a ``JobListener`` (a streamed answer) hears of every image as it is done and
  of the preview frames of the steps ``previews.preview_steps`` picks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from llmlb_node.api import JobProgress, OpenAIError
from llmlb_node.stable_diffusion.engine.runners import ImageCall, InProcessRunner, RunnerGone, SDRunner
from llmlb_node.stable_diffusion.engine.sdcpp_calls import GenerationFailed, LoadRefused, library_paths
from llmlb_node.stable_diffusion.engine.worker_runner import WorkerRunner
from llmlb_node.stable_diffusion.jobs.job import SDJob
from llmlb_node.stable_diffusion.jobs.loras import LORA_APPLY_MODE
from llmlb_node.stable_diffusion.models.model_folder import ModelFolder, WeightsChoice, choose_weights
from llmlb_node.stable_diffusion.settings import MAX_JOB_SECONDS, CancelMode

log = logging.getLogger("llmlb.node.sd")

LOAD_RETRY_S = 30.0
PROGRESS_LOG_INTERVAL_S = 2.0
# JobProgress counts are bounded (protocol.Count).
MAX_COUNT = 1_000_000
CLIENT_GONE = "client gone"


@dataclass
class LoadedModel:
    id: str
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


@dataclass
class JobRun:
    """A job on the engine, as its images, its progress lines and its stop need it."""

    id: int
    model: str
    job: SDJob
    started: float
    deadline: float | None  # monotonic time, from max_job_seconds
    images: list[Image.Image] = field(default_factory=list)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def done_of(self) -> str:
        return f"{len(self.images)} of {self.job.images} image(s)"


@dataclass(frozen=True)
class MidImageStop:
    """A job whose runner was stopped mid-image: its model must be loaded again."""

    job_id: int
    model: str
    reason: str
    after_s: float
    done_of: str

    def line(self) -> str:
        return (
            f"job {self.job_id} ({self.model}): stopped mid-image ({self.reason}) after "
            f"{self.after_s:.1f}s, {self.done_of} done; worker killed"
        )


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


def load_error(folder: ModelFolder, reason: str) -> OpenAIError:
    return OpenAIError(
        503,
        f"Model '{folder.id}' cannot be loaded on this node: {reason}",
        type="server_error",
        code="model_load_failed",
    )


def job_timeout(limit_s: float, run: JobRun) -> OpenAIError:
    return OpenAIError(
        504,
        f"The image job was stopped after {run.elapsed():.0f}s with {run.done_of()} done: this "
        f"node allows {limit_s:g}s per job (max_job_seconds). Ask for fewer steps, a smaller size "
        "or fewer images, or have the node's operator raise max_job_seconds.",
        type="server_error",
        code="job_timeout",
    )


def generation_failed(message: str) -> OpenAIError:
    return OpenAIError(500, message, type="server_error", code="generation_failed")


async def until_done(future: asyncio.Future[Any]) -> None:
    """Wait until ``future`` is done, whatever cancels the waiter meanwhile (the work it stands
    for holds the engine until then)."""
    while not future.done():
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait([future])


class ImageProgress:
    """The :class:`~llmlb_node.stable_diffusion.engine.runners.ImageEvents` of image ``index`` of a
    job: its progress (for :meth:`SDEngine.jobs` and the log) and its preview frames (for the
    job's listener). Called on the engine's worker thread."""

    def __init__(self, engine: SDEngine, run: JobRun, index: int) -> None:
        self.engine = engine
        self.run = run
        self.index = index
        self.last_line = time.monotonic()

    def progress(self, step: int, steps: int, seconds: float) -> None:
        running = self.engine.running
        if running is not None:
            running.step, running.steps = step, steps
        if step <= 0:
            return
        now = time.monotonic()
        due = now - self.last_line >= self.engine.progress_log_interval_s
        if due:
            self.last_line = now
        images, index = self.run.job.images, self.index
        log.log(
            logging.INFO if due else logging.DEBUG,
            "job %d (%s): step %d/%d%s, %.2f s/step, about %.0fs left",
            self.run.id,
            self.run.model,
            step,
            steps,
            f" (image {index + 1}/{images})" if images > 1 else "",
            seconds,
            max(0, (images - index - 1) * steps + steps - step) * seconds,  # the job's
        )

    def partial(self, partial_index: int, frame: Image.Image) -> None:
        listener = self.run.job.listener
        if listener is not None:
            listener.partial(self.index, partial_index, frame)


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
        cancel: CancelMode = "now",
        max_job_seconds: float = MAX_JOB_SECONDS,
        runner: SDRunner | None = None,
    ) -> None:
        self.threads = threads or (os.cpu_count() or 1)
        self.idle_unload_s = idle_unload_s
        self.weights_preference = weights_preference
        self.accelerator = has_accelerator() if accelerator is None else accelerator
        self.load_retry_s = load_retry_s
        self.progress_log_interval_s = progress_log_interval_s
        self.cancel = cancel
        self.max_job_seconds = max_job_seconds
        self.runner: SDRunner = runner or (WorkerRunner() if cancel == "now" else InProcessRunner())
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sd-engine")
        self._lock = asyncio.Lock()
        self.loaded: LoadedModel | None = None
        self.active_jobs = 0
        self.waiting_jobs = 0
        self.running: RunningJob | None = None
        self._load_failures: dict[str, LoadFailure] = {}
        self._reaper: asyncio.Task[None] | None = None
        self._reload: asyncio.Task[None] | None = None
        self._mid_image_stop: MidImageStop | None = None  # of the job on the engine now
        self._job_counter = 0
        self._stopped = False
        self.stopped_mid_image = 0
        self.reloads = 0
        self.last_reload_s: float | None = None

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
        async with self._lock:  # after the running job and a reload
            await self._run(self._unload_sync)
            await self._run(self.runner.close)
        self._executor.shutdown(wait=True)

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _run_to_end(self, fn: Any, *args: Any) -> Any:
        """``_run``, but when cancelled, wait until ``fn`` has returned before raising
        ``CancelledError``: the caller must hold the lock until the worker thread is free."""
        future = asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            await until_done(future)
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
        self.loaded = None
        self.runner.unload()  # frees the weights now, not whenever GC runs
        log.info("model %s unloaded", model_id)

    def _load_sync(self, folder: ModelFolder) -> None:
        """Load ``folder`` as ``self.loaded`` (set here, so a cancelled caller cannot lose it)."""
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
        for path in library_paths(kwargs):
            if problem := weights_problem(path):
                raise load_error(folder, problem)
        kwargs.update(n_threads=self.threads, verbose=True)  # verbose: see sdcpp_log
        kwargs.setdefault("lora_apply_mode", LORA_APPLY_MODE)  # see loras
        started = time.monotonic()
        try:
            self.runner.load(kwargs, choice.path.name)
        except LoadRefused as exc:
            raise load_error(folder, str(exc)) from exc
        now = time.monotonic()
        pid = self.runner.pid()
        where = f" (worker process {pid})" if pid is not None else ""
        log.info("model %s loaded in %.2fs%s", folder.id, now - started, where)
        self.loaded = LoadedModel(folder.id, choice, loaded_at=now, last_used=now)

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

    async def _reload_after(self, folder: ModelFolder, stop: MidImageStop) -> None:
        """Load the model of a job stopped mid-image again, holding the engine (the job handed
        its lock over), and log what the stop cost."""
        try:
            if self._stopped:
                log.info("%s", stop.line())
                return
            started = time.monotonic()
            try:
                await self._load(folder)
            except OpenAIError:  # logged by _load, and remembered for the next job
                log.info("%s; the model could not be loaded again", stop.line())
                return
            except Exception:  # a bug: the next job loads the model itself
                log.exception("%s; loading the model again failed", stop.line())
                return
            self.reloads += 1
            self.last_reload_s = time.monotonic() - started
            log.info("%s, model reloaded in %.2fs", stop.line(), self.last_reload_s)
        finally:
            self._lock.release()

    # --- generation ----------------------------------------------------------------------
    async def generate(self, folder: ModelFolder, job: SDJob) -> list[Image.Image]:
        """The job's images (image ``i`` with seed ``job.args.seed + i``)."""
        self._refuse_if_failed(folder)
        self.waiting_jobs += 1
        try:
            await self._lock.acquire()  # cancelled here: the job is gone from the queue at once
        finally:
            self.waiting_jobs -= 1
        self.active_jobs += 1
        self.running = RunningJob(
            folder.id, images=job.images, started=time.monotonic(), steps=job.args.sample_steps
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
            stop, self._mid_image_stop = self._mid_image_stop, None
            if stop is None:
                self._lock.release()
            else:  # the job has ended; the reload holds the engine until the model is back
                self._reload = asyncio.create_task(self._reload_after(folder, stop), name="sd-reload")

    async def _images(self, loaded: LoadedModel, job: SDJob, job_id: int) -> list[Image.Image]:
        now = time.monotonic()
        limit = self.max_job_seconds
        run = JobRun(job_id, loaded.id, job, started=now, deadline=now + limit if limit > 0 else None)
        # Preview frames only for a listener (a streamed answer).
        partial_images = job.partial_images if job.listener is not None and job.args.preview_method else 0
        try:
            for index in range(job.images):
                if index and run.deadline is not None and time.monotonic() >= run.deadline:
                    log.info(
                        "job %d (%s): stopped at an image boundary (max_job_seconds = %gs passed) after "
                        "%.1fs, %s done",
                        job_id,
                        loaded.id,
                        limit,
                        run.elapsed(),
                        run.done_of(),
                    )
                    raise job_timeout(limit, run)
                if self.running is not None:
                    self.running.image, self.running.step = index + 1, 0
                call = ImageCall(job.image(index), partial_images)
                image = await self._image(run, call, ImageProgress(self, run, index))
                run.images.append(image)
                loaded.last_used = time.monotonic()
                if job.listener is not None:
                    job.listener.completed(index, image)
                if job.images > 1:
                    log.info("job %d (%s): image %d/%d done", job_id, loaded.id, index + 1, job.images)
        except asyncio.CancelledError:
            if self._mid_image_stop is None:
                log.info("job %d (%s): cancelled after %s", job_id, loaded.id, run.done_of())
            raise
        log.info(
            "job %d (%s): %d image(s) %dx%d in %.2fs",
            job_id,
            loaded.id,
            len(run.images),
            job.args.width,
            job.args.height,
            run.elapsed(),
        )
        return run.images

    async def _image(self, run: JobRun, call: ImageCall, events: ImageProgress) -> Image.Image:
        """One image on the worker thread. Cancelled (its client left) or past the job's deadline,
        a runner that can stops it now; otherwise a cancelled job waits for the image to end."""
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, self.runner.generate, call, events)
        timeout = None
        if run.deadline is not None and self.runner.stops_mid_image:
            timeout = max(0.0, run.deadline - time.monotonic())
        try:
            done, _ = await asyncio.wait([future], timeout=timeout)
        except asyncio.CancelledError:
            self._stop_mid_image(run, CLIENT_GONE)
            await self._settle(future)
            raise
        if not done:
            self._stop_mid_image(run, f"max_job_seconds = {self.max_job_seconds:g}s passed")
            await self._settle(future)
            raise job_timeout(self.max_job_seconds, run)
        try:
            return future.result()  # type: ignore[no-any-return]
        except GenerationFailed as exc:
            raise generation_failed(str(exc)) from exc
        except RunnerGone as exc:  # it died by itself: the next job loads the model again
            self.loaded = None
            log.error("job %d (%s): %s; the next job loads the model again", run.id, run.model, exc)
            raise generation_failed(f"stable-diffusion.cpp stopped while generating ({exc})") from exc

    def _stop_mid_image(self, run: JobRun, reason: str) -> None:
        if self.runner.stop_now():
            self.stopped_mid_image += 1
            self._mid_image_stop = MidImageStop(run.id, run.model, reason, run.elapsed(), run.done_of())

    async def _settle(self, future: asyncio.Future[Any]) -> None:
        """Wait for a stopped (or unstoppable) image to end; a runner that ended with it has lost
        its model."""
        await until_done(future)
        if not future.cancelled() and isinstance(future.exception(), RunnerGone):
            self.loaded = None

    def jobs(self) -> list[JobProgress]:
        """The running job's progress (none when idle)."""
        running = self.running
        return [running.progress()] if running is not None else []

    def status(self) -> dict[str, Any]:
        """What an operator sees of the engine: the model, the jobs, how jobs stop and what
        stopping them mid-image cost (each stop reloads the model)."""
        return {
            "loaded_model": self.loaded.id if self.loaded else None,
            "weights": self.loaded.choice.path.name if self.loaded else None,
            "active_jobs": self.active_jobs,
            "waiting_jobs": self.waiting_jobs,
            "cancel": self.cancel,
            "max_job_seconds": self.max_job_seconds,
            "worker_pid": self.runner.pid(),
            "stopped_mid_image": self.stopped_mid_image,
            "reloading": self._reload is not None and not self._reload.done(),
            "reloads": self.reloads,
            "last_reload_s": None if self.last_reload_s is None else round(self.last_reload_s, 3),
        }
