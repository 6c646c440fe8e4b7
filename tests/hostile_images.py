"""Image files built byte by byte to cost a decoder the most: tiny on disk, huge or slow to decode.

Used by the upload tests (tests/test_serving_uploads.py, tests/test_serving_hardening.py) and by
benchmarks/image_cost.py, which measures what each costs. They are written without Pillow (which
cannot write most of them) and without a full-size image in memory, however large the header says.
"""

from __future__ import annotations

import struct
import zlib

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # PNG colour type -> samples per pixel


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def transparent_palette() -> bytes:
    """PLTE + tRNS chunks with entry 0 transparent: the palette image Pillow would expand to RGBA."""
    return png_chunk(b"PLTE", bytes([255, 0, 0, 0, 255, 0])) + png_chunk(b"tRNS", b"\x00")


def handmade_png(width: int, height: int, color_type: int, depth: int = 8, rows: int | None = None,
                 extra_chunks: bytes = b"") -> bytes:
    """A PNG of zero samples, compressed by zlib a row at a time. ``rows`` < height stops the data
    early, for a header that must be refused before any pixel is read; ``extra_chunks`` go before
    the data (a palette, text)."""
    row = b"\x00" * (1 + (width * _PNG_CHANNELS[color_type] * depth + 7) // 8)  # filter byte + samples
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(height if rows is None else rows)) + compressor.flush()
    header = png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 0))
    return PNG_SIGNATURE + header + extra_chunks + png_chunk(b"IDAT", data) + png_chunk(b"IEND", b"")


def png_with_text_bomb(chunks: int = 64) -> bytes:
    """A 32x32 PNG carrying ``chunks`` zTXt chunks that each inflate to 1 MB (Pillow's text limits)."""
    text = png_chunk(b"zTXt", b"k\x00\x00" + zlib.compress(b"a" * 1_000_000, 9))
    return handmade_png(32, 32, 2, extra_chunks=text * chunks)


def icon_holding(png: bytes) -> bytes:
    """A Windows icon (ICO) whose one entry is the given PNG, as Vista-style icons store large sizes."""
    directory = struct.pack("<HHH", 0, 1, 1) + struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, len(png), 22)
    return directory + png


def bmp_rle8(width: int, height: int, run: int | None = None) -> bytes:
    """A run-length-encoded 8-bit BMP (Pillow reads but does not write these) of runs of ``run``
    pixels (default: one run per row, at most 255); ``run=1`` is the most work per byte."""
    run = run or min(width, 255)
    rows = (bytes([run, 1]) * (width // run) + b"\x00\x00") * height + b"\x00\x01"
    palette = b"\x00\x00\x00\x00" + b"\xff\xff\xff\x00" * 255
    offset = 14 + 40 + len(palette)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(rows), 0, 0, 256, 0)
    return b"BM" + struct.pack("<IHHI", offset + len(rows), 0, 0, offset) + info + palette + rows


def tiff_of_one_row_strips(width: int, height: int) -> bytes:
    """An uncompressed 8-bit gray TIFF with one strip per row, every strip the same zero row; offsets
    and counts as SHORTs, so a million strips take 4 MB."""
    row_at, tables_at = 8, 8 + width
    offsets = struct.pack(f"<{height}H", *[row_at] * height)
    counts = struct.pack(f"<{height}H", *[width] * height)
    ifd_at = tables_at + len(offsets) + len(counts)
    tags = [(256, 3, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
            (273, 3, height, tables_at), (277, 3, 1, 1), (278, 3, 1, 1), (279, 3, height, tables_at + len(offsets))]
    entries = b"".join(struct.pack("<HHII", tag, kind, count, value) if kind == 4 or count > 2
                       else struct.pack("<HHIHH", tag, kind, count, value, 0) for tag, kind, count, value in tags)
    return (b"II*\x00" + struct.pack("<I", ifd_at) + b"\x00" * width + offsets + counts
            + struct.pack("<H", len(tags)) + entries + b"\x00" * 4)
