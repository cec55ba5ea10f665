"""Property types: unified across a scan's files (or declared), then checked against the
columns other sources already gave the catalog (a property has one type catalog-wide)."""
from __future__ import annotations

import duckdb
import pyarrow as pa

from ..catalog import Catalog
from ..errors import RegistrationError

_INT_TYPES = {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "UTINYINT", "USMALLINT", "UINTEGER"}


def _duck_type_of(arrow_type: pa.DataType) -> str:
    if pa.types.is_null(arrow_type):
        return "VARCHAR"
    return str(duckdb.from_arrow(pa.table({"x": pa.array([], arrow_type)})).types[0])


def _compatible(existing: str, new: str) -> bool:
    if existing == new:
        return True
    if new in _INT_TYPES and existing in _INT_TYPES | {"DOUBLE", "HUGEINT"}:
        return True
    return new == "FLOAT" and existing == "DOUBLE"


def _resolve_types(con, results: list[dict], paths: list[str], declared: dict[str, str],
                   prop_names: list[str]) -> dict[str, str]:
    """Property -> DuckDB type: declared, or unified from the per-file Arrow types."""
    out = {}
    for name in prop_names:
        if name in declared:
            out[name] = declared[name]
            continue
        seen: list[tuple[pa.DataType, str]] = []
        for res, path in zip(results, paths):
            t = res["table"]
            if t is None or name not in t.column_names:
                continue
            typ = t.schema.field(name).type
            if pa.types.is_dictionary(typ):
                typ = typ.value_type
            if not pa.types.is_null(typ) and all(typ != s for s, _ in seen):
                seen.append((typ, path))
        if not seen:
            out[name] = None  # only NULLs: adopt the catalog's column type, else VARCHAR
            continue
        try:
            unified = pa.unify_schemas([pa.schema([pa.field(name, s)]) for s, _ in seen],
                                       promote_options="permissive").field(name).type
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            (t1, p1), (t2, p2) = seen[0], seen[1]
            raise RegistrationError(
                f"property {name!r} is {t1} in {p1} but {t2} in another file", path=p2,
                hint=f"declare its type, e.g. types = {{'{name}': 'VARCHAR'}}") from None
        out[name] = _duck_type_of(unified)
    return out


def _check_against_catalog(existing_columns, types: dict[str, str]) -> None:
    """Adopt existing column types (fill NULL-only properties); raise on a type conflict."""
    existing = {n.lower(): (n, t) for n, t in existing_columns}
    for name, typ in types.items():
        if typ is None:
            typ = types[name] = existing[name.lower()][1] if name.lower() in existing else "VARCHAR"
        if name.lower() in existing:
            ename, etyp = existing[name.lower()]
            if not _compatible(etyp, typ):
                raise RegistrationError(
                    f"property {name!r} would be {typ} but the catalog already has column {ename!r} of type {etyp}",
                    hint=f"declare types = {{'{name}': '{etyp}'}} or map the field under another name")
            types[name] = etyp


def _columns_of_others(catalog: Catalog, source_id: int | None) -> list[tuple[str, str]]:
    """Property columns of every source but ``source_id`` (what a new or replaced source must match)."""
    out: dict[str, tuple[str, str]] = {}
    for s in catalog.manifest.get("sources", []):
        if s["source_id"] != source_id:
            for n, t in s["property_types"]:
                out.setdefault(n.lower(), (n, t))
    return list(out.values())
