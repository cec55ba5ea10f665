"""A MIX statement opened for streaming: plan + execute once, then any number of engines.

``MixStream.open(catalog, sql)`` plans and runs the statement read-only and keeps the pointer
table, the final spec, the used files (for readers) and the catalog snapshot. ``chunks()``
yields this process's chunks for a :class:`~mixsql.topology.Topology`; chunks owned by other
ranks/workers are skipped without materialising them (composition only).
"""
from __future__ import annotations

import os
from typing import Iterator

import numpy as np
import pyarrow as pa

from .catalog import Catalog
from .engine import MixEngine
from .spec import MixSpec
from .topology import Topology


class MixStream:
    def __init__(self, pointers: pa.Table, spec: MixSpec, files: pa.Table | None = None,
                 snapshot: int | None = None, statement: str = "", batch_size: int | None = None):
        self.pointers = pointers
        self.spec = spec
        self.files = files
        self.snapshot = snapshot
        self.statement = statement
        self.batch_size = batch_size

    @classmethod
    def open(cls, catalog: str | os.PathLike | Catalog, sql: str, params=None, *,
             batch_size: int | None = None) -> "MixStream":
        """Plan and execute ``sql`` (a MIX statement) against ``catalog`` (path or Catalog)."""
        from . import planner  # imported lazily: the planner pulls in the dialect

        own = not isinstance(catalog, Catalog)
        cat = Catalog(catalog, read_only=True) if own else catalog
        try:
            with cat.lock:
                plan = planner.plan(cat, sql, params)
                pointers, spec = planner.execute_plan(cat, plan)
                file_ids = np.unique(pointers.column("__mix_file_id").to_numpy()) if pointers.num_rows else []
                files = cat.files_table(file_ids)
                snapshot = cat.snapshot
        finally:
            if own:
                cat.close()
        return cls(pointers, spec, files, snapshot, sql, batch_size)

    def engine(self, state: dict | None = None) -> MixEngine:
        return MixEngine(self.pointers, self.spec, state, batch_size=self.batch_size)

    def chunks(self, topology: Topology | None = None, state: dict | None = None) -> Iterator[pa.Table]:
        """This process's chunks, in index order (all chunks when ``topology`` is None)."""
        eng = self.engine(state)
        topo = topology or Topology()
        while True:
            if topo.owns(eng.next_index):
                t = eng.next_chunk()
                if t is None:
                    return
                yield t
            elif not eng.skip_chunk():
                return
