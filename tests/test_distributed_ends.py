"""Even endings over real gloo ranks: every data-parallel rank yields the same number of batches
of a finite stream; 'drop' leaves the uneven tail in the state, 'pad' masks it."""
from __future__ import annotations

import collections
import json
import os

import pytest
import torch.multiprocessing as mp

from conftest import write_jsonl_catalog
from test_distributed import _init_gloo

SQL = ("SELECT * FROM samples MIX BY lang WITH (en 0.5, de 0.3, fr 0.2) "
       "SETTINGS (chunk_size = {cs}, on_exhausted = '{ex}', seed = 5) {limit}")
# (statement, loader kwargs, dataset kwargs): awkward sizes, both end policies, with and without workers
CASES = [
    (SQL.format(cs=6, ex="redistribute", limit=""), {"batch_size": 2}, {}),
    (SQL.format(cs=7, ex="stop", limit=""), {"batch_size": 3, "num_workers": 2}, {}),
    (SQL.format(cs=5, ex="redistribute", limit="LIMIT 61"), {"batch_size": 4}, {}),
    (SQL.format(cs=6, ex="redistribute", limit=""), {"batch_size": 2}, {"seq_len": 16, "even_end": "pad"}),
    (SQL.format(cs=9, ex="redistribute", limit=""), {"batch_size": 3, "num_workers": 2},
     {"seq_len": 8, "even_end": "pad"}),
]


def _rank_main(rank, world, store, cat, out_dir):
    import torch.distributed as dist

    from mixsql.torch import MixDataLoader, MixDataset

    _init_gloo(rank, world, store)
    try:
        res = []
        for sql, lkw, dkw in CASES:
            columns = () if "seq_len" in dkw else ("file", "row")
            dl = MixDataLoader(MixDataset(sql, catalog=cat, columns=columns, **dkw), **lkw)
            batches = list(dl)
            if "seq_len" in dkw:
                real = sum(int(b["mask"].sum()) for b in batches)
                res.append({"n": len(batches), "tokens": real,
                            "pads": sum(int(b["length"].max()) == 0 for b in batches)})
                continue
            got = [[f, int(r)] for b in batches for f, r in zip(b["file"], b["row"])]
            tail_dl = MixDataLoader(MixDataset(sql, catalog=cat, columns=columns, even_end="off"),
                                    batch_size=lkw["batch_size"])
            tail_dl.load_state_dict(json.loads(json.dumps(dl.state_dict())))
            tail = [[f, int(r)] for b in tail_dl for f, r in zip(b["file"], b["row"])]
            uneven = MixDataLoader(MixDataset(sql, catalog=cat, columns=columns, even_end="off"),
                                   batch_size=lkw["batch_size"])
            res.append({"n": len(batches), "rows": got, "tail": tail, "n_off": sum(1 for _ in uneven)})
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(res, f)
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def cat(tmp_path_factory):
    recs = [{"text": f"doc {i} " + "xyz"[i % 3] * (i % 23), "lang": ["en", "de", "fr"][i % 3]} for i in range(100)]
    return str(write_jsonl_catalog(tmp_path_factory.mktemp("e") / "cat", recs, properties={"lang": "VARCHAR"},
                                   rows_per_file=30))


def _selection(cat, sql):
    import mixsql

    con = mixsql.connect(cat)
    try:
        cur = con.cursor()
        cur.execute(sql)
        return collections.Counter((f, int(r)) for f, r in ((row[4], row[5]) for row in cur.fetchall()))
    finally:
        con.close()


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_end_evenly(cat, tmp_path, world):
    mp.set_forkserver_preload(["torch", "mixsql.torch", "mixsql.stream"])
    mp.start_processes(_rank_main, args=(world, str(tmp_path / "store"), cat, str(tmp_path)), nprocs=world, join=True,
                       start_method="forkserver")
    res = [json.load(open(tmp_path / f"rank{r}.json")) for r in range(world)]
    from mixsql.catalog import Catalog

    c = Catalog(cat, read_only=True)
    nbytes, ndocs = c.con.execute("SELECT sum(n_bytes), count(*) FROM samples").fetchone()
    c.close()
    for i, (sql, _, dkw) in enumerate(CASES):
        per_rank = [r[i] for r in res]
        assert len({r["n"] for r in per_rank}) == 1, (i, [r["n"] for r in per_rank])   # equal batch counts
        if "seq_len" in dkw:   # 'pad': every token delivered once, the short ranks padded
            assert sum(r["tokens"] for r in per_rank) == nbytes + ndocs
            continue
        if i == 0:   # without even endings this stream gives the ranks different batch counts
            assert len({r["n_off"] for r in per_rank}) > 1
        delivered = collections.Counter(tuple(x) for r in per_rank for x in r["rows"])
        tail = collections.Counter(tuple(x) for r in per_rank for x in r["tail"])
        assert not set(delivered) & set(tail)
        assert delivered + tail == _selection(cat, sql)   # 'drop': the tail stays in the state, nothing lost
