"""A minimal Motion-JPEG AVI writer, so tests make real video files without PyAV or ffmpeg (decord reads them;
it mis-sizes frames whose width is not a multiple of 32, so the tests use 64 x 64)."""
from __future__ import annotations

import io
import struct
from pathlib import Path
from typing import List

from PIL import Image


def _chunk(fourcc: bytes, data: bytes) -> bytes:
    return fourcc + struct.pack("<I", len(data)) + data + (b"\0" if len(data) % 2 else b"")


def _list(kind: bytes, data: bytes) -> bytes:
    return _chunk(b"LIST", kind + data)


def write_avi(path: Path, frames: List[Image.Image], fps: int = 10) -> None:
    w, h = frames[0].size
    jpegs = []
    for f in frames:
        buf = io.BytesIO()
        f.convert("RGB").save(buf, "JPEG", quality=95)
        jpegs.append(buf.getvalue())
    n, biggest = len(jpegs), max(map(len, jpegs))
    avih = struct.pack("<14I", 1_000_000 // fps, biggest * fps, 0, 0x10, n, 0, 1, biggest, w, h, 0, 0, 0, 0)
    strh = struct.pack("<4s4sIHHIIIIIIIIhhhh", b"vids", b"MJPG", 0, 0, 0, 0, 1, fps, 0, n, biggest, 0xFFFFFFFF, 0,
                       0, 0, w, h)
    strf = struct.pack("<IiiHH4sIiiII", 40, w, h, 1, 24, b"MJPG", w * h * 3, 0, 0, 0, 0)
    hdrl = _list(b"hdrl", _chunk(b"avih", avih) + _list(b"strl", _chunk(b"strh", strh) + _chunk(b"strf", strf)))
    movi_body, index, offset = b"", b"", 4  # offsets count from the 'movi' fourcc
    for j in jpegs:
        index += struct.pack("<4sIII", b"00dc", 0x10, offset, len(j))
        chunk = _chunk(b"00dc", j)
        movi_body += chunk
        offset += len(chunk)
    body = b"AVI " + hdrl + _list(b"movi", movi_body) + _chunk(b"idx1", index)
    Path(path).write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
