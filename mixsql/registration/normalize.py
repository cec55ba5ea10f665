"""Registration ``options`` (``WITH (...)``) validated into the form stored in ``sources.options``.

Property mappings and declared types (inline ``'path::TYPE'`` or ``types``), presets, ``text``,
``tokens``, ``tokenizer``, ``on_error``, ``required``, ``workers``, ``engine`` / ``ray_address``:
:func:`normalize_options`. The split of keys into options and properties is :mod:`mixsql.options`'.
"""
from __future__ import annotations

import re
from pathlib import Path

import duckdb

from ..catalog import RESERVED_NAMES
from ..errors import ProgrammingError
from ..options import split_options, strip_optional
from ..presets import get_preset

_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _split_top(s: str) -> list[str]:
    out, depth, cur = [], 0, ""
    for ch in s:
        if ch in "([<":
            depth += 1
        elif ch in ")]>":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    out.append(cur)
    return [x.strip() for x in out if x.strip()]


def _canonical_type(con: duckdb.DuckDBPyConnection, typ: str, prop: str) -> str:
    try:
        return str(con.sql(f"SELECT NULL::{typ} AS x").types[0])
    except duckdb.Error:
        raise ProgrammingError(
            f"property {prop!r}: unknown type {typ!r}; use a DuckDB type such as VARCHAR, BIGINT, "
            "DOUBLE, BOOLEAN or VARCHAR[]") from None


def _as_list(v) -> list[str]:
    if v is None:
        return []
    if isinstance(v, str):
        return [x.strip() for x in v.split(",") if x.strip()]
    return [str(x) for x in v]


def _check_prop_name(name: str, path: str | None = None) -> None:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ProgrammingError(f"property name {name!r} is not a plain identifier (letters, digits, _)")
    if name.lower() == "source":
        raise ProgrammingError(
            "property name 'source' is reserved: in samples it is the registered source's name; to keep "
            f"the data's field, map it under another name, e.g. origin = '{path or 'source'}'")
    if name.lower() in RESERVED_NAMES:
        raise ProgrammingError(
            f"property name {name!r} is reserved (reserved: {', '.join(sorted(RESERVED_NAMES))}); "
            f"map the field under another name, e.g. {name}_ = '...' or subset = '...'")


def normalize_options(con: duckdb.DuckDBPyConnection, fmt: str, options: dict | None) -> dict:
    """Validate ``options`` and return the JSON-able form stored in ``sources.options``.

    Result keys: text, tokens, tokenizer, n_tokens, on_error, required, preset, properties
    (name -> path; None = auto-discover), types (name -> canonical DuckDB type).
    """
    options, flat = split_options(dict(options or {}))
    preset_name = options.get("preset")
    base = get_preset(preset_name) if preset_name else {}
    props: dict[str, str] = dict(base.get("properties", {}))
    types: dict[str, str] = dict(base.get("types", {}))
    user_props = dict(options.get("properties") or {})
    user_props.update(flat)
    optional: list[str] = []
    for name, path in user_props.items():
        if not isinstance(path, str) or not path.strip():
            raise ProgrammingError(f"property {name!r}: the mapping must be a non-empty path string, got {path!r}")
        path = path.strip()
        if "::" in path:
            path, typ = (x.strip() for x in path.split("::", 1))
            types[name] = typ
        path, is_optional = strip_optional(path)
        if is_optional:
            optional.append(name)
        _check_prop_name(name, path)
        props[name] = path
    utypes = options.get("types") or {}
    if isinstance(utypes, str):
        parsed = {}
        for item in _split_top(utypes):
            bits = item.split(None, 1)
            if len(bits) != 2:
                raise ProgrammingError(f"types: expected 'name TYPE', got {item!r}")
            parsed[bits[0]] = bits[1]
        utypes = parsed
    types.update(utypes)
    for name in list(props) + list(types):
        _check_prop_name(name)
    auto = not props
    for name in types:
        if name not in props and not auto:
            raise ProgrammingError(f"types: {name!r} is not a mapped property (mapped: {', '.join(props)})")
    types = {n: _canonical_type(con, t, n) for n, t in types.items()}
    on_error = str(options.get("on_error", "fail")).lower()
    if on_error not in ("fail", "skip"):
        raise ProgrammingError(f"on_error must be 'fail' or 'skip', got {on_error!r}")
    required = _as_list(options.get("required"))
    for r in required:
        if not auto and r not in props:
            raise ProgrammingError(f"required property {r!r} is not mapped (mapped: {', '.join(props)})")
    text = options.get("text", base.get("text"))
    if text is None:
        text = "txt" if fmt == "webdataset" else "text"
    tokenizer = options.get("tokenizer")
    if isinstance(tokenizer, str) and tokenizer.lower() in ("byte", "bytes"):
        tokenizer = "byte"
        if options.get("tokens"):
            raise ProgrammingError("tokenizer = 'byte' counts the text's bytes; a pre-tokenized source "
                                   "(tokens option) has its counts already: drop one of the two")
    elif tokenizer:
        tp = Path(tokenizer).expanduser().resolve()
        if not tp.is_file():
            raise ProgrammingError(f"tokenizer file {tokenizer!r} not found (expected a HF tokenizer.json)")
        tokenizer = str(tp)
    tokens = options.get("tokens")
    if tokens and fmt != "parquet":
        raise ProgrammingError("the tokens option (pre-tokenized column) is only supported for parquet")
    workers = options.get("workers")
    return {
        "text": str(text),
        "tokens": tokens or None,
        "tokenizer": tokenizer or None,
        "n_tokens": options.get("n_tokens", base.get("n_tokens")) or None,
        "on_error": on_error,
        "required": required,
        "preset": preset_name or None,
        "properties": None if auto else props,
        "optional": optional,
        "types": types,
        **({"workers": int(workers)} if workers else {}),
        **_engine_options(options),
    }


def _engine_options(options: dict) -> dict:
    """``engine`` / ``ray_address`` as stored: nothing for the local pool (the default)."""
    engine = str(options.get("engine") or "local").lower()
    address = options.get("ray_address")
    if engine not in ("local", "ray"):
        raise ProgrammingError(f"engine must be 'local' or 'ray', got {options.get('engine')!r}")
    if engine == "local":
        if address:
            raise ProgrammingError("ray_address is given but engine is not 'ray'; add engine = 'ray'")
        return {}
    from ..cluster import require_ray
    require_ray()
    return {"engine": "ray", **({"ray_address": str(address)} if address else {})}
