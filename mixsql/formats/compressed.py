"""Decompressed JSONL bytes in newline-aligned blocks: zstd (one-shot for a single frame of known
size, streamed otherwise, concatenated frames) and gzip (concatenated members), with the seek table
of frame starts that readers use to resume decompression near a row; line spans by numpy."""
from __future__ import annotations

import threading
import zlib

import numpy as np
import zstandard

from .. import storage
from .task import ScanError

BLOCK_BYTES = 32 << 20          # decompressed bytes parsed per pyarrow.json call
READ_BYTES = 64 << 20           # compressed bytes read per I/O call
WRITE_BYTES = 16 << 20          # decompressed bytes produced per zstd output buffer
ONE_SHOT_BYTES = 256 << 20      # a zstd frame up to this size decompresses into one buffer
SEEK_SPACING = 256 << 10        # decompressed bytes between recorded seek points (at least)


# compression -> (new decoder, its error class, what a truncated stream is called)
_MULTI_FRAME = {
    "zstd": (lambda: zstandard.ZstdDecompressor().decompressobj(write_size=WRITE_BYTES), zstandard.ZstdError,
             "truncated zstd file (the compressed stream ends mid-frame)"),
    "gzip": (lambda: zlib.decompressobj(wbits=47), zlib.error,
             "truncated gzip file (the compressed stream ends early)"),
}


def _zstd_single_frame(raw: bytes) -> bool:
    """True when ``raw`` is exactly one complete zstd frame (walks the block headers: cheap)."""
    try:
        pos = zstandard.frame_header_size(raw)
    except zstandard.ZstdError:
        return False
    checksum = 4 if raw[4] & 0x04 else 0
    n = len(raw)
    while pos + 3 <= n:
        bh = int.from_bytes(raw[pos:pos + 3], "little")
        btype = (bh >> 1) & 3
        if btype == 3:
            return False
        pos += 3 + (1 if btype == 1 else bh >> 3)
        if bh & 1:
            return pos + checksum == n
    return False


_BUFFERS = threading.local()


def _zstd_one_shot(raw: bytes) -> memoryview | None:
    """Decompress a single complete frame of known size into this thread's reused buffer (no fresh
    pages per file); None when ``raw`` is not such a frame. The view is valid until the next call
    in this thread."""
    if len(raw) < 18 or raw[:4] != b"\x28\xb5\x2f\xfd":
        return None
    size = zstandard.frame_content_size(raw[:18])
    if not 0 < size <= ONE_SHOT_BYTES or not _zstd_single_frame(raw):
        return None
    buf = getattr(_BUFFERS, "buf", None)
    if buf is None or len(buf) < size:
        buf = _BUFFERS.buf = memoryview(bytearray(size + (size >> 3)))
    reader = zstandard.ZstdDecompressor().stream_reader(raw, read_size=len(raw))
    n = 0
    while n < size and (k := reader.readinto(buf[n:size])):
        n += k
    return buf[:size] if n == size else None


def decompressed_chunks(path: str, compression: str, seek: list | None = None):
    """Yield decompressed byte chunks; raise ScanError for truncated/corrupt input.

    Compressed files may hold several concatenated frames (zstd) or members (gzip). When ``seek``
    is a list, it receives a seek table: ``(compressed offset, decompressed offset)`` of frame or
    member starts at least SEEK_SPACING decompressed bytes apart, starting with ``(0, 0)``; readers
    resume decompression at the nearest one instead of byte 0."""
    with storage.open_input(path, buffer_size=READ_BYTES) as fh:
        if compression == "none":
            while b := fh.read(BLOCK_BYTES):
                yield b
            return
        if compression not in _MULTI_FRAME:
            raise ScanError(f"unknown compression {compression!r}")
        new_decoder, error, truncated = _MULTI_FRAME[compression]
        b = fh.read(READ_BYTES)
        if compression == "zstd" and len(b) < READ_BYTES:   # the whole (small enough) file
            try:
                view = _zstd_one_shot(b)
            except zstandard.ZstdError:
                view = None
            if view is not None:
                if seek is not None:
                    seek.append((0, 0))
                yield view
                return
        d = new_decoder()
        if compression == "zstd" and len(b) >= 18:  # one output buffer per frame when its size is known
            size = zstandard.frame_content_size(b[:18])
            if 0 < size <= ONE_SHOT_BYTES:
                d = zstandard.ZstdDecompressor().decompressobj(write_size=size + 1)
        pending = False  # input fed into a frame that has not ended
        c_pos = d_pos = 0   # compressed offset of b[0]; decompressed bytes so far
        if seek is not None:
            seek.append((0, 0))
        while b:
            while b:
                try:
                    out = d.decompress(b)
                except error as exc:
                    raise ScanError(f"corrupt {compression} data ({exc})",
                                    hint="re-download or re-compress the file") from None
                pending = True
                if out:
                    d_pos += len(out)
                    yield out
                if d.eof:
                    c_pos += len(b) - len(d.unused_data)
                    b = d.unused_data
                    d = new_decoder()
                    pending = False
                    if seek is not None and b and d_pos - seek[-1][1] >= SEEK_SPACING:
                        seek.append((c_pos, d_pos))
                else:
                    c_pos += len(b)
                    b = b""
            b = fh.read(READ_BYTES)
        if pending:
            raise ScanError(truncated, hint="re-download or re-compress the file")


def blocks(path: str, compression: str, seek: list | None = None):
    """Yield (base_offset, memoryview) blocks of the decompressed stream, each ending at a newline
    (``seek``: see :func:`decompressed_chunks`)."""
    base = 0
    buf: list[bytes] = []
    size = 0
    for chunk in decompressed_chunks(path, compression, seek):
        if isinstance(chunk, memoryview):   # a whole one-shot file: one block
            yield 0, chunk
            return
        buf.append(chunk)
        size += len(chunk)
        if size < BLOCK_BYTES:
            continue
        data = buf[0] if len(buf) == 1 else b"".join(buf)
        cut = data.rfind(b"\n") + 1
        if cut == 0:
            buf, size = [data], len(data)
            continue
        yield base, memoryview(data)[:cut]
        base += cut
        rest = data[cut:]
        buf, size = ([rest] if rest else []), len(rest)
    data = buf[0] if len(buf) == 1 else b"".join(buf)
    if data:
        yield base, memoryview(data)


def newlines(data) -> np.ndarray:
    """Positions of every b"\\n": a bytes.find loop when lines are long (memchr, few Python steps),
    numpy otherwise."""
    head = bytes(data[:1 << 20])
    if len(data) > (1 << 20) and head.count(b"\n") < 256:   # lines average > 4 KiB
        n = len(data)
        buf = data
        if isinstance(data, memoryview):
            obj = data.obj
            if isinstance(obj, memoryview):
                obj = obj.obj
            buf = obj if isinstance(obj, (bytes, bytearray)) and np.frombuffer(data, np.uint8).ctypes.data \
                == np.frombuffer(obj, np.uint8).ctypes.data else bytes(data)
        out, find = [], buf.find
        i = find(b"\n", 0, n)
        while i >= 0:
            out.append(i)
            i = find(b"\n", i + 1, n)
        return np.asarray(out, dtype=np.int64)
    return np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 10)


def line_spans(data: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(starts, lengths, keep) of every physical line; keep=False for blank lines."""
    nl = newlines(data)
    ends = nl
    if len(data) and data[-1] != 10:
        ends = np.append(nl, len(data))
    starts = np.empty(len(ends), dtype=np.int64)
    if len(ends):
        starts[0] = 0
        starts[1:] = ends[:-1] + 1
    lengths = (ends - starts).astype(np.int64)
    keep = lengths > 0
    short = np.flatnonzero(keep & (lengths <= 2))
    for i in short:  # whitespace-only lines ("\r", " ") are blank too
        if not bytes(data[starts[i]:starts[i] + lengths[i]]).strip():
            keep[i] = False
    return starts, lengths, keep

