"""Is a node's image one file of the announced format from its first byte to its last, with nothing
before or after it? Checked on every image a node sends, before it is passed on or stored.

A node is not trusted to answer well (docs/security.md): an answer whose bytes start as a PNG
but go on as HTML must not be stored and served from the router's origin. Each check reads the
file's framing only, never its pixels, so it costs microseconds even for a large image:

- **PNG**: the signature, ``IHDR`` first, then chunk after chunk (a 4-letter type, the length
  within the file) up to ``IEND``, which must end the file.
- **JPEG**: the start-of-image marker, the header segments (each a marker and a length within
  the file) up to the first start-of-scan, and the end-of-image marker as the last two bytes.
  (The entropy-coded data between is not walked.)
- **WebP**: ``RIFF`` ... ``WEBP`` whose RIFF size is the file's size, and a ``VP8``/``VP8L``/
  ``VP8X`` first chunk.

Each raises ``ValueError`` saying what is wrong.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from llmlb_plugins.images.png_check import PNG_SIGNATURE

# How each output format's files begin.
MAGIC = {"png": PNG_SIGNATURE, "jpeg": b"\xff\xd8\xff", "webp": b"RIFF"}

_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})  # markers without a length (TEM, RSTn)
_JPEG_SOS, _JPEG_EOI = 0xDA, b"\xff\xd9"
_WEBP_FIRST_CHUNKS = frozenset({b"VP8 ", b"VP8L", b"VP8X"})


def check_png(data: bytes) -> None:
    if not data.startswith(PNG_SIGNATURE):
        raise ValueError("not a PNG signature")
    pos, first = len(PNG_SIGNATURE), True
    while True:
        if pos + 12 > len(data):
            raise ValueError("a PNG that ends before its IEND chunk")
        length, kind = struct.unpack_from(">I4s", data, pos)
        if not kind.isalpha():
            raise ValueError(f"a PNG chunk type that is not 4 letters: {kind!r}")
        if first and (kind != b"IHDR" or length != 13):
            raise ValueError("a PNG that does not start with its IHDR chunk")
        end = pos + 12 + length  # length, type, payload, CRC
        if end > len(data):
            raise ValueError(f"a PNG {kind.decode()} chunk that goes past the end of the file")
        if kind == b"IEND":
            if end != len(data):
                raise ValueError(f"{len(data) - end} bytes after a PNG's IEND chunk")
            return
        pos, first = end, False


def check_jpeg(data: bytes) -> None:
    if not data.startswith(MAGIC["jpeg"]):
        raise ValueError("not a JPEG start-of-image marker")
    pos = 2
    while True:
        if pos + 4 > len(data):
            raise ValueError("a JPEG that ends in its headers")
        if data[pos] != 0xFF:
            raise ValueError(f"a JPEG header segment without a marker at byte {pos}")
        marker = data[pos + 1]
        if marker == 0xFF:  # a fill byte before a marker
            pos += 1
            continue
        if marker in _JPEG_STANDALONE:
            pos += 2
            continue
        if marker < 0xC0 or marker in (0xD8, 0xD9):
            raise ValueError(f"a JPEG marker out of place: 0x{marker:02x}")
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if length < 2:
            raise ValueError("a JPEG segment shorter than its length field")
        pos += 2 + length
        if marker == _JPEG_SOS:
            break
    if pos > len(data) - len(_JPEG_EOI) or not data.endswith(_JPEG_EOI):
        raise ValueError("a JPEG that does not end with its end-of-image marker")


def check_webp(data: bytes) -> None:
    if len(data) < 16 or not data.startswith(MAGIC["webp"]) or data[8:12] != b"WEBP":
        raise ValueError("not a RIFF WEBP header")
    riff_end = 8 + int.from_bytes(data[4:8], "little")
    if riff_end != len(data) and not (riff_end % 2 and riff_end + 1 == len(data)):  # a pad byte
        raise ValueError(f"a WebP of {len(data)} bytes whose RIFF header says {riff_end}")
    if data[12:16] not in _WEBP_FIRST_CHUNKS:
        raise ValueError(f"a WebP whose first chunk is {data[12:16]!r}")


CHECKS: dict[str, Callable[[bytes], None]] = {"png": check_png, "jpeg": check_jpeg, "webp": check_webp}


def check_file(data: bytes, output_format: str) -> None:
    """``ValueError`` unless ``data`` is exactly one ``output_format`` file (png, jpeg, webp)."""
    check = CHECKS.get(output_format)
    if check is None:
        raise ValueError(f"not an image format: {output_format!r}")
    check(data)
