"""The calls into stable-diffusion.cpp (the binding), wherever they run: on the engine's worker
thread (``cancel = "next_image"``) or in a worker process (``cancel = "now"``, :mod:`worker`).

The binding's traps are handled here, once for both:

- the progress and preview callbacks are process-wide and freed when the call that set them
  returns: a later call without its own would jump into freed memory, so both are cleared after
  every call (:func:`clear_callbacks`); during a load a do-nothing progress callback keeps sd.cpp
  from printing progress bars to stdout;
- a load that fails hands back a NULL context that 0.4.7 does not notice (freeing it segfaults):
  it is disarmed and reported with sd.cpp's own error lines (:func:`open_model`);
- sd.cpp calls the preview callback once per step; the steps whose frames become partial images
  are picked here (:func:`previews.preview_steps`, planned again from the number of steps the
  sampler reports first: img2img samples fewer than asked), so a worker process sends only those.

Nothing here imports the node's web stack: the worker process imports this module alone.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from PIL import Image

from llmlb_node.stable_diffusion.answers.previews import preview_steps
from llmlb_node.stable_diffusion.engine import sdcpp_log

# "stable-diffusion.cpp:299  - " in front of sd.cpp's log lines.
SOURCE_LOCATION = re.compile(r"^[\w.-]+\.(?:cpp|hpp|h):\d+\s+-\s+")

# (step, steps, seconds per step), from sd.cpp's progress callback.
OnProgress = Callable[[int, int, float], None]
# (partial index, preview frame) for the steps preview_steps picks.
OnPartial = Callable[[int, Image.Image], None]


class LoadRefused(Exception):
    """stable-diffusion.cpp could not load a model; the message says why (for a client)."""


class GenerationFailed(Exception):
    """stable-diffusion.cpp failed to generate; the message says why."""


def library_paths(kwargs: dict[str, Any]) -> Iterator[Path]:
    """The files a set of constructor arguments names (``*_path`` arguments)."""
    for key, value in kwargs.items():
        if key.endswith("_path") and value:
            yield Path(value)


def tidy(line: str, kwargs: dict[str, Any]) -> str:
    """An sd.cpp log line for a client: without its source location, files by name only."""
    line = SOURCE_LOCATION.sub("", line, count=1)
    for path in library_paths(kwargs):
        line = line.replace(str(path), path.name)
    return line


def clear_callbacks() -> None:
    """Unregister the process-wide progress and preview callbacks (see the module docstring)."""
    from stable_diffusion_cpp import stable_diffusion_cpp as raw

    raw.sd_set_progress_callback(None, None)
    raw.sd_set_preview_callback(None, 0, 1, True, False, None)


def _ignore_progress(step: int, steps: int, seconds: float, data: Any) -> None:
    """Stands in during loads, so sd.cpp does not print progress bars to stdout."""


_LOAD_PROGRESS: list[Any] = []  # the ctypes callback, created once and kept alive


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


def open_model(kwargs: dict[str, Any], weights_name: str) -> Any:
    """A loaded ``StableDiffusion`` context for the constructor arguments ``kwargs``, or
    :class:`LoadRefused` with sd.cpp's reason (``weights_name``: the weights file, by name)."""
    import stable_diffusion_cpp as sdc

    sdcpp_log.install()
    sdcpp_log.take_errors()  # only this load's lines
    try:
        with _quiet_load_progress():
            context = sdc.StableDiffusion(**kwargs)
    except Exception as exc:
        raise LoadRefused(f"stable-diffusion.cpp refused {weights_name}: {exc}") from exc
    finally:
        sdcpp_log.quiet_binding()
    inner = getattr(context, "_model", None)
    if inner is not None and not getattr(inner, "model", None):
        # stable-diffusion-cpp-python 0.4.7 checks `ctx is None`, but ctypes hands back a NULL
        # pointer object, so a failed load goes unnoticed and freeing it segfaults. Disarm the
        # free and report the failure.
        inner.model = None
        reasons = "; ".join(tidy(line, kwargs) for line in sdcpp_log.take_errors()) or "see the node log"
        raise LoadRefused(f"stable-diffusion.cpp refused {weights_name} ({reasons})")
    return context


def close_model(context: Any) -> None:
    """Free a context's C memory (the weights) now, not whenever the garbage collector runs."""
    close = getattr(context, "close", None)
    if close is not None:
        close()
    del context
    gc.collect()


def generate_image(
    context: Any,
    kwargs: dict[str, Any],
    *,
    partial_images: int = 0,
    on_progress: OnProgress,
    on_partial: OnPartial | None = None,
) -> Image.Image:
    """One image (``batch_count`` 1) with the binding's ``generate_image(**kwargs)``. Progress
    goes to ``on_progress`` at every step; with ``on_partial`` and ``preview_method`` in
    ``kwargs``, the frames of the ``partial_images`` steps :func:`preview_steps` picks go to
    ``on_partial``. Both are called on the calling thread while sd.cpp works."""
    planned: dict[int, int] = {}  # step -> partial index
    replanned = False

    def plan(steps: int) -> None:
        planned.clear()
        planned.update({step: i for i, step in enumerate(preview_steps(steps, partial_images))})

    def progress(step: int, steps: int, seconds: float) -> None:
        nonlocal replanned
        if step == 0 and not replanned:
            replanned = True
            plan(steps)
        on_progress(step, steps, seconds)

    def preview(step: int, frames: list[Image.Image], is_noisy: bool) -> None:
        partial_index = planned.get(step)
        if partial_index is not None and frames and on_partial is not None:
            on_partial(partial_index, frames[0])

    call = dict(kwargs, batch_count=1, progress_callback=progress)
    if on_partial is None or partial_images <= 0 or call.get("preview_method", "none") == "none":
        call.pop("preview_method", None)
    else:
        plan(int(call.get("sample_steps", 0)))
        call["preview_callback"] = preview
    try:
        images = context.generate_image(**call)
    except Exception as exc:
        raise GenerationFailed(f"stable-diffusion.cpp failed to generate: {exc}") from exc
    finally:
        clear_callbacks()
    if not images or len(images) != 1:
        raise GenerationFailed(f"stable-diffusion.cpp returned {len(images or [])} image(s), expected 1")
    return images[0]  # type: ignore[no-any-return]
