"""Where stable-diffusion.cpp runs for the engine: the one interface (:class:`SDRunner`) and the
in-process runner (``cancel = "next_image"``). The worker-process runner (``cancel = "now"``)
is :class:`~llmlb_node.stable_diffusion.engine.worker_runner.WorkerRunner`.

A runner holds at most one loaded model. Its blocking methods are called on the engine's one
worker thread, one at a time (the engine serialises jobs); only :meth:`SDRunner.stop_now` is
called from elsewhere (the event loop), while a call runs. Everything else (the queue, which
weights to load, remembered load failures, progress lines, previews for a listener, the job's
deadline) is the engine's, the same for every runner.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from PIL import Image

from llmlb_node.stable_diffusion.engine.sdcpp_calls import close_model, generate_image, open_model
from llmlb_node.stable_diffusion.jobs.job import GenerateArgs


class RunnerGone(Exception):
    """The runner's process ended during a call (killed by :meth:`SDRunner.stop_now`, or it
    died); its model is no longer loaded."""

    def __init__(self, message: str, *, stopped: bool) -> None:
        super().__init__(message)
        self.stopped = stopped  # ended by stop_now, not by itself


@dataclass(frozen=True)
class ImageCall:
    """One image: the binding's ``generate_image`` arguments and how many partial images to hand
    to the events."""

    args: GenerateArgs
    partial_images: int = 0


class ImageEvents(Protocol):
    """What an image in progress reports, on the engine's worker thread while it runs."""

    def progress(self, step: int, steps: int, seconds: float) -> None:
        """sd.cpp's progress callback: ``step`` of ``steps`` (0 first), ``seconds`` per step."""

    def partial(self, partial_index: int, frame: Image.Image) -> None:
        """The preview frame of partial image ``partial_index``."""


class SDRunner(Protocol):
    """Where stable-diffusion.cpp runs (see the module docstring)."""

    # Whether stop_now can end an image in progress.
    stops_mid_image: bool

    def load(self, kwargs: dict[str, Any], weights_name: str) -> None:
        """Load a model (the ``StableDiffusion`` constructor's ``kwargs``) in place of the loaded
        one; :class:`~llmlb_node.stable_diffusion.engine.sdcpp_calls.LoadRefused` with the reason."""

    def generate(self, call: ImageCall, events: ImageEvents) -> Image.Image:
        """One image with the loaded model; ``GenerationFailed`` or :class:`RunnerGone`."""

    def unload(self) -> None:
        """Free the loaded model (nothing when none is)."""

    def stop_now(self) -> bool:
        """From any thread: end the call in progress now (it raises :class:`RunnerGone`) and
        lose the loaded model. False when this runner cannot, or nothing was running."""

    def close(self) -> None:
        """Unload and release everything (the engine stops)."""

    def pid(self) -> int | None:
        """The process that runs stable-diffusion.cpp, when it is not this one."""


class InProcessRunner:
    """stable-diffusion.cpp in this process, on the engine's worker thread. An image in progress
    cannot be stopped: the C call has no abort hook."""

    stops_mid_image = False

    def __init__(self) -> None:
        self.context: Any = None  # the binding's StableDiffusion

    def load(self, kwargs: dict[str, Any], weights_name: str) -> None:
        self.unload()  # one model in memory at a time
        self.context = open_model(kwargs, weights_name)

    def generate(self, call: ImageCall, events: ImageEvents) -> Image.Image:
        if self.context is None:
            raise RunnerGone("no model is loaded", stopped=False)
        return generate_image(
            self.context,
            call.args.kwargs(),
            partial_images=call.partial_images,
            on_progress=events.progress,
            on_partial=events.partial,
        )

    def unload(self) -> None:
        context, self.context = self.context, None
        if context is not None:
            close_model(context)

    def stop_now(self) -> bool:
        return False

    def close(self) -> None:
        self.unload()

    def pid(self) -> int | None:
        return None
