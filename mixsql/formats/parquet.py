"""The Parquet scanner: row groups read column-pruned; a row's location is (row group, row in it)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .. import storage
from .columns import arrow_path, count_tokens, np_array, utf8_len
from .task import ScanError, ScanTask


def scan_parquet(task: ScanTask) -> tuple[pa.Table | None, int, int]:
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
        nbytes = utf8_len(text)
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

