"""Chunk ownership: disjoint across data-parallel ranks, identical for replicas, striped workers."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from mixsql.engine import MixEngine
from mixsql.spec import Group, MixSpec
from mixsql.topology import Topology, owned_chunks, owner


def test_owner_formula():
    assert [owner(k, 2, 3) for k in range(7)] == [(0, 0), (1, 0), (0, 1), (1, 1), (0, 2), (1, 2), (0, 0)]


def test_owned_chunks_partition():
    topos = [Topology(r, 3, w, 4) for r in range(3) for w in range(4)]
    seen = {}
    for t in topos:
        for k in itertools.islice(owned_chunks(t, start=5), 20):
            assert k >= 5 and t.owns(k) and k not in seen
            seen[k] = t
    assert set(range(5, 5 + 12 * 10)) <= set(seen)


def test_invalid_topology():
    with pytest.raises(ValueError):
        Topology(dp_rank=2, dp_world=2)


def test_scenario4_two_dp_groups_two_replicas_three_workers():
    """Mixtera scenario 4: 2 data-parallel groups x 2 nodes (replicas) x 3 DataLoader workers."""
    from mixsql.stream import MixStream

    n = 600
    import pyarrow as pa
    g = np.arange(n) % 2
    t = pa.table({
        "__mix_group": pa.array(g, pa.int32()), "__mix_source": ["s"] * n,
        "__mix_file_id": pa.array(np.arange(n) // 100, pa.int32()), "__mix_file": [f"f{i // 100}" for i in range(n)],
        "__mix_row": pa.array(np.arange(n) % 100), "__mix_offset": pa.array(np.arange(n)),
        "__mix_length": pa.array(np.ones(n), pa.int32()), "__mix_n_bytes": pa.array(np.ones(n, np.int64)),
        "__mix_n_tokens": pa.array(np.ones(n, np.int64)),
    })
    spec = MixSpec(groups=(Group(0, "a", .5), Group(1, "b", .5)), chunk_size=10, seed=4)
    s = MixStream(t, spec)
    got = {}
    for rank in range(2):
        for node in range(2):
            for worker in range(3):
                chunks = list(s.chunks(Topology(rank, 2, worker, 3)))
                got[rank, node, worker] = [(c.column("chunk")[0].as_py(), c.column("row").to_pylist(),
                                            c.column("file").to_pylist()) for c in chunks]
    for rank in range(2):
        for worker in range(3):
            assert got[rank, 0, worker] == got[rank, 1, worker]  # replicas: identical chunks
    samples = {}
    for rank in range(2):
        for worker in range(3):
            for k, rows, files in got[rank, 0, worker]:
                assert owner(k, 2, 3) == (rank, worker)
                for key in zip(files, rows):
                    assert key not in samples  # disjoint across ranks and workers
                    samples[key] = (rank, worker)
    assert len(samples) == n  # together they cover the whole stream
    whole = [c.column("row").to_pylist() for c in MixEngine(t, spec)]
    assert [r for k, r, _ in sorted(x for v in got.values() for x in v if True)][::2] == whole
