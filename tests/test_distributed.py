"""Real torch.distributed (gloo on loopback, spawned processes): ranks disjoint, replicas identical,
the union over ranks equals the selection, kill-and-resume per rank reproduces the batches, and a
checkpoint resumes on other numbers of ranks (4 -> 3 -> 6, DataLoader workers in every rank)."""
from __future__ import annotations

import collections
import json
import os

import numpy as np
import pytest
import torch.multiprocessing as mp

from conftest import write_jsonl_catalog

SQL = ("SELECT * FROM samples MIX BY lang WITH (en 0.5, de 0.3, fr 0.2) "
       "SETTINGS (chunk_size = 6, on_exhausted = 'redistribute', seed = 5)")


def _init_gloo(rank: int, world: int, store: str) -> None:
    """Rendezvous through a file (no TCP port to pick: a port chosen free can be taken by another
    process on a busy machine before rank 0 binds it); gloo then connects the ranks itself."""
    import datetime

    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(minutes=10))


def _rank_main(rank, world, store, cat, replicas, out_dir, stop):
    import torch.distributed as dist

    from mixsql.torch import MixDataLoader, MixDataset

    _init_gloo(rank, world, store)
    try:
        def run(stop=None, state=None):
            # the raw partition over ranks (even_end="drop" would hold back the uneven tail)
            ds = MixDataset(SQL, catalog=cat, replicas=replicas, columns=("file", "row"), even_end="off")
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
    mp.start_processes(_rank_main, args=(world, str(tmp_path / "store"), cat, replicas, str(tmp_path), stop), nprocs=world,
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



def _elastic_rank(rank, world, store, cat, states, stop, out_dir):
    """One data-parallel rank of one phase: resume from every old rank's state (if any), read
    ``stop`` batches through 2 DataLoader workers (None: to the end), save what it saw and its state."""
    import torch.distributed as dist

    from mixsql.torch import MixDataLoader, MixDataset

    _init_gloo(rank, world, store)
    try:
        # the raw partition (even_end="drop" would hold back the last phase's uneven tail)
        dl = MixDataLoader(MixDataset(SQL, catalog=cat, even_end="off"), batch_size=2, num_workers=2,
                           multiprocessing_context="fork")
        if states is not None:
            dl.load_state_dict(json.loads(json.dumps(states)))
        seen = []
        for i, b in enumerate(dl):
            seen += b["text"]
            if stop is not None and i + 1 == stop:
                break
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump({"seen": seen, "state": dl.state_dict(), "dp": [dl.dataset.dp_rank, dl.dataset.dp_world]}, f)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _elastic_phases(cat, tmp_path, phases):
    """Run ``phases`` [(world, stop)] one after the other, each resuming from the list of all the
    previous phase's rank states; returns every sample text any rank consumed."""
    mp.set_forkserver_preload(["torch", "mixsql.torch", "mixsql.stream"])
    seen, states = [], None
    for i, (world, stop) in enumerate(phases):
        out = tmp_path / f"phase{i}"
        out.mkdir()
        mp.start_processes(_elastic_rank, args=(world, str(out / "store"), cat, states, stop, str(out)), nprocs=world,
                           join=True, start_method="forkserver")
        res = [json.load(open(out / f"rank{r}.json")) for r in range(world)]
        assert [r["dp"] for r in res] == [[r, world] for r in range(world)]   # rank from torch.distributed
        seen += [s for r in res for s in r["seen"]]
        states = [r["state"] for r in res]
    return seen


def test_elastic_resume_4_3_6_gloo_ranks_with_dataloader_workers(cat, tmp_path):
    """4 -> 3 -> 6 gloo ranks, 2 DataLoader workers each, every phase resumed from the list of all
    the previous phase's states: the redistribute epoch is covered exactly once."""
    seen = _elastic_phases(cat, tmp_path, [(4, 2), (3, 1), (6, None)])
    assert collections.Counter(seen) == collections.Counter(f"doc {i}" for i in range(90))   # the records of cat
