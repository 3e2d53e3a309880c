"""The messages between the node and its stable-diffusion.cpp worker process (:mod:`worker`).

They travel pickled over a ``multiprocessing`` pipe that only the two ends hold. Commands go in
(:class:`Load`, :class:`Generate`, :class:`Exit`); while one runs, the worker sends its log
records, progress and preview frames, then one reply. Images travel as their raw pixels
(:class:`RawImage`: mode, size, bytes), not encoded: a copy, where PNG would cost more than a
step at 64x64.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from PIL import Image

# Modes sent as they are; other images go as RGB (or RGBA when they have alpha).
RAW_MODES = frozenset({"1", "L", "LA", "RGB", "RGBA", "I", "F"})


@dataclass(frozen=True)
class RawImage:
    mode: str
    size: tuple[int, int]
    data: bytes

    @classmethod
    def of(cls, image: Image.Image) -> RawImage:
        if image.mode not in RAW_MODES:
            image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
        return cls(image.mode, image.size, image.tobytes())

    def image(self) -> Image.Image:
        return Image.frombytes(self.mode, self.size, self.data)


def pack(kwargs: dict[str, Any]) -> dict[str, Any]:
    """``generate_image`` arguments with their images (and lists of images) as :class:`RawImage`."""
    return {key: _map_images(value, RawImage.of, Image.Image) for key, value in kwargs.items()}


def unpack(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The arguments :func:`pack` made, with PIL images again."""
    return {key: _map_images(value, RawImage.image, RawImage) for key, value in kwargs.items()}


def _map_images(value: Any, convert: Any, kind: type) -> Any:
    if isinstance(value, kind):
        return convert(value)
    if isinstance(value, list) and any(isinstance(item, kind) for item in value):
        return [convert(item) if isinstance(item, kind) else item for item in value]
    return value


# --- node -> worker ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Load:
    kwargs: dict[str, Any]  # the StableDiffusion constructor's
    weights_name: str
    log_level: int  # the worker forwards log records at or above it


@dataclass(frozen=True)
class Generate:
    kwargs: dict[str, Any]  # packed generate_image arguments
    partial_images: int
    log_level: int


@dataclass(frozen=True)
class Exit:
    pass


# --- worker -> node ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LogLine:
    logger: str
    level: int
    message: str


@dataclass(frozen=True)
class Progress:
    step: int
    steps: int
    seconds: float


@dataclass(frozen=True)
class Partial:
    partial_index: int
    frame: RawImage


@dataclass(frozen=True)
class Loaded:
    seconds: float


@dataclass(frozen=True)
class Done:
    image: RawImage


@dataclass(frozen=True)
class Refused:
    """A load failed (``LoadRefused``'s message)."""

    message: str


@dataclass(frozen=True)
class Failed:
    """A generation failed (``GenerationFailed``'s message)."""

    message: str


Command = Load | Generate | Exit
Report = LogLine | Progress | Partial
Reply = Loaded | Done | Refused | Failed
