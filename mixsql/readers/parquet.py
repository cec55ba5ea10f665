"""Parquet rows: the text or tokens column of a row group (ranged reads for objects), cached per
(file, row group) in the in-RAM LRU; a chunk's rows are a ``take`` of it."""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from .. import storage
from ..errors import DataError, StaleFileError
from .columns import _TokenLists


class _ParquetReading:
    """:class:`~mixsql.readers.ChunkReader`'s Parquet method."""

    def _parquet(self, info, idx, offs, lens, cols) -> None:
        """Per row group: the (cached) column array, ``take`` of the chunk's rows; no per-row Python."""
        import pyarrow.parquet as pq

        col = info.tokens_col or info.text_col
        target = cols["tokens"] if info.tokens_col else cols["text"]
        rgs = offs[idx]
        pf = None
        uniq = np.unique(rgs).tolist()
        for rg in uniq:
            sel_idx = idx if len(uniq) == 1 else idx[rgs == rg]
            key = ("pq", info.file_id, rg, col)
            arr = self.cache.get(key)
            if arr is None:
                if pf is None:
                    pf = pq.ParquetFile(storage.open_input(info.path, info.size) if info.remote else info.path)
                if rg >= pf.num_row_groups:
                    raise StaleFileError(info.path, f"row group {rg} does not exist")
                if col not in pf.schema_arrow.names:
                    raise DataError(f"{info.path}: no column {col!r} (source {info.source}); fix its options")
                arr = pf.read_row_group(rg, columns=[col]).column(0).combine_chunks()
                if info.tokens_col and arr.type != pa.list_(pa.int32()):
                    arr = arr.cast(pa.list_(pa.int32()))
                elif not info.tokens_col and arr.type != pa.string():
                    arr = arr.cast(pa.string())
                if info.tokens_col and arr.null_count == 0:   # token lists: slices of one numpy array
                    arr = _TokenLists(arr)
                self.cache.put(key, arr, arr.nbytes)
            sel = lens[sel_idx].astype(np.int64)
            if len(sel) and int(sel.max()) >= len(arr):
                raise StaleFileError(info.path, f"row {int(sel.max())} of row group {rg} does not exist")
            target.append((sel_idx, arr.take(sel) if isinstance(arr, _TokenLists) else arr.take(pa.array(sel))))
