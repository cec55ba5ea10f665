"""The JSONL scanner: DuckDB's JSON reader as the fast path over each block, ``pyarrow.json`` as the
exact path, per-line ``orjson`` to pinpoint or skip a bad line (see :mod:`mixsql.formats`)."""
from __future__ import annotations

import os
import threading

import duckdb
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from .columns import arrow_path, auto_columns, count_tokens, get_path, np_array, utf8_len, values_to_array
from .compressed import blocks, line_spans
from .task import MAX_REPORTED_SKIPS, ScanError, ScanTask

_DUCK: tuple[int, duckdb.DuckDBPyConnection] | None = None
FAST_MAX_FAILS = 2              # blocks the DuckDB fast path may fall back on before a file stops trying it

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


class JsonlScanner:
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
        for base, data in blocks(self.task.path, self.task.compression, self.seek):
            self.raw_bytes += len(data)
            starts, lengths, keep = line_spans(data)
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
        cols = self._pointer_cols(base, starts, lengths, idx, utf8_len(text))
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
            out.update(auto_columns(table, self.auto_excl))
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


