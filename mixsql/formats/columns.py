"""Arrow column helpers shared by the scanners: numpy -> Arrow without pandas, dotted property paths
over dicts and struct columns, UTF-8 byte lengths, token counts, property values to Arrow."""
from __future__ import annotations

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from .task import ScanError


def np_array(a: np.ndarray) -> pa.Array:
    """A 1-D numeric numpy array as an Arrow array without pa.array(), whose first use on numpy
    imports pandas (~0.6 s per process)."""
    a = np.ascontiguousarray(a)
    return pa.Array.from_buffers(pa.from_numpy_dtype(a.dtype), len(a), [None, pa.py_buffer(a)])


def get_path(obj, parts: tuple[str, ...]):
    for p in parts:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(p)
        if obj is None:
            return None
    return obj


def arrow_path(table: pa.Table, path: str) -> pa.ChunkedArray | None:
    """Column at a dotted path (struct field access); None when any step is missing."""
    parts = path.split(".")
    if parts[0] not in table.column_names:
        return None
    col = table.column(parts[0])
    for p in parts[1:]:
        t = col.type
        if not pa.types.is_struct(t) or t.get_field_index(p) < 0:
            return None
        col = pc.struct_field(col, p)
    return col


def utf8_len(col: pa.ChunkedArray) -> pa.ChunkedArray:
    return pc.cast(pc.binary_length(col), pa.int64())


_TOKENIZERS: dict = {}


def count_tokens(tokenizer_path: str, texts: list[str]) -> np.ndarray:
    tok = _TOKENIZERS.get(tokenizer_path)
    if tok is None:
        from tokenizers import Tokenizer
        tok = _TOKENIZERS[tokenizer_path] = Tokenizer.from_file(tokenizer_path)
    out = np.empty(len(texts), dtype=np.int64)
    step = 4096
    for i in range(0, len(texts), step):
        enc = tok.encode_batch(texts[i:i + step], add_special_tokens=False)
        out[i:i + len(enc)] = [len(e.ids) for e in enc]
    return out


def values_to_array(name: str, vals: list, declared: dict) -> pa.Array:
    """pa.array(vals); values of mixed JSON types become text when the property's type is declared
    (the declared cast then happens at insert), else ScanError naming the property."""
    try:
        return pa.array(vals)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        if name in declared:
            return pa.array([v if v is None or isinstance(v, str) else orjson.dumps(v).decode() for v in vals],
                            pa.string())
        kinds = sorted({type(v).__name__ for v in vals if v is not None})
        raise ScanError(f"property {name!r} has mixed value types {kinds} ({exc})",
                        hint=f"declare its type, e.g. types = {{'{name}': 'VARCHAR'}}") from None


def auto_columns(table: pa.Table, exclude: set[str]) -> dict[str, pa.ChunkedArray]:
    out = {}
    for name in table.column_names:
        if name in exclude:
            continue
        col = table.column(name)
        if pa.types.is_struct(col.type) or pa.types.is_map(col.type):
            continue
        out[name] = col
    return out

