"""JSONL rows: plain local files by positioned reads (nearby lines coalesced), node-cache entries
(memory-mapped when whole, read as their bytes arrive while this process fills them), multi-frame
.zst / .gz decompressed from the nearest seek point; one JSON parse per line (orjson)."""
from __future__ import annotations

import zlib

import numpy as np
import orjson
import zstandard

from .. import storage
from ..errors import DataError, StaleFileError
from .entries import _FillProgress, _release
from .files import _coalesced

_LOCAL_GAP = 4 << 10   # merge positioned reads of a local file whose gap is below this (a gap costs less than a call)


class _JsonlReading:
    """:class:`~mixsql.readers.ChunkReader`'s JSONL methods."""

    def _jsonl_lines(self, info, idx, offs, lens, rows, texts, pread) -> None:
        """Lines through ``pread(start, n)`` (a local file: a copy from the page cache); runs of
        lines less than _LOCAL_GAP apart coalesce into one read."""
        for run, start, buf in _coalesced(idx, offs, lens, pread, info.path, _LOCAL_GAP):
            o = offs[run].astype(np.int64) - start
            self._parse_lines(info, run, o, o + lens[run], memoryview(buf), rows, texts)

    def _jsonl_cached(self, info, idx, offs, lens, rows, texts) -> None:
        """Lines of a node-cache entry: a whole entry is memory-mapped (entries are immutable and
        only ever unlinked, so a mapping never loses its pages) and every line of the file is
        parsed in place in one pass; an entry this process is still filling is read with
        positioned reads as its bytes arrive."""
        src = self._open_or_filling(info)
        if isinstance(src, _FillProgress):
            self._jsonl_lines(info, idx, offs, lens, rows, texts, src.pread)
            return
        size, mapped = src
        o = offs[idx].astype(np.int64)
        e = o + lens[idx].astype(np.int64)
        try:
            self._parse_lines(info, idx, o, e, memoryview(mapped)[:size], rows, texts)
        finally:
            _release(mapped, o, e)

    def _jsonl_seekable(self, info, idx, offs, lens, rows, texts) -> None:
        """Rows grouped by their nearest seek point; each group decompresses from its point."""
        o_sel = offs[idx].astype(np.int64)
        e_sel = o_sel + lens[idx].astype(np.int64)
        seg = np.searchsorted(info.seek_d, o_sel, side="right") - 1
        for s in np.unique(seg).tolist():
            m = seg == s
            base = int(info.seek_d[s])
            data = self._decompressed_span(info, s, int(e_sel[m].max()))
            self._parse_lines(info, idx[m], o_sel[m] - base, e_sel[m] - base, memoryview(data), rows, texts)

    def _decompressed_span(self, info, s: int, end: int) -> bytes:
        """Decompressed bytes from seek point ``s`` up to at least ``end``: segment by segment
        (a segment runs to the next seek point), each cached in the in-RAM LRU."""
        parts, pos, k = [], int(info.seek_d[s]), s
        while pos < end:
            if k >= len(info.seek_d):
                raise StaleFileError(info.path, f"decompressed stream ends before byte {end} that the index points to")
            seg = self._segment(info, k)
            parts.append(seg)
            pos += len(seg)
            k += 1
            if not seg:
                raise StaleFileError(info.path, f"decompressed stream ends before byte {end} that the index points to")
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _segment(self, info, k: int) -> bytes:
        key = ("seg", info.file_id, k)
        data = self.cache.get(key)
        if data is None:
            c0 = int(info.seek_c[k])
            c1 = int(info.seek_c[k + 1]) if k + 1 < len(info.seek_c) else int(info.size)
            data = _decompress_frames(info, storage.read_range(info.path, c0, c1))
            want = int(info.seek_d[k + 1] - info.seek_d[k]) if k + 1 < len(info.seek_d) else None
            if want is not None and len(data) != want:
                raise StaleFileError(info.path, f"frames at byte {c0} decompress to {len(data)} bytes, "
                                                f"registered {want}")
            self.cache.put(key, data, len(data))
        return data

    def _parse_lines(self, info, idx, starts, ends, mv, rows, texts) -> None:
        """``texts[k]`` = the text of the JSON line ``mv[starts[i]:ends[i]]`` for ``k = idx[i]``."""
        if len(ends) and int(ends.max()) > len(mv):
            raise StaleFileError(info.path, f"file ends before byte {int(ends.max())} that the index points to")
        loads = orjson.loads
        key = info.text_path[0] if len(info.text_path) == 1 else None
        for k, o, e in zip(idx.tolist(), starts.tolist(), ends.tolist()):
            if key is not None:   # fast path: a top-level string field
                try:
                    t = loads(mv[o:e])[key]
                    if type(t) is str:
                        texts[k] = t
                        continue
                except Exception:  # noqa: BLE001 - the slow path below names the problem
                    pass
            texts[k] = self._json_text(info, mv[o:e], rows[k])

    def _json_text(self, info, line, row) -> str:
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise StaleFileError(info.path, f"line of sample row {int(row)} is not valid JSON ({exc})") from None
        for part in info.text_path:
            if not isinstance(obj, dict) or part not in obj:
                raise DataError(
                    f"{info.path}: sample row {int(row)} has no text field {'.'.join(info.text_path)!r}; "
                    f"fix the source's text option (source {info.source})"
                )
            obj = obj[part]
        return obj if isinstance(obj, str) else ("" if obj is None else str(obj))


def _decompress_frames(info, raw: bytes) -> bytes:
    """All frames (zstd) or members (gzip) in ``raw``, decompressed."""
    try:
        if info.compression == "zstd":
            return zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True).read()
        out, d = [], zlib.decompressobj(wbits=47)
        while raw:
            out.append(d.decompress(raw))
            raw = d.unused_data if d.eof else b""
            if d.eof and raw:
                d = zlib.decompressobj(wbits=47)
        return b"".join(out)
    except (zstandard.ZstdError, zlib.error) as exc:
        raise StaleFileError(info.path, f"cannot decompress the frames at a seek point ({exc})") from None

