"""Registration options versus property mappings, and the check that every mapping found data.

``CREATE SOURCE ... WITH (key = value, ...)`` mixes two kinds of keys:

* **options** (``OPTIONS``): how to read and index the files (``text``, ``tokenizer``,
  ``on_error``, ``engine``, ...). ``RESERVED_OPTIONS`` are names mixsql will give meaning to
  later; they are errors today, so no property silently takes the name.
* **properties**: every other key maps a property name to a path in the data
  (``lang = 'meta.language'``).

A property whose name collides with an option (or a reserved option) is written in the
explicit map, where nothing is ambiguous: ``WITH (properties = {'text': 'meta.text_kind'})``
(``--map text=meta.text_kind`` on the command line). A key that is *close* to an option name
(``on_eror``, ``tokeniser``, ``presets``) is taken for a misspelled option and is an error with
the suggestion; write it in the ``properties`` map if it really is a property.

A mapped path that matches no sample of the whole source is an error before anything is
committed, with the closest paths actually seen in the data (``did you mean 'meta.language'?``).
A path ending in ``?`` (``'meta.x?'``) is optional: it registers with NULL where absent.
"""
from __future__ import annotations

import difflib
import json
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq

from . import formats
from .formats import compressed
from .errors import ProgrammingError, RegistrationError

# option name -> what it does (the table the docs and error messages are generated from)
OPTIONS: dict[str, str] = {
    "text": "text field / column / tar member extension (default text, txt)",
    "tokens": "parquet list<int> column of pre-tokenized ids",
    "tokenizer": "HF tokenizer.json (or 'byte') to count n_tokens with",
    "n_tokens": "field / column holding a token count",
    "on_error": "fail | skip malformed records",
    "required": "properties every record must have",
    "preset": "slimpajama | pile | fineweb",
    "types": "declared DuckDB types of properties",
    "properties": "explicit property map {name: 'path'}",
    "workers": "parallel scans",
    "format": "jsonl | parquet | webdataset",
    "engine": "where the scans run: local | ray (mixsql.cluster)",
    "ray_address": "the Ray cluster for engine = 'ray' ('auto', 'host:port')",
}
RESERVED_OPTIONS: dict[str, str] = {}   # names kept for options to come
OPTIONAL_MARK = "?"
SUGGEST_CUTOFF = 0.8      # a key this close to an option name is taken for a misspelling
SAMPLE_RECORDS = 512      # records per file read to list the paths seen (errors only)
SAMPLE_FILES = 4


def split_options(options: dict) -> tuple[dict, dict]:
    """(options, flat property mappings) of a ``WITH (...)`` dict; raises on misspelled or
    reserved option names."""
    opts, props = {}, {}
    for key, value in options.items():
        low = str(key).lower()
        if low in OPTIONS:
            opts[low] = value
            continue
        if low in RESERVED_OPTIONS:
            raise ProgrammingError(
                f"{key!r} is a reserved option name ({RESERVED_OPTIONS[low]}), not yet available; to map "
                f"a property called {key!r}, write properties = {{'{key}': 'path'}}")
        close = difflib.get_close_matches(low, list(OPTIONS) + list(RESERVED_OPTIONS), n=1,
                                          cutoff=SUGGEST_CUTOFF)
        if close:
            raise ProgrammingError(
                f"unknown option {key!r}; did you mean {close[0]!r}? (a property with this name goes in "
                f"properties = {{'{key}': 'path'}})")
        props[key] = value
    return opts, props


def strip_optional(path: str) -> tuple[str, bool]:
    """('meta.x', True) for 'meta.x?'; (path, False) otherwise."""
    path = path.strip()
    if path.endswith(OPTIONAL_MARK):
        return path[:-1].rstrip(), True
    return path, False


def property_stats(results: list[dict], types: dict[str, str]) -> dict[str, dict]:
    """name -> {type, non_null, non_null_fraction} over the scanned tables."""
    total = sum(r["table"].num_rows for r in results if r["table"] is not None)
    out = {}
    for name, typ in types.items():
        present = sum(r["table"].num_rows - r["table"].column(name).null_count for r in results
                      if r["table"] is not None and name in r["table"].column_names)
        out[name] = {"type": typ, "non_null": present,
                     "non_null_fraction": round(present / total, 4) if total else None}
    return out


def check_matched(fmt: str, files: list[tuple[str, str]], text: str, mapping: dict[str, str],
                  optional: list[str], stats: dict[str, dict]) -> None:
    """RegistrationError for the first mapped, non-optional property that no sample has."""
    missing = [n for n, s in stats.items() if n in mapping and n not in optional and s["non_null"] == 0]
    if not missing or not any(s["non_null_fraction"] is not None for s in stats.values()):
        return
    seen = seen_paths(fmt, files, text)
    missing = [n for n in missing if mapping[n] not in seen]   # present but always null is data, not a typo
    if not missing:
        return
    name = missing[0]
    path = mapping[name]
    close = difflib.get_close_matches(path, seen, n=3, cutoff=0.6)
    if not close:
        leaf = path.rsplit(".", 1)[-1]
        close = [p for p in seen if p.rsplit(".", 1)[-1] == leaf][:3]
    hint = (f"did you mean {' or '.join(repr(c) for c in close)}?" if close else
            f"paths seen: {', '.join(seen[:12]) or 'none'}")
    more = f" (also empty: {', '.join(missing[1:])})" if len(missing) > 1 else ""
    raise RegistrationError(
        f"property {name!r}: path {path!r} matches no sample of the source{more}",
        hint=f"{hint}; mark a path optional with a trailing ? ('{path}?') to register NULLs")


def seen_paths(fmt: str, files: list[tuple[str, str]], text: str) -> list[str]:
    """Dotted paths present in the first records of the first files (sorted)."""
    paths: set[str] = set()
    for path, comp in files[:SAMPLE_FILES]:
        try:
            if fmt == "parquet":
                _schema_paths(pq.read_schema(path), paths)
            elif fmt == "webdataset":
                for rec in _wds_json(path):
                    _dict_paths(rec, "", paths)
            else:
                for rec in _jsonl_records(path, comp):
                    _dict_paths(rec, "", paths)
        except (OSError, ValueError, formats.ScanError, tarfile.TarError):
            continue
    paths.discard(text)
    return sorted(paths)


def _dict_paths(obj, prefix: str, out: set[str]) -> None:
    for k, v in obj.items():
        p = f"{prefix}{k}"
        out.add(p)
        if isinstance(v, dict):
            _dict_paths(v, p + ".", out)


def _schema_paths(schema, out: set[str]) -> None:
    def walk(field, prefix):
        p = f"{prefix}{field.name}"
        out.add(p)
        if pa.types.is_struct(field.type):
            for i in range(field.type.num_fields):
                walk(field.type.field(i), p + ".")
    for f in schema:
        walk(f, "")


def _jsonl_records(path: str, compression: str):
    n = 0
    for _, block in compressed.blocks(path, compression):
        for line in bytes(block).splitlines():
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict):
                yield rec
                n += 1
                if n >= SAMPLE_RECORDS:
                    return
        return


def _wds_json(path: str):
    n = 0
    with tarfile.open(path, "r:") as tf:
        for m in tf:
            if m.isfile() and m.name.endswith(".json"):
                rec = json.loads(tf.extractfile(m).read())
                if isinstance(rec, dict):
                    yield rec
                    n += 1
                    if n >= SAMPLE_RECORDS:
                        return
