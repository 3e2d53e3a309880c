"""Check that a PNG's pixel data is complete and well-formed without holding its pixels.

The router only needs to know that an upload decodes (the node decodes it again to use it), so
for a PNG it inflates the ``IDAT`` stream in pieces of at most ``PIECE_BYTES`` and checks what
Pillow's decoder would: the stream inflates without error, it holds every row the header calls
for (Adam7 passes included), and every row starts with a known filter type (0-4). Like Pillow
it ignores chunk CRCs of image data and anything after the last row. Memory: one piece, not a
4096x4096 image (48-64 MiB); time: about half of a full decode.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PIECE_BYTES = 1024 * 1024
CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # by colour type
ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
FILTER_TYPES = bytes(range(5))


def _chunks(data: bytes) -> Iterator[tuple[bytes, memoryview]]:
    """(type, payload) of each chunk after the signature; a chunk cut short by the end of the
    file ends the walk with what there is of it (Pillow reads image data as far as it goes)."""
    view = memoryview(data)
    pos = len(PNG_SIGNATURE)
    while pos + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        yield kind, view[pos + 8 : pos + 8 + length]
        pos += 12 + length  # length, type, payload, CRC


def _row_blocks(width: int, height: int, bits_per_pixel: int, interlaced: bool) -> list[tuple[int, int]]:
    """(bytes, row length) of each block of equal rows in the inflated data; a row starts with
    its filter-type byte."""

    def block(w: int, h: int) -> tuple[int, int]:
        row = 1 + (w * bits_per_pixel + 7) // 8
        return h * row, row

    if not interlaced:
        return [block(width, height)]
    passes = [((width - x0 + dx - 1) // dx, (height - y0 + dy - 1) // dy) for x0, y0, dx, dy in ADAM7]
    return [block(w, h) for w, h in passes if w > 0 and h > 0]


def check_png_data(data: bytes) -> None:
    """Raise ValueError if ``data`` (a PNG whose header Pillow has read) is truncated or corrupt."""
    chunks = _chunks(data)
    kind, ihdr = next(chunks, (b"", memoryview(b"")))
    if kind != b"IHDR" or len(ihdr) != 13:
        raise ValueError("PNG without a valid IHDR chunk")
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", ihdr)
    if colour not in CHANNELS:
        raise ValueError(f"unknown PNG colour type {colour}")
    blocks = _row_blocks(width, height, CHANNELS[colour] * depth, interlace == 1)
    missing = sum(size for size, _ in blocks)  # inflated bytes still to come
    if not missing:
        raise ValueError(f"PNG of {width}x{height} pixels")
    inflater = zlib.decompressobj()
    block, offset = 0, 0  # the block of rows being checked, and how far into it
    seen_idat = False
    for kind, payload in chunks:
        if kind != b"IDAT":
            if seen_idat:
                break  # the image data is one run of IDAT chunks
            continue
        seen_idat = True
        pending: bytes | memoryview = payload
        while pending and not inflater.eof:
            try:
                # Never more than the rows still missing: zlib stops there, as Pillow's decoder
                # does, so a broken checksum or junk after the last row is not read.
                out = inflater.decompress(pending, min(PIECE_BYTES, missing))
            except zlib.error as exc:
                raise ValueError(f"broken PNG image data: {exc}") from None
            pending = inflater.unconsumed_tail
            missing -= len(out)
            used = 0
            while used < len(out):
                size, row = blocks[block]
                take = min(len(out) - used, size - offset)
                filters = out[used : used + take][(-offset) % row :: row]
                if filters.translate(None, FILTER_TYPES):
                    raise ValueError("broken PNG image data: unknown row filter type")
                used, offset = used + take, offset + take
                if offset == size:
                    block, offset = block + 1, 0
            if not missing:
                return  # every row is in
    raise ValueError("truncated PNG image data")
