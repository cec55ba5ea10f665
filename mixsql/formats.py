"""Per-format file scanners used by registration (run in worker threads, or processes).

``scan_file(task)`` indexes one data file and returns a plain dict (picklable, never raises):

* ``table``   pa.Table with ``row, loc_offset, loc_length, n_bytes, n_tokens`` and one column per
              property (named by property), in file order;
* ``skipped`` number of malformed records skipped (``on_error='skip'``), ``skipped_lines`` the
              first few 1-based line numbers (jsonl) or sample keys (webdataset);
* ``raw_bytes`` decompressed bytes read; ``error`` ``None`` or ``{"message", "line", "hint"}``;
* ``seek``    for multi-frame zstd / multi-member gzip JSONL, the seek table: ``[(compressed
              offset, decompressed offset), ...]`` of frame starts (else ``None``).

Files are opened through :mod:`mixsql.storage`, so a path may be an object-store URI.

Location semantics are the catalog's (see mixsql.catalog). JSONL: a zstd frame whose header gives
its size is decompressed into one buffer (else large streamed blocks), cut at newlines; line
offsets come from numpy (or a ``bytes.find`` loop when lines are long). Each block then takes the
fast path when it can (explicit property mapping, no tokenizer): DuckDB's JSON reader (yyjson, GIL
released) over the block's lines, viewed zero-copy as an Arrow string column (UTF-8 checked by
Arrow first), gives ``n_bytes`` (strlen of the decoded text, i.e. its exact UTF-8 byte length with
escapes resolved) and the properties, type-checked against the types seen in the file's first MiB.
Anything unusual in a block (malformed JSON, a type change, a non-string text, a missing required
property) sends that block to the exact path: ``pyarrow.json`` (nested paths by struct field
access), then per-line ``orjson`` to pinpoint or skip a bad line. Known leniency of the fast path:
yyjson also accepts a trailing comma inside an object or array, and NaN/Infinity literals
(pyarrow.json accepts those too), in lines past the first MiB; such lines are indexed rather than
reported.
"""
from __future__ import annotations

import hashlib
import os
import tarfile
import threading
import zlib
from dataclasses import dataclass, field

import duckdb
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj
import pyarrow.parquet as pq
import zstandard

from . import storage

BLOCK_BYTES = 32 << 20          # decompressed bytes parsed per pyarrow.json call
READ_BYTES = 64 << 20           # compressed bytes read per I/O call
WRITE_BYTES = 16 << 20          # decompressed bytes produced per zstd output buffer
ONE_SHOT_BYTES = 256 << 20      # a zstd frame up to this size decompresses into one buffer
FAST_MAX_FAILS = 2              # blocks the DuckDB fast path may fall back on before a file stops trying it
FINGERPRINT_BYTES = 64 << 10    # head and tail bytes hashed into the fingerprint
MAX_REPORTED_SKIPS = 20
SEEK_SPACING = 256 << 10        # decompressed bytes between recorded seek points (at least)

FORMATS = ("jsonl", "parquet", "webdataset")


class ScanError(Exception):
    """Raised inside a scanner; turned into the result's ``error`` entry."""

    def __init__(self, message: str, line: int | None = None, hint: str | None = None):
        super().__init__(message)
        self.message, self.line, self.hint = message, line, hint


@dataclass
class ScanTask:
    """Everything a worker needs to index one file (picklable)."""

    path: str
    format: str                       # jsonl | parquet | webdataset
    compression: str                  # none | zstd | gzip
    text: str                         # JSON path / column / tar member extension
    properties: dict = field(default_factory=dict)   # name -> JSON path / column; None = auto
    auto: bool = False                # discover properties from the data (top-level fields)
    tokens: str | None = None         # parquet list<int> column with token ids
    n_tokens: str | None = None       # path / column holding a token count hint
    tokenizer: str | None = None      # tokenizer.json path
    on_error: str = "fail"
    required: list = field(default_factory=list)   # properties that must be non-null
    types: dict = field(default_factory=dict)      # declared DuckDB types (mixed values -> text)
    use_threads: bool = False


# ----------------------------------------------------------------------------- helpers

def detect(path: str) -> tuple[str, str]:
    """(format, compression) from a file name; raises ValueError for unknown extensions."""
    low = path.lower()
    if low.endswith((".jsonl.zst", ".json.zst", ".jsonl.zstd", ".ndjson.zst")):
        return "jsonl", "zstd"
    if low.endswith((".jsonl.gz", ".json.gz", ".ndjson.gz")):
        return "jsonl", "gzip"
    if low.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl", "none"
    if low.endswith((".parquet", ".pq")):
        return "parquet", "none"
    if low.endswith(".tar"):
        return "webdataset", "none"
    raise ValueError(f"cannot tell the format of {path} from its extension")


def compression_of(path: str) -> str:
    low = path.lower()
    if low.endswith((".zst", ".zstd")):
        return "zstd"
    if low.endswith(".gz"):
        return "gzip"
    return "none"


def fingerprint(path: str, size: int | None = None) -> str:
    """Cheap content fingerprint: blake2b over size, the first and the last 64 KiB."""
    if size is None:
        size = os.path.getsize(path)
    h = hashlib.blake2b(str(size).encode(), digest_size=12)
    with storage.open_input(path, size, buffer_size=FINGERPRINT_BYTES) as fh:
        h.update(fh.read(FINGERPRINT_BYTES))
        if size > FINGERPRINT_BYTES:
            fh.seek(max(size - FINGERPRINT_BYTES, FINGERPRINT_BYTES))
            h.update(fh.read(FINGERPRINT_BYTES))
    return h.hexdigest()


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


def _decompressed_chunks(path: str, compression: str, seek: list | None = None):
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


def _blocks(path: str, compression: str, seek: list | None = None):
    """Yield (base_offset, memoryview) blocks of the decompressed stream, each ending at a newline
    (``seek``: see :func:`_decompressed_chunks`)."""
    base = 0
    buf: list[bytes] = []
    size = 0
    for chunk in _decompressed_chunks(path, compression, seek):
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


def _newlines(data) -> np.ndarray:
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


def _line_spans(data: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(starts, lengths, keep) of every physical line; keep=False for blank lines."""
    nl = _newlines(data)
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


_DUCK: tuple[int, duckdb.DuckDBPyConnection] | None = None
# inferred Arrow type -> (value from the raw JSON text r, condition that r has another JSON type).
# r is the property's JSON text (NULL when absent); a mismatch makes the block take the exact path.
_FAST_KINDS = {
    pa.string(): ("json_extract_string({r}, '$')", "left({r}, 1) <> '\"'"),
    pa.int64(): ("TRY_CAST({r} AS BIGINT)",
                 "(NOT regexp_full_match({r}, '-?[0-9]+') OR TRY_CAST({r} AS BIGINT) IS NULL)"),
    pa.float64(): ("TRY_CAST({r} AS DOUBLE)", "(TRY_CAST({r} AS DOUBLE) IS NULL OR left({r}, 1) IN ('N', 'I', '-I'))"),
    pa.bool_(): ("({r} = 'true')", "{r} NOT IN ('true', 'false')"),
}
_INHERITED: list = []
_DUCK_LOCK = threading.Lock()
_LOCAL = threading.local()


def _duck() -> duckdb.DuckDBPyConnection:
    """This thread's cursor on the process's single-threaded in-memory DuckDB (scanner threads
    query concurrently; DuckDB releases the GIL). A forked child opens its own database and keeps
    the inherited one referenced, never closed: its threads did not survive the fork."""
    global _DUCK
    mine = getattr(_LOCAL, "con", None)
    if mine is not None and mine[0] == os.getpid():
        return mine[1]
    with _DUCK_LOCK:
        if _DUCK is None or _DUCK[0] != os.getpid():
            if _DUCK is not None:
                _INHERITED.append(_DUCK)
            _DUCK = (os.getpid(), duckdb.connect(":memory:", config={"threads": 1}))
        cur = _DUCK[1].cursor()
    if mine is not None:
        _INHERITED.append(mine)
    _LOCAL.con = (os.getpid(), cur)
    return cur


def _sql_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _json_path(path: str) -> str:
    return "$" + "".join("." + orjson.dumps(p).decode() for p in path.split("."))


def _struct_ref(path: str) -> str:
    return "j" + "".join("." + '"' + p.replace('"', '""') + '"' for p in path.split("."))


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


def _utf8_len(col: pa.ChunkedArray) -> pa.ChunkedArray:
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


def _auto_columns(table: pa.Table, exclude: set[str]) -> dict[str, pa.ChunkedArray]:
    out = {}
    for name in table.column_names:
        if name in exclude:
            continue
        col = table.column(name)
        if pa.types.is_struct(col.type) or pa.types.is_map(col.type):
            continue
        out[name] = col
    return out


# ----------------------------------------------------------------------------- jsonl

class _JsonlScanner:
    def __init__(self, task: ScanTask):
        self.task = task
        self.text_parts = tuple(task.text.split("."))
        self.prop_parts = {k: tuple(v.split(".")) for k, v in task.properties.items()}
        self.ntok_parts = tuple(task.n_tokens.split(".")) if task.n_tokens else None
        self.skipped = 0
        self.skipped_lines: list[int] = []
        self.raw_bytes = 0
        self.seek: list = []
        self.auto_excl = {self.text_parts[0]}
        self.prune = not task.auto   # parse only the needed fields
        self.schema: pa.Schema | None = None
        self.fast = not task.auto and not task.tokenizer   # DuckDB fast path (see _fast)
        self.fast_fails = 0
        self.fast_sql: str | None = None

    def scan(self) -> pa.Table:
        parts, row0, line0 = [], 0, 0
        for base, data in _blocks(self.task.path, self.task.compression, self.seek):
            self.raw_bytes += len(data)
            starts, lengths, keep = _line_spans(data)
            t = self._block(data, base, starts, lengths, keep, line0)
            line0 += len(starts)
            if t.num_rows:
                t = t.set_column(0, "row", np_array(np.arange(row0, row0 + t.num_rows, dtype=np.int64)))
                row0 += t.num_rows
                parts.append(t)
        if not parts:
            return None
        if len(parts) == 1:
            return parts[0]
        try:
            return pa.concat_tables(parts, promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise ScanError(f"a property changes type inside the file ({exc})",
                            hint="declare the property's type, e.g. types = {'name': 'VARCHAR'}") from None

    def _read(self, data: bytes, block_size: int) -> pa.Table:
        """pyarrow.json over one block; parses only the needed fields once their types are known."""
        ropts = pj.ReadOptions(use_threads=self.task.use_threads, block_size=block_size)
        if self.prune and self.schema is None:
            self.schema = self._pruned_schema(data, ropts)
        if self.schema is not None:
            popts = pj.ParseOptions(explicit_schema=self.schema, unexpected_field_behavior="ignore")
            try:
                return pj.read_json(pa.BufferReader(data), read_options=ropts, parse_options=popts)
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
                self.schema, self.prune = None, False  # a type changed: infer everything from now on
        return pj.read_json(pa.BufferReader(data), read_options=ropts)

    def _pruned_schema(self, data: bytes, ropts) -> pa.Schema | None:
        """Schema of just the needed paths, inferred from the block's first MiB (None: can't)."""
        head = bytes(data[:1 << 20])
        cut = head.rfind(b"\n") + 1 or len(head)
        try:
            sample = pj.read_json(pa.BufferReader(head[:cut]), read_options=ropts)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            self.prune = False
            return None
        paths = [self.task.text, *self.task.properties.values()]
        if self.task.n_tokens:
            paths.append(self.task.n_tokens)
        tree: dict = {}
        for path in paths:
            parts = path.split(".")
            typ: pa.DataType = sample.schema
            node = tree
            for i, p in enumerate(parts):
                idx = typ.get_field_index(p) if isinstance(typ, (pa.Schema, pa.StructType)) else -1
                if idx < 0:
                    self.prune = False
                    return None
                typ = typ.field(idx).type
                if i == len(parts) - 1:
                    if pa.types.is_null(typ):
                        self.prune = False
                        return None
                    node[p] = typ
                else:
                    if not pa.types.is_struct(typ):
                        self.prune = False
                        return None
                    node = node.setdefault(p, {})
                    if not isinstance(node, dict):
                        break

        def build(n: dict) -> list[pa.Field]:
            return [pa.field(k, pa.struct(build(v)) if isinstance(v, dict) else v) for k, v in n.items()]

        return pa.schema(build(tree))

    def _sample_types(self, data) -> dict | None:
        """path -> Arrow type of each mapped path (text first) in the block's first MiB, None for a
        path absent or only null there; None overall when the sample does not parse or its text
        is not a string."""
        head = bytes(data[:1 << 20])
        cut = head.rfind(b"\n") + 1 or len(head)
        try:
            sample = pj.read_json(pa.BufferReader(head[:cut]), read_options=pj.ReadOptions(use_threads=False))
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            return None
        out = {}
        paths = [self.task.text, *self.task.properties.values()] + ([self.task.n_tokens] if self.task.n_tokens else [])
        for path in paths:
            typ: pa.DataType | None = sample.schema
            for part in path.split("."):
                idx = typ.get_field_index(part) if isinstance(typ, (pa.Schema, pa.StructType)) else -1
                typ = typ.field(idx).type if idx >= 0 else None
                if typ is None:
                    break
            out[path] = None if typ is None or pa.types.is_null(typ) else typ
        if not pa.types.is_string(out[self.task.text] or pa.null()):
            return None
        return out

    def _fast_query(self, data) -> str | None:
        """SQL extracting n_bytes and the properties with DuckDB's JSON reader, built once per file
        from the types in the first MiB; None (no fast path for this file) when those do not parse,
        the text is not a string there, or a property is not a scalar (string, integer, double,
        boolean) there.

        Properties come out as their raw JSON text, checked against the expected JSON type
        (``__bad``) so that a type change falls back instead of being cast silently; a property
        absent from the sample must stay null in the block."""
        if self.fast_sql is None:
            types = self._sample_types(data)
            if types is None:
                self.fast = False
                return None
            paths = dict(self.task.properties)
            if self.task.n_tokens:
                paths["__ntok__"] = self.task.n_tokens
            tree: dict = {}
            cols, bad = [], []
            for path, leaf in [(self.task.text, "VARCHAR"), *((p, "JSON") for p in paths.values())]:
                node, parts = tree, path.split(".")
                for part in parts[:-1]:
                    node = node.setdefault(part, {})
                    if not isinstance(node, dict):
                        self.fast = False
                        return None
                if node.get(parts[-1], leaf) != leaf:   # a path that is both a leaf and an object, or text twice
                    self.fast = False
                    return None
                node[parts[-1]] = leaf
            for i, path in enumerate(paths.values()):
                r = f"CAST({_struct_ref(path)} AS VARCHAR)"
                if types[path] is None:
                    cols.append(f"NULL AS __p{i}")
                    bad.append(f"({r} <> 'null')")
                    continue
                kind = _FAST_KINDS.get(types[path])
                if kind is None:
                    self.fast = False
                    return None
                cols.append(f"{kind[0].format(r=r)} AS __p{i}")
                bad.append(f"({r} <> 'null' AND {kind[1].format(r=r)})")
            text = _struct_ref(self.task.text)
            cols[:0] = [f"strlen({text}) AS __n",
                        f"CASE WHEN strlen({text}) <= 32 OR left({text}, 1) IN ('[', '{{') "
                        f"THEN json_type(line, {_sql_str(_json_path(self.task.text))}) <> 'VARCHAR' END AS __tt",
                        f"{' OR '.join(bad) if bad else 'false'} AS __bad"]
            self.fast_names = list(paths)
            self.fast_sql = (f"SELECT {', '.join(cols)} FROM (SELECT line, json_transform(line, "
                             f"{_sql_str(orjson.dumps(tree).decode())}) AS j FROM __mixsql_lines)")
        return self.fast_sql

    def _fast(self, data, base, starts, lengths, idx) -> pa.Table | None:
        """Fast path: DuckDB's JSON reader (yyjson) over the block's lines, one in-process pass, no
        text materialised in Python. Returns None whenever anything is unusual (malformed JSON, a
        missing field, a type change, a non-string text, a missing required property): the caller
        then takes the exact pyarrow / per-line path, which reports or skips the offending line.
        n_bytes = strlen of the decoded text = its UTF-8 byte length (escapes resolved)."""
        sql = self._fast_query(data)
        if sql is None:
            return None
        offs = np.empty(len(idx) + 1, dtype=np.int64)
        offs[:-1] = starts[idx]
        offs[-1] = len(data)   # a line's span runs to the next kept line: trailing blanks are JSON whitespace
        lines = pa.LargeStringArray.from_buffers(len(idx), pa.py_buffer(offs), pa.py_buffer(data))
        try:
            lines.validate(full=True)   # UTF-8 (SIMD, ~3 GB/s): DuckDB's JSON reader does not check it
        except pa.ArrowInvalid:
            return None
        con = _duck()
        con.register("__mixsql_lines", pa.table({"line": lines}))   # per cursor, so per thread
        try:
            res = con.sql(sql).to_arrow_table()
        except (duckdb.Error, UnicodeDecodeError):   # the latter: an error message quoting invalid UTF-8
            return None
        finally:
            con.unregister("__mixsql_lines")
        nbytes = res.column("__n")
        if nbytes.null_count or res.num_rows != len(idx):
            return None
        if pc.any(res.column("__bad")).as_py():
            return None
        if pc.any(res.column("__tt")).as_py():   # a short or bracketed "text" that is not a JSON string
            return None
        props = {name: res.column(f"__p{i}") for i, name in enumerate(self.fast_names)}
        if any(props[n].null_count for n in self.task.required if n in props):
            return None
        cols = self._pointer_cols(base, starts, lengths, idx, pc.cast(nbytes, pa.int64()))
        cols["n_tokens"] = self._ntokens(None, props.pop("__ntok__", None), len(idx))
        cols.update(props)
        return pa.table(cols)

    def _block(self, data, base, starts, lengths, keep, line0) -> pa.Table:
        idx = np.flatnonzero(keep)
        if self.fast and len(idx):
            t = self._fast(data, base, starts, lengths, idx)
            if t is not None:
                return t
            self.fast_fails += 1
            self.fast = self.fast_fails < FAST_MAX_FAILS
        table = None
        try:
            table = self._read(data, int(max(8 << 20, (lengths.max() if len(lengths) else 0) + 2)))
            if table.num_rows != len(idx):
                table = None
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            table = None
        if table is not None:
            try:
                return self._from_arrow(table, base, starts, lengths, idx, line0)
            except ScanError as exc:
                if exc.line is None or self.task.on_error != "skip":
                    raise
        return self._from_lines(data, base, starts, lengths, idx, line0)

    def _from_arrow(self, table, base, starts, lengths, idx, line0) -> pa.Table:
        text = arrow_path(table, self.task.text)
        if text is None:
            raise ScanError(f"no text field {self.task.text!r} in any record",
                            line=line0 + int(idx[0]) + 1 if len(idx) else None,
                            hint="set the text option to the field holding the text")
        if not (pa.types.is_string(text.type) or pa.types.is_large_string(text.type)):
            if pa.types.is_null(text.type):
                raise ScanError(f"text field {self.task.text!r} is missing or null",
                                line=line0 + int(idx[0]) + 1)
            raise ScanError(f"text field {self.task.text!r} is {text.type}, not a string")
        if text.null_count:
            bad = int(np.flatnonzero(pc.is_null(text).to_numpy(zero_copy_only=False))[0])
            raise ScanError(f"text field {self.task.text!r} is missing or null", line=line0 + int(idx[bad]) + 1)
        cols = self._pointer_cols(base, starts, lengths, idx, _utf8_len(text))
        props = self._props_arrow(table)
        cols["n_tokens"] = self._ntokens(text, props.pop("__ntok__", None), len(idx))
        for name in self.task.required:
            col = props.get(name)
            if col is not None and col.null_count:
                bad = int(np.flatnonzero(pc.is_null(col).to_numpy(zero_copy_only=False))[0])
                raise ScanError(f"required property {name!r} is missing", line=line0 + int(idx[bad]) + 1,
                                hint="fix the record, drop it from required, or use on_error = 'skip'")
        cols.update(props)
        return pa.table(cols)

    def _pointer_cols(self, base, starts, lengths, idx, nbytes):
        return {
            "row": np_array(np.zeros(len(idx), dtype=np.int64)),
            "loc_offset": np_array(starts[idx] + base),
            "loc_length": np_array(lengths[idx].astype(np.int32)),
            "n_bytes": nbytes,
        }

    def _props_arrow(self, table) -> dict:
        n = table.num_rows
        out = {}
        if self.task.auto:
            out.update(_auto_columns(table, self.auto_excl))
        else:
            for name, path in self.task.properties.items():
                col = arrow_path(table, path)
                out[name] = col if col is not None else pa.nulls(n)
        if self.task.n_tokens:
            col = arrow_path(table, self.task.n_tokens)
            out["__ntok__"] = col
        return out

    def _ntokens(self, text, hint, n):
        if self.task.tokenizer:
            return np_array(count_tokens(self.task.tokenizer, text.to_pylist()))
        if hint is not None:
            try:
                return pc.cast(hint, pa.int64())
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                raise ScanError(f"token count field {self.task.n_tokens!r} is not an integer") from None
        return pa.nulls(n, pa.int64())

    def _from_lines(self, data, base, starts, lengths, idx, line0) -> pa.Table:
        """Per-line fallback: pinpoints malformed lines; skips them when on_error='skip'."""
        objs, good = [], []
        for i in idx:
            s = int(starts[i])
            line = data[s:s + int(lengths[i])]
            lineno = line0 + int(i) + 1
            problem = None
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                problem = f"malformed JSON ({exc})"
            else:
                if not isinstance(obj, dict):
                    problem = f"line is a JSON {type(obj).__name__}, not an object"
                else:
                    txt = get_path(obj, self.text_parts)
                    if not isinstance(txt, str):
                        problem = (f"text field {self.task.text!r} is missing or null" if txt is None
                                   else f"text field {self.task.text!r} is not a string")
                    for name in self.task.required:
                        if problem is None and name in self.prop_parts \
                                and get_path(obj, self.prop_parts[name]) is None:
                            problem = f"required property {name!r} is missing"
                        elif problem is None and self.task.auto and obj.get(name) is None:
                            problem = f"required property {name!r} is missing"

            if problem is not None:
                if self.task.on_error == "skip":
                    self.skipped += 1
                    if len(self.skipped_lines) < MAX_REPORTED_SKIPS:
                        self.skipped_lines.append(lineno)
                    continue
                raise ScanError(problem, line=lineno,
                                hint="fix the line, or register WITH (on_error = 'skip') to skip bad lines")
            objs.append(obj)
            good.append(i)
        good = np.asarray(good, dtype=np.int64)
        texts = [get_path(o, self.text_parts) for o in objs]
        nbytes = np_array(np.fromiter((len(t.encode()) for t in texts), dtype=np.int64, count=len(texts)))
        cols = self._pointer_cols(base, starts, lengths, good, nbytes)
        if self.task.auto:
            names: dict[str, None] = {}
            for o in objs:
                for k, v in o.items():
                    if k not in self.auto_excl and not isinstance(v, dict):
                        names.setdefault(k)
            mapping = {k: (k,) for k in names}
        else:
            mapping = self.prop_parts
        props = {}
        for name, parts in mapping.items():
            props[name] = values_to_array(name, [get_path(o, parts) for o in objs], self.task.types)
        hint = None
        if self.ntok_parts:
            hint = pa.array([get_path(o, self.ntok_parts) for o in objs])
        cols["n_tokens"] = self._ntokens(pa.chunked_array([pa.array(texts, pa.string())]), hint, len(objs))
        cols.update(props)
        return pa.table(cols)


# ----------------------------------------------------------------------------- parquet

def _scan_parquet(task: ScanTask) -> tuple[pa.Table | None, int, int]:
    try:
        pf = pq.ParquetFile(storage.open_input(task.path) if storage.is_remote(task.path) else task.path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ScanError(f"not a readable Parquet file ({exc})") from None
    schema = pf.schema_arrow
    names = schema.names
    text_col = task.text.split(".")[0]
    tok_col = task.tokens.split(".")[0] if task.tokens else None
    if tok_col and tok_col not in names:
        raise ScanError(f"no tokens column {task.tokens!r} (columns: {', '.join(names)})")
    if text_col not in names:
        if not tok_col or task.tokenizer:
            raise ScanError(f"no text column {task.text!r} (columns: {', '.join(names)})",
                            hint="set the text option to the column holding the text"
                            + ("" if tok_col else ", or the tokens option to a list<int> column of token ids"))
        text_col = None   # pre-tokenized only: n_bytes is 0, readers fetch the tokens column
    if task.auto:
        excl = {text_col, tok_col}
        prop_map = {n: n for n in names if n not in excl
                    and not pa.types.is_struct(schema.field(n).type)
                    and not pa.types.is_map(schema.field(n).type)}
    else:
        prop_map = dict(task.properties)
    need = {p.split(".")[0] for p in prop_map.values() if p.split(".")[0] in names}
    if text_col:
        need.add(text_col)
    if tok_col:
        need.add(tok_col)
    if task.n_tokens and task.n_tokens.split(".")[0] in names:
        need.add(task.n_tokens.split(".")[0])
    parts, raw, row0 = [], 0, 0
    for rg in range(pf.num_row_groups):
        try:
            t = pf.read_row_group(rg, columns=[n for n in names if n in need])
        except (pa.ArrowInvalid, OSError) as exc:
            raise ScanError(f"cannot read row group {rg} ({exc})") from None
        n = t.num_rows
        text = arrow_path(t, task.text) if text_col else pa.repeat(pa.scalar("", pa.string()), n)
        if text.null_count:
            bad = int(np.flatnonzero(pc.is_null(text).to_numpy(zero_copy_only=False))[0])
            if task.on_error != "skip":
                raise ScanError(f"text column {task.text!r} is null in row {row0 + bad}",
                                hint="register WITH (on_error = 'skip') to skip such rows")
        nbytes = _utf8_len(text)
        raw += int(pc.sum(nbytes).as_py() or 0)
        cols = {
            "row": np_array(np.arange(row0, row0 + n, dtype=np.int64)),
            "loc_offset": np_array(np.full(n, rg, dtype=np.int64)),
            "loc_length": np_array(np.arange(n, dtype=np.int32)),
            "n_bytes": pc.fill_null(nbytes, 0),
        }
        if task.tokenizer:
            cols["n_tokens"] = np_array(count_tokens(task.tokenizer, [x or "" for x in text.to_pylist()]))
        elif tok_col:
            cols["n_tokens"] = pc.cast(pc.list_value_length(arrow_path(t, task.tokens)), pa.int64())
        elif task.n_tokens and arrow_path(t, task.n_tokens) is not None:
            cols["n_tokens"] = pc.cast(arrow_path(t, task.n_tokens), pa.int64())
        else:
            cols["n_tokens"] = pa.nulls(n, pa.int64())
        valid = pc.is_valid(text)
        for name, path in prop_map.items():
            col = arrow_path(t, path)
            cols[name] = col if col is not None else pa.nulls(n)
            if name in task.required and cols[name].null_count:
                if task.on_error != "skip":
                    bad = int(np.flatnonzero(pc.is_null(cols[name]).to_numpy(zero_copy_only=False))[0])
                    raise ScanError(f"required property {name!r} is missing in row {row0 + bad}",
                                    hint="fix the data, drop it from required, or use on_error = 'skip'")
                valid = pc.and_(valid, pc.is_valid(cols[name]))
        table = pa.table(cols)
        if task.on_error == "skip" and pc.sum(pc.invert(valid)).as_py():
            table = table.filter(valid)
        parts.append(table)
        row0 += n
    if not parts:
        return None, 0, 0
    out = pa.concat_tables(parts, promote_options="permissive")
    return out, raw, row0 - out.num_rows


# ----------------------------------------------------------------------------- webdataset

def _wds_key(name: str) -> tuple[str, str]:
    """WebDataset convention: key = path up to the first '.' of the basename; rest = extension."""
    d, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{d}/{stem}" if d else stem), ext


def _scan_webdataset(task: ScanTask, res: dict) -> pa.Table | None:
    text_ext = task.text
    samples: dict[str, dict] = {}
    order: list[str] = []
    try:
        with storage.open_input(task.path) as fh, tarfile.open(fileobj=fh, mode="r:") as tf:
            for m in tf:
                if not m.isfile():
                    continue
                key, ext = _wds_key(m.name)
                if key not in samples:
                    samples[key] = {}
                    order.append(key)
                s = samples[key]
                if ext == text_ext:
                    s["off"], s["len"] = m.offset_data, m.size
                    if task.tokenizer:
                        s["text"] = tf.extractfile(m).read().decode("utf-8", "replace")
                elif ext == "json":
                    s["json"] = tf.extractfile(m).read()
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise ScanError(f"not a readable tar file ({exc})", hint="re-create the shard") from None
    rows, offs, lens, objs, texts = [], [], [], [], []
    skipped, skipped_keys = 0, []
    for key in order:
        s = samples[key]
        problem = None
        obj = {}
        if "off" not in s:
            problem = f"sample {key!r} has no .{text_ext} member"
        elif "json" in s:
            try:
                obj = orjson.loads(s["json"])
                if not isinstance(obj, dict):
                    problem = f"{key}.json is not a JSON object"
            except orjson.JSONDecodeError as exc:
                problem = f"{key}.json is malformed JSON ({exc})"
        if not problem:
            for name in task.required:
                path = task.properties.get(name, name)
                if get_path(obj, tuple(path.split("."))) is None:
                    problem = f"sample {key!r}: required property {name!r} is missing"
                    break
        if problem:
            if task.on_error == "skip":
                skipped += 1
                if len(skipped_keys) < MAX_REPORTED_SKIPS:
                    skipped_keys.append(key)
                continue
            raise ScanError(problem, hint="fix the shard, or register WITH (on_error = 'skip')")
        rows.append(len(rows))
        offs.append(s["off"])
        lens.append(s["len"])
        objs.append(obj)
        texts.append(s.get("text", ""))
    res["skipped"], res["skipped_lines"] = skipped, skipped_keys
    res["raw_bytes"] = int(sum(lens))
    if not rows:
        return None
    cols = {
        "row": np_array(np.asarray(rows, dtype=np.int64)),
        "loc_offset": np_array(np.asarray(offs, dtype=np.int64)),
        "loc_length": np_array(np.asarray(lens, dtype=np.int32)),
        "n_bytes": np_array(np.asarray(lens, dtype=np.int64)),
    }
    if task.tokenizer:
        cols["n_tokens"] = np_array(count_tokens(task.tokenizer, texts))
    elif task.n_tokens:
        parts = tuple(task.n_tokens.split("."))
        cols["n_tokens"] = pc.cast(pa.array([get_path(o, parts) for o in objs]), pa.int64())
    else:
        cols["n_tokens"] = pa.nulls(len(rows), pa.int64())
    if task.auto:
        names: dict[str, None] = {}
        for o in objs:
            for k, v in o.items():
                if not isinstance(v, dict):
                    names.setdefault(k)
        mapping = {k: (k,) for k in names}
    else:
        mapping = {k: tuple(v.split(".")) for k, v in task.properties.items()}
    for name, parts in mapping.items():
        cols[name] = values_to_array(name, [get_path(o, parts) for o in objs], task.types)
    return pa.table(cols)


# ----------------------------------------------------------------------------- entry point

def scan_file(task: ScanTask) -> dict:
    """Index one file. Never raises: errors come back in ``result['error']``."""
    res = {"path": task.path, "table": None, "skipped": 0, "skipped_lines": [], "raw_bytes": 0,
           "error": None, "seek": None}
    try:
        if task.format == "jsonl":
            sc = _JsonlScanner(task)
            res["table"] = sc.scan()
            res["skipped"], res["skipped_lines"], res["raw_bytes"] = sc.skipped, sc.skipped_lines, sc.raw_bytes
            if len(sc.seek) > 1:
                res["seek"] = sc.seek
        elif task.format == "parquet":
            res["table"], res["raw_bytes"], res["skipped"] = _scan_parquet(task)
        elif task.format == "webdataset":
            res["table"] = _scan_webdataset(task, res)
        else:
            raise ScanError(f"unknown format {task.format!r}; use one of {', '.join(FORMATS)}")
    except ScanError as exc:
        res["error"] = {"message": exc.message, "line": exc.line, "hint": exc.hint}
    except storage.StorageError as exc:
        res["error"] = {"message": f"cannot read object ({exc})", "line": None, "hint": None}
    except (OSError, MemoryError) as exc:
        res["error"] = {"message": f"cannot read file ({exc})", "line": None, "hint": None}
    except (pa.ArrowException, ValueError, TypeError) as exc:  # unexpected data shape
        res["error"] = {"message": f"cannot index file ({type(exc).__name__}: {exc})", "line": None,
                        "hint": None}
    return res
