"""Real torch.distributed (gloo on loopback, spawned processes): ranks disjoint, replicas identical,
the union over ranks equals the selection, kill-and-resume per rank reproduces the batches."""
from __future__ import annotations

import collections
import json
import os
import socket

import numpy as np
import pytest
import torch.multiprocessing as mp

from conftest import write_jsonl_catalog

SQL = ("SELECT * FROM samples MIX BY lang WITH (en 0.5, de 0.3, fr 0.2) "
       "SETTINGS (chunk_size = 6, on_exhausted = 'redistribute', seed = 5)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank, world, port, cat, replicas, out_dir, stop):
    import torch.distributed as dist

    from mixsql.torch import MixDataLoader, MixDataset

    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        def run(stop=None, state=None):
            ds = MixDataset(SQL, catalog=cat, replicas=replicas, columns=("file", "row"))
            dl = MixDataLoader(ds, batch_size=2, num_workers=0)
            if state is not None:
                dl.load_state_dict(state)
            got = []
            for i, b in enumerate(dl):
                got.append([[f, r] for f, r in zip(b["file"], b["row"])])
                if stop is not None and i + 1 == stop:
                    break
            return got, dl.state_dict()

        full, _ = run()
        head, state = run(stop=stop)
        tail, _ = run(state=json.loads(json.dumps(state)))
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump({"full": full, "resumed": head + tail, "dp": [ds_rank(rank, replicas)]}, f)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def ds_rank(rank, replicas):
    return rank // replicas


@pytest.fixture(scope="module")
def cat(tmp_path_factory):
    recs = [{"text": f"doc {i}", "lang": ["en", "de", "fr"][i % 3]} for i in range(90)]
    return str(write_jsonl_catalog(tmp_path_factory.mktemp("d") / "cat", recs, properties={"lang": "VARCHAR"},
                                   rows_per_file=25))


@pytest.mark.parametrize("world,replicas", [(2, 1), (4, 2)])
def test_gloo_ranks(cat, tmp_path, world, replicas):
    stop = int(np.random.Generator(np.random.PCG64(world)).integers(1, 4))
    # forkserver: ranks fork from a clean server that preloaded torch and mixsql, so they start
    # fast (unlike spawn) and inherit no threads from this test process (gRPC, DuckDB, thread
    # pools), which can leave forked children deadlocked on a lock held at fork time.
    mp.set_forkserver_preload(["torch", "mixsql.torch", "mixsql.stream"])
    mp.start_processes(_rank_main, args=(world, _free_port(), cat, replicas, str(tmp_path), stop), nprocs=world,
                       join=True, start_method="forkserver")
    res = [json.load(open(tmp_path / f"rank{r}.json")) for r in range(world)]
    for r in res:
        assert r["resumed"] == r["full"]          # kill-and-resume reproduces every batch
    by_dp = {}
    for r in range(world):
        by_dp.setdefault(r // replicas, []).append(res[r]["full"])
    for runs in by_dp.values():
        assert all(x == runs[0] for x in runs)    # replicas (tensor/pipeline peers) get identical data
    seen = [tuple(s) for runs in by_dp.values() for b in runs[0] for s in b]
    assert len(seen) == len(set(seen))            # data-parallel ranks are disjoint
    from mixsql.catalog import Catalog

    c = Catalog(cat, read_only=True)
    sel = collections.Counter(map(tuple, c.con.execute('SELECT file, "row" FROM samples').fetchall()))
    c.close()
    assert collections.Counter(seen) == sel        # the union over ranks is exactly the selection

