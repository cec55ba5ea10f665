"""A MIX statement opened for streaming: plan + execute once, then any number of engines.

``MixStream.open(catalog, sql)`` plans and runs the statement read-only and keeps the pointer
table, the final spec, the used files (for readers) and the catalog snapshot. ``chunks()``
yields this process's chunks for a :class:`~mixsql.topology.Topology`; each is computed directly
(:meth:`~mixsql.engine.MixEngine.chunk`), so chunks owned by other ranks/workers cost nothing.

``user_columns`` chooses what the pointer table carries besides ``spec.MIX_COLUMNS``: ``True``
(default; the DB-API's MIX result rows show the user's projection), ``False`` (pointers only:
what training reads, and by far the cheapest to open), or a sequence of user column names
(e.g. torch's ``columns=``). Chunks always carry the pointer columns either way.

``MixStream.open_cached`` (and :meth:`MixStream.from_cache`, for a caller that plans on its own
catalog handle, e.g. the server's sandbox) go through the node's selection cache instead: planned
once per node by :func:`plan_selection`, memory-mapped by every other opener.
"""
from __future__ import annotations

import os
from typing import Iterator

import pyarrow as pa

from .catalog import Catalog
from .engine import MixEngine, dense_codes
from .spec import MixSpec
from .topology import Topology, owned_chunks


class MixStream:
    def __init__(self, pointers: pa.Table, spec: MixSpec, files: pa.Table | None = None,
                 snapshot: int | None = None, statement: str = "", batch_size: int | None = None,
                 plan=None):
        self.pointers = pointers
        self.spec = spec
        self.files = files
        self.snapshot = snapshot
        self.statement = statement
        self.batch_size = batch_size
        self.plan = plan   # the planner's MixPlan (user_columns: the statement's projection names)

    @classmethod
    def open(cls, catalog: str | os.PathLike | Catalog, sql: str, params=None, *,
             batch_size: int | None = None, user_columns=True, snapshot: int | None = None) -> "MixStream":
        """Plan and execute ``sql`` (a MIX statement) against ``catalog`` (path or Catalog).

        ``user_columns``: True (all of the statement's projection), False (pointers only), or a
        sequence of projection column names; see the module docstring. ``snapshot`` (or
        ``AT SNAPSHOT n`` in ``sql``) reads that catalog snapshot."""
        from . import planner  # imported lazily: the planner pulls in the dialect
        from .source_statements import split_snapshot

        sql, pin = split_snapshot(sql)
        snapshot = pin if snapshot is None else snapshot
        own = not isinstance(catalog, Catalog) or snapshot not in (None, catalog.snapshot)
        path = catalog.path if isinstance(catalog, Catalog) else catalog
        cat = Catalog(path, read_only=True, snapshot=snapshot) if own else catalog
        try:
            with cat.lock:
                plan = planner.plan(cat, sql, params)
                # canonical=False: the engine orders rows from their values (one sort, not two)
                pointers, spec = planner.execute_plan(cat, plan, user_columns=user_columns, canonical=False)
                files = cat.files_table(_used_file_ids(pointers))
                snapshot = cat.snapshot
        finally:
            if own:
                cat.close()
        return cls(pointers, spec, files, snapshot, sql, batch_size, plan)

    @classmethod
    def open_cached(cls, catalog: str | os.PathLike, sql: str, params=None, *,
                    batch_size: int | None = None, snapshot: int | None = None) -> "MixStream":
        """Like :meth:`open` (pointers only), through the node's selection cache
        (:mod:`mixsql.selection`): the first process plans and publishes the selection, every
        other process (and every later restart) memory-maps it instead of planning."""
        from .source_statements import split_snapshot

        sql, pin = split_snapshot(sql)
        with Catalog(catalog, read_only=True, snapshot=pin if snapshot is None else snapshot) as cat:
            snapshot = cat.snapshot

        def build(directory):
            with Catalog(catalog, read_only=True, snapshot=snapshot) as cat:
                return plan_selection(cat, sql, params, directory, str(catalog), snapshot)

        return cls.from_cache(str(catalog), snapshot, sql, params, build, batch_size=batch_size)

    @classmethod
    def from_cache(cls, catalog_path: str | os.PathLike, snapshot: int, sql: str, params, build, *,
                   batch_size: int | None = None) -> "MixStream":
        """The stream of the node's selection of ``sql`` on catalog snapshot ``snapshot``: mapped
        when published, else built once by ``build(directory)`` (:func:`plan_selection` on some
        catalog handle) and published. ``stream.built`` tells whether this call planned the statement."""
        from .selection import cached

        pointers, spec, files, built = cached(str(catalog_path), snapshot, sql, params, build)
        stream = cls(pointers, spec, files, snapshot, sql, batch_size)
        stream.built = built
        return stream

    def engine(self, state: dict | None = None) -> MixEngine:
        return MixEngine(self.pointers, self.spec, state, batch_size=self.batch_size)

    def chunks(self, topology: Topology | None = None, state: dict | None = None) -> Iterator[pa.Table]:
        """This process's chunks, in index order (all chunks when ``topology`` is None)."""
        eng = self.engine(state)
        for k in owned_chunks(topology or Topology(), eng.next_index):
            eng.seek(k)   # computed directly: chunks owned by others are never composed
            t = eng.next_chunk()
            if t is None:
                return
            yield t


def plan_selection(cat: Catalog, sql: str, params, directory, catalog_path: str, snapshot: int):
    """What the node's selection cache stores for ``sql`` planned on ``cat`` (pointers only,
    :func:`mixsql.selection.cached`): a packed selection written into ``directory`` (returns
    None; :mod:`mixsql.packed`, about a byte a sample, built streaming) when the statement
    allows it, else ``(pointers in base order, spec, files)``."""
    from . import packed, planner

    with cat.lock:
        plan = planner.plan(cat, sql, params)
    if packed.eligible(plan.spec):
        return packed.build(cat, plan, directory, catalog_path, snapshot, sql)
    with cat.lock:
        pointers, spec = planner.execute_plan(cat, plan, user_columns=False, canonical=True)
        return pointers, spec, cat.files_table(_used_file_ids(pointers))


def _used_file_ids(pointers: pa.Table) -> list[int]:
    """Distinct file ids of the pointer table, O(N) (no sort)."""
    if not pointers.num_rows:
        return []
    fid = pointers.column("__mix_file_id")
    fid = (fid.combine_chunks() if isinstance(fid, pa.ChunkedArray) else fid).to_numpy(zero_copy_only=False)
    return dense_codes(fid)[0].tolist()
