"""The WebDataset scanner: tar members grouped into samples by key; the text member's byte range is
the sample's location, its ``.json`` member the properties."""
from __future__ import annotations

import tarfile

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from .. import storage
from .columns import count_tokens, get_path, np_array, values_to_array
from .task import MAX_REPORTED_SKIPS, ScanError, ScanTask


def wds_key(name: str) -> tuple[str, str]:
    """WebDataset convention: key = path up to the first '.' of the basename; rest = extension."""
    d, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{d}/{stem}" if d else stem), ext


def scan_webdataset(task: ScanTask, res: dict) -> pa.Table | None:
    text_ext = task.text
    samples: dict[str, dict] = {}
    order: list[str] = []
    try:
        with storage.open_input(task.path) as fh, tarfile.open(fileobj=fh, mode="r:") as tf:
            for m in tf:
                if not m.isfile():
                    continue
                key, ext = wds_key(m.name)
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

