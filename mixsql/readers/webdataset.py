"""WebDataset tar rows: ``loc_length`` bytes at ``loc_offset`` (the text member's data); ranged
reads, nearby ones coalesced, for objects."""
from __future__ import annotations

from .. import storage
from ..errors import StaleFileError
from .files import _coalesced


class _TarReading:
    """:class:`~mixsql.readers.ChunkReader`'s WebDataset method."""

    def _tar(self, info, idx, offs, lens, texts) -> None:
        if info.remote:
            runs = _coalesced(idx, offs, lens, lambda start, n: storage.read_range(info.path, start, start + n),
                              info.path)
            for run, start, buf in runs:
                for k in run.tolist():
                    o = int(offs[k]) - start
                    texts[k] = bytes(buf[o:o + int(lens[k])]).decode("utf-8", errors="replace")
            return
        with open(info.path, "rb") as f:
            for k in idx:
                f.seek(int(offs[k]))
                n = int(lens[k])
                b = f.read(n)
                if len(b) < n:
                    raise StaleFileError(info.path, f"tar ends before byte {int(offs[k]) + n}")
                texts[k] = b.decode("utf-8", errors="replace")
