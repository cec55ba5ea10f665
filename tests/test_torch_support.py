"""Test helpers for the torch/readers tests (no tests here).

``SimpleStream`` is a small deterministic chunk source with the MixStream/MixEngine interface
(used when mixsql.stream is not importable, and to test the readers' side in isolation):
groups by one column, a seeded permutation inside each group, chunks that take groups in
rotation until all groups are dry; the last partial chunk is delivered.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from mixsql.catalog import Catalog
from mixsql.spec import Group, MixSpec


class SimpleEngine:
    def __init__(self, pointers: pa.Table, spec: MixSpec, perms: list, state: dict | None = None):
        self.p = pointers
        self.spec = spec
        self.perms = perms
        self.cursor = [0] * len(perms)
        self.next_index = 0
        if state:
            self.load_state_dict(state)

    def _compose(self):
        out = []
        G = len(self.perms)
        g = self.next_index % G
        while len(out) < self.spec.chunk_size:
            for _ in range(G):
                if self.cursor[g] < len(self.perms[g]):
                    break
                g = (g + 1) % G
            else:
                break
            out.append(int(self.perms[g][self.cursor[g]]))
            self.cursor[g] += 1
            g = (g + 1) % G
        return out

    def skip_chunk(self) -> bool:
        rows = self._compose()
        if not rows:
            return False
        self.next_index += 1
        return True

    def next_chunk(self):
        rows = self._compose()
        if not rows:
            return None
        t = self.p.take(pa.array(rows))
        n = len(rows)
        k = self.next_index
        self.next_index += 1
        return pa.table({
            "chunk": pa.array([k] * n, pa.int64()), "position": pa.array(range(n), pa.int32()),
            "group": t["grp"].cast(pa.string()), "source": t["source"], "file": t["file"], "row": t["row"],
            "group_id": t["gid"].cast(pa.int32()), "file_id": t["file_id"].cast(pa.int32()),
            "loc_offset": t["loc_offset"].cast(pa.int64()), "loc_length": t["loc_length"].cast(pa.int32()),
            "n_bytes": t["n_bytes"].cast(pa.int64()), "n_tokens": t["n_tokens"].cast(pa.int64()),
            "epoch": pa.array([0] * n, pa.int32()),
        })

    def state_dict(self):
        return {"cursor": list(self.cursor), "next_index": self.next_index}

    def load_state_dict(self, d):
        self.cursor = list(d["cursor"])
        self.next_index = d["next_index"]


class SimpleStream:
    def __init__(self, catalog_dir, group_col: str, chunk_size: int = 8, seed: int = 0, unit="samples",
                 where: str = "true"):
        cat = Catalog(catalog_dir, read_only=True)
        try:
            self.files = cat.files_table()
            p = cat.con.sql(
                f"SELECT source, file, \"row\", file_id, loc_offset, loc_length, n_bytes, n_tokens, "
                f"CAST({group_col} AS VARCHAR) AS grp FROM samples WHERE {where} ORDER BY file_id, \"row\""
            ).to_arrow_table()
        finally:
            cat.close()
        names = sorted(set(p["grp"].to_pylist()))
        gid = [names.index(v) for v in p["grp"].to_pylist()]
        self.pointers = p.append_column("gid", pa.array(gid, pa.int32()))
        rng = np.random.Generator(np.random.PCG64(seed))
        gid = np.array(gid)
        self.perms = [rng.permutation(np.flatnonzero(gid == i)) for i in range(len(names))]
        self.spec = MixSpec(groups=tuple(Group(i, n, 1 / len(names), (n,)) for i, n in enumerate(names)),
                            unit=unit, chunk_size=chunk_size, seed=seed)

    def engine(self, state=None):
        return SimpleEngine(self.pointers, self.spec, self.perms, state)


class SimpleStreamFactory:
    """Picklable zero-argument factory (DataLoader workers, spawned ranks)."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs

    def __call__(self):
        return SimpleStream(*self.args, **self.kwargs)
