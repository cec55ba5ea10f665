"""The data ledger (mixsql.ledger, mix_ledger in SQL): every step's samples as the training loop
saw them (2 gloo ranks x 2 workers, a schedule; packed sequences), the inverse lookup against a
brute-force scan, a feedback-driven run killed and restarted, SQL pushdown, CLI and completion."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest
import torch
import torch.multiprocessing as mp

import mixsql
from conftest import LANGS_PROPERTIES, langs_records, write_jsonl_catalog
from mixsql.errors import ProgrammingError
from mixsql.ledger import Ledger, read_state
from mixsql.spec import Budget, Shuffle
from mixsql.tokenize import get_tokenizer
from mixsql.torch import MixDataLoader, MixDataset

SCHEDULE_SQL = ("SELECT * FROM samples MIX BY language WITH SCHEDULE ("
                "AT STEP 0 (JavaScript 0.5, HTML 0.3, Python 0.2), AT STEP 4 (JavaScript 0.2, HTML 0.3, Python 0.5)) "
                "SETTINGS (seed = 3, chunk_size = 4, on_exhausted = 'repeat', max_epochs = 2, batch_size = 6)")
HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def cat(tmp_path_factory):
    return str(write_jsonl_catalog(tmp_path_factory.mktemp("ledger") / "cat", langs_records(),
                                   properties=LANGS_PROPERTIES, rows_per_file=40))


def _texts(cat: str) -> dict:
    out = {}
    for f in sorted((Path(cat) / "data" / "corpus").glob("*.jsonl")):
        for r, line in enumerate(open(f)):
            out[(str(f.resolve()), r)] = json.loads(line)["text"]
    return out


def _by_step(table) -> dict:
    out: dict = {}
    for r in table.to_pylist():
        out.setdefault((r["step"], r["rank"]), []).append(r)
    return out


# --------------------------------------------------------------------------- 2 gloo ranks x 2 workers
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank, world, port, cat, out_dir):
    import torch.distributed as dist

    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        ds = MixDataset(SCHEDULE_SQL, catalog=cat, columns=("file", "row"))
        dl = MixDataLoader(ds, batch_size=3, num_workers=2)
        steps = [[[f, r] for f, r in zip(b["file"], b["row"])] for b in dl]
        state = dl.state_dict()
        torch.save({"model": {"w": torch.zeros(2)}, "data": state}, os.path.join(out_dir, f"rank{rank}.pt"))
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump({"steps": steps, "state": state}, f)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_gloo_ranks_workers_schedule_every_step_matches(cat, tmp_path):
    mp.set_forkserver_preload(["torch", "mixsql.torch", "mixsql.stream"])
    mp.start_processes(_rank_main, args=(2, _free_port(), cat, str(tmp_path)), nprocs=2, join=True,
                       start_method="forkserver")
    logged = {r: json.load(open(tmp_path / f"rank{r}.json")) for r in range(2)}
    assert logged[0]["state"]["run"]["steps"] == len(logged[0]["steps"]) > 8   # past the schedule's change
    for src in (tmp_path / "rank0.pt", tmp_path / "rank1.json"):
        led = Ledger(src)
        n = max(len(x["steps"]) for x in logged.values())
        got = _by_step(led.steps(0, n + 3))
        for r in range(2):
            for s, batch in enumerate(logged[r]["steps"]):
                rows = got.pop((s, r))
                assert [[x["file"], x["row"]] for x in rows] == batch
                assert [x["sequence"] for x in rows] == list(range(len(batch)))
                assert {x["rank"] for x in rows} == {r} and {x["chunk"] % 2 for x in rows} == {r}
        assert not got, f"the ledger has steps the loop never saw: {sorted(got)[:5]}"
    # the same through SQL, joined with the catalog
    with mixsql.connect(cat) as con:
        rows = con.execute(f"SELECT l.step, l.rank, l.file, l.row, s.language, l.\"group\" "
                           f"FROM mix_ledger('{tmp_path / 'rank1.pt'}') l JOIN samples s USING (file, row) "
                           "WHERE l.step BETWEEN 2 AND 5 ORDER BY l.step, l.rank, l.sequence").fetchall()
    want = [(s, r, f, row) for s in range(2, 6) for r in range(2) for f, row in logged[r]["steps"][s]]
    assert [x[:4] for x in rows] == want
    assert all(x[4] == x[5] for x in rows)


# --------------------------------------------------------------------------- packed sequences
@pytest.mark.parametrize("unit,workers", [("samples", 2), ("tokens", 0), ("tokens", 2)])
def test_packed_sequences_map_to_their_documents(cat, tmp_path, unit, workers):
    sql = SCHEDULE_SQL if unit == "samples" else SCHEDULE_SQL.replace("chunk_size = 4", "chunk_size = 90, unit = 'tokens'")
    logged = {}
    for rank in range(2):
        dl = MixDataLoader(MixDataset(sql, catalog=cat, seq_len=16, dp_rank=rank, dp_world=2),
                           batch_size=3, num_workers=workers)
        logged[rank] = [(b["input_ids"].numpy(), b["length"].numpy()) for b in dl]
        state = dl.state_dict()
    path = tmp_path / "state.json"
    path.write_text(json.dumps(state))
    led = Ledger(path)
    tok, texts = get_tokenizer(None), _texts(cat)
    got = _by_step(led.steps(0, max(len(v) for v in logged.values()) + 2))
    for rank, steps in logged.items():
        for s, (ids, length) in enumerate(steps):
            rebuilt = np.full(ids.shape, -1)
            for x in got.pop((s, rank)):
                framed = list(tok.encode_batch([texts[(x["file"], x["row"])]])[0]) + [tok.eos_id]
                rebuilt[x["sequence"], x["offset"]:x["offset"] + x["tokens"]] = \
                    framed[x["doc_offset"]:x["doc_offset"] + x["tokens"]]
            for i in range(len(ids)):
                assert (rebuilt[i, :length[i]] == ids[i, :length[i]]).all(), (rank, s, i)
    assert not got
    # (step, sequence, token offset) -> document, in SQL
    with mixsql.connect(cat) as con:
        hit = con.execute(f"SELECT file, row, doc_offset + (10 - \"offset\") FROM mix_ledger('{path}') "
                          "WHERE step = 1 AND rank = 0 AND sequence = 1 AND 10 >= \"offset\" "
                          "AND 10 < \"offset\" + tokens").fetchall()
    assert len(hit) == 1
    f, r, at = hit[0]
    framed = list(tok.encode_batch([texts[(f, r)]])[0]) + [tok.eos_id]
    assert framed[at] == logged[0][1][0][1][10]


# --------------------------------------------------------------------------- inverse lookup
@pytest.mark.parametrize("seq_len", [None, 12])
def test_inverse_lookup_equals_brute_force_scan(cat, tmp_path, seq_len):
    dl = MixDataLoader(MixDataset(SCHEDULE_SQL, catalog=cat, seq_len=seq_len, dp_rank=1, dp_world=2),
                       batch_size=2, num_workers=2)
    for _ in dl:
        pass
    led = Ledger(dl.state_dict())
    everything = led.steps(0, led.run.steps + 5)
    scan: dict = {}
    for x in everything.to_pylist():
        scan.setdefault((x["file"], x["row"]), []).append(x)
    keys = sorted(_texts(cat))
    pick = np.random.Generator(np.random.PCG64(5)).choice(len(keys), 100, replace=False)
    found = 0
    for i in pick:
        f, r = keys[i]
        got = led.sample(f, r).to_pylist()
        assert sorted(map(_key, got)) == sorted(map(_key, scan.get((f, r), [])))
        found += bool(got)
    assert found > 60


def _key(x):
    return tuple(x[c] for c in ("step", "rank", "worker", "sequence", "offset", "tokens", "doc_offset", "epoch", "chunk"))


@pytest.mark.parametrize("kw", [
    {"on_exhausted": "repeat", "max_epochs": 3},
    {"on_exhausted": "redistribute"},
    {"on_exhausted": "stop"},
    {"unit": "tokens", "on_exhausted": "repeat", "max_epochs": 2},
    {"on_exhausted": "repeat", "max_epochs": 2, "budget": Budget(300, "samples")},
    {"on_exhausted": "repeat", "max_epochs": 2, "budget": Budget(2500, "tokens")},
    {"ordered": True, "on_exhausted": "repeat", "max_epochs": 2},
])
def test_engine_occurrences_invert_the_stream(kw):
    """(file, row) -> every (epoch, chunk, position), against reading the whole stream."""
    from test_engine import make_spec, pointer_table

    from mixsql.engine import MixEngine

    sizes = [50, 120, 33]
    order = np.random.Generator(np.random.PCG64(2)).permutation(sum(sizes)) if kw.get("ordered") else None
    pt = pointer_table(sizes, order=order)
    spec = make_spec([0.5, 0.3, 0.2], chunk_size=16, shuffle=Shuffle(4, 3), seed=3, **kw)
    seen: dict = {}
    for t in MixEngine(pt, spec):
        for k, p, f, r, e in zip(*(t.column(c).to_pylist() for c in ("chunk", "position", "file", "row", "epoch"))):
            seen.setdefault((f, r), []).append((e, k, p))
    eng = MixEngine(pt, spec)
    files = [f"/data/f{i}.jsonl" for i in range(9)]
    for f in files:
        for r in range(45):
            assert list(eng.occurrences(f, r)) == seen.get((f, r), []), (f, r)
    assert list(eng.occurrences("/data/none.jsonl", 0)) == []


# --------------------------------------------------------------------------- feedback, kill, restart
def test_feedback_run_ledger_matches_after_kill_and_restart(tmp_path):
    cat = str(write_jsonl_catalog(tmp_path / "cat", langs_records(), properties=LANGS_PROPERTIES, rows_per_file=40))
    out = tmp_path / "run"
    out.mkdir()
    script = [sys.executable, str(HERE / "ledger_train.py"), cat, str(out)]
    proc = subprocess.Popen(script + ["--steps", "1000"])
    log = out / "log-first.jsonl"
    try:
        while proc.poll() is None and (not log.exists() or log.read_text().count("\n") < 13):
            time.sleep(0.05)
        assert proc.poll() is None, "the first run ended before it was killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    first = [json.loads(x) for x in log.read_text().splitlines()]
    at = torch.load(out / "ckpt.pt", weights_only=True)["step"]
    assert at >= 10 and at % 5 == 0
    subprocess.run(script + ["--steps", str(at + 12), "--resume"], check=True)
    resumed = [json.loads(x) for x in (out / "log-resumed.jsonl").read_text().splitlines()]
    assert [x["step"] for x in resumed] == list(range(at, at + 12))
    history = first[:at] + resumed
    # steps the killed run took after its checkpoint (if any) are the resumed run's steps
    assert all(x == resumed[x["step"] - at] for x in first if at <= x["step"] < at + 12)
    state = read_state(out / "ckpt.pt")
    assert state["dynamic"]["weights"], "ADO changed the weights during the run"
    got = _by_step(Ledger(out / "ckpt.pt").steps(0, at + 11))
    for x in history:
        assert [[y["file"], y["row"]] for y in got[(x["step"], 0)]] == x["samples"]


# --------------------------------------------------------------------------- SQL surface, CLI, errors
@pytest.fixture(scope="module")
def run_state(cat, tmp_path_factory):
    dl = MixDataLoader(MixDataset(SCHEDULE_SQL, catalog=cat, columns=("file", "row")), batch_size=4)
    steps = [list(zip(b["file"], b["row"])) for b in dl]
    path = tmp_path_factory.mktemp("st") / "ckpt.json"
    path.write_text(json.dumps(dl.state_dict()))
    return path, steps


def test_sql_pushdown_aggregates_and_inverse(cat, run_state):
    path, steps = run_state
    with mixsql.connect(cat) as con:
        cur = con.cursor()
        q = f"SELECT step, file, row FROM mix_ledger('{path}')"
        for where, want in ((" WHERE step = 3", [3]), (" WHERE step BETWEEN 2 AND 4", [2, 3, 4]),
                            (" WHERE step IN (1, 5) AND rank = 0", [1, 5]), (" WHERE step >= 20", range(20, len(steps))),
                            (" WHERE step < 2", [0, 1]), ("", range(len(steps)))):
            rows = cur.execute(q + where + " ORDER BY step, sequence").fetchall()
            assert rows == [(s, f, r) for s in want for f, r in steps[s]], where
        total = cur.execute(f"SELECT step, \"group\", count(*) FROM mix_ledger('{path}') GROUP BY step, \"group\" "
                            "ORDER BY step, \"group\"").fetchall()
        assert sum(c for _, _, c in total) == sum(map(len, steps))
        f, r = steps[7][1]
        seen = cur.execute(f"SELECT step, epoch FROM mix_ledger('{path}') WHERE file = '{f}' AND row = {r} "
                           "ORDER BY step").fetchall()
        assert [s for s, _ in seen] == [s for s, b in enumerate(steps) if (f, r) in b]
        assert 7 in [s for s, _ in seen]
        with pytest.raises(ProgrammingError, match="no checkpoint file"):
            cur.execute("SELECT * FROM mix_ledger('/nonexistent/ckpt.json')")
        with pytest.raises(ProgrammingError, match="one string literal"):
            cur.execute("SELECT * FROM mix_ledger(3)")
        bad = path.parent / "bad.json"
        bad.write_text(json.dumps({"model": 1}))
        with pytest.raises(ProgrammingError, match="no mixsql loader state"):
            cur.execute(f"SELECT * FROM mix_ledger('{bad}')")
        old = path.parent / "old.json"
        old.write_text(json.dumps({k: v for k, v in json.loads(path.read_text()).items() if k != "run"}))
        with pytest.raises(ProgrammingError, match="no 'run' record"):
            cur.execute(f"SELECT * FROM mix_ledger('{old}')")


def test_old_state_without_run_record_still_loads(cat, run_state):
    path, steps = run_state
    st = {k: v for k, v in json.loads(path.read_text()).items() if k != "run"}
    ds = MixDataset(SCHEDULE_SQL, catalog=cat)
    ds.load_state_dict(st)
    assert list(ds) == []   # the run consumed the whole stream


def test_cli_ledger(cat, run_state, capsys):
    from mixsql.cli import main

    path, steps = run_state
    assert main(["ledger", str(path), "--step", "3", "--format", "json", "--catalog", cat]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(x["file"], x["row"]) for x in rows] == steps[3]
    assert main(["ledger", str(path), "--step", "2", "--format", "csv"]) == 0
    assert capsys.readouterr().out.count("\n") == len(steps[2]) + 1
    assert main(["ledger", str(path.parent / "missing.json"), "--step", "1"]) != 0
    assert "no checkpoint file" in capsys.readouterr().err
    # the inverse: every step, rank and epoch that consumes a sample (relative paths resolved)
    f, r = steps[5][2]
    assert main(["ledger", str(path), "--file", f, "--row", str(r), "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [x["step"] for x in rows] == [s for s, b in enumerate(steps) if (f, r) in b] and 5 in [x["step"] for x in rows]
    assert all((x["file"], x["row"], x["rank"]) == (f, r, 0) and x["epoch"] in (0, 1) for x in rows)
    cwd = os.getcwd()
    try:
        os.chdir(os.path.dirname(f))
        assert main(["ledger", str(path), "--file", os.path.basename(f), "--row", str(r), "--to", "5",
                     "--format", "json"]) == 0
    finally:
        os.chdir(cwd)
    assert [x["step"] for x in json.loads(capsys.readouterr().out)] == [x["step"] for x in rows if x["step"] <= 5]
    for bad, msg in ((["--step", "1", "--file", f, "--row", "1"], "not both"), (["--file", f], "give both"), ([], "--step N")):
        assert main(["ledger", str(path), *bad]) != 0
        assert msg in capsys.readouterr().err


def test_completion_knows_mix_ledger(cat):
    from prompt_toolkit.document import Document

    from mixsql.completion import MixCompleter, SchemaCache

    with mixsql.connect(cat) as con:
        comp = MixCompleter(SchemaCache(con))
        words = [c.text for c in comp.get_completions(Document("SELECT * FROM mix_le"), None)]
    assert "mix_ledger" in words


def test_statements_merely_naming_mix_ledger_run_unchanged(cat):
    with mixsql.connect(cat) as con:
        assert con.execute("SELECT 'mix_ledger(''x'')' AS s, count(*) FROM samples -- mix_ledger\n").fetchall() == \
            [("mix_ledger('x')", 100)]


# --------------------------------------------------------------------------- topology history
def _phase(cat, world, workers, steps, states=None, ranks=None):
    """Simulated ranks of one phase (``dp_rank``/``dp_world``), each reading ``steps`` batches of 3
    after resuming from ``states`` (the list of every old rank's state, or one state per rank)."""
    logged, out = {}, {}
    for r in (range(world) if ranks is None else ranks):
        dl = MixDataLoader(MixDataset(SCHEDULE_SQL, catalog=cat, columns=("file", "row"), dp_rank=r, dp_world=world),
                           batch_size=3, num_workers=workers)
        if states is not None:
            dl.load_state_dict(json.loads(json.dumps(states if isinstance(states, list) else states[r])))
        first = dl.dataset._steps
        for i, b in zip(range(steps), dl):
            logged[(first + i, r)] = [[f, row] for f, row in zip(b["file"], b["row"])]
        out[r] = dl.state_dict()
    return logged, out


def test_topology_history_answers_each_step_with_its_topology(cat, tmp_path):
    """2 ranks x 2 workers, then an elastic resume on 3 ranks x 2 workers (from both old states),
    then 3 ranks x 1 worker (each rank from its own state): every step the loops took equals the
    ledger's, earlier steps answered with the topology that produced them."""
    log1, st1 = _phase(cat, 2, 2, 5)
    log2, st2 = _phase(cat, 3, 2, 4, states=[st1[0], st1[1]])
    log3, st3 = _phase(cat, 3, 1, 3, states=st2)
    tops = st3[1]["run"]["topologies"]
    assert [(t["step"], t["dp_world"], t["workers"]) for t in tops] == [(0, 2, 2), (5, 3, 2), (9, 3, 1)]
    assert {s["dp_rank"] for s in tops[1]["states"]} == {0, 1} and [s["dp_rank"] for s in tops[2]["states"]] == [1]
    path = tmp_path / "rank1.json"
    path.write_text(json.dumps(st3[1]))
    led = Ledger(path)
    got = _by_step(led.steps(0, 8))
    want = {**log1, **log2}
    assert {k: [[x["file"], x["row"]] for x in v] for k, v in got.items()} == want
    late = _by_step(led.steps(9, 11, ranks=[1]))
    assert {k: [[x["file"], x["row"]] for x in v] for k, v in late.items()} == {k: v for k, v in log3.items() if k[1] == 1}
    with pytest.raises(ProgrammingError, match="ask the ledger of rank 0 from that rank's checkpoint"):
        led.steps(9, 9, ranks=[0])
    # the inverse agrees with the steps, across the topologies
    scan: dict = {}
    for x in led.steps(0, 8).to_pylist() + led.steps(9, 60, ranks=[1]).to_pylist():
        scan.setdefault((x["file"], x["row"]), []).append((x["step"], x["rank"], x["sequence"]))
    consumed = {tuple(p) for b in want.values() for p in b}
    for f, r in sorted(consumed)[::7]:
        try:
            hits = [(x["step"], x["rank"], x["sequence"]) for x in led.sample(f, r).to_pylist()]
        except ProgrammingError:   # a later occurrence on rank 0 or 2 after the last change
            continue
        assert sorted(hits) == sorted(scan[(f, r)])
    # the same history through a resume that keeps the topology
    log4, st4 = _phase(cat, 3, 1, 2, states=st3, ranks=[1])
    assert st4[1]["run"]["topologies"] == tops


def test_schedule_mapped_by_the_loaders_batch_size(cat):
    """A SCHEDULE without SETTINGS (batch_size): the loader maps its steps with its own batch
    size (3 per rank x 2 ranks), and so does the ledger."""
    sql = SCHEDULE_SQL.replace(", batch_size = 6", "")
    logged = {}
    for r in range(2):
        dl = MixDataLoader(MixDataset(sql, catalog=cat, columns=("file", "row"), dp_rank=r, dp_world=2),
                           batch_size=3, num_workers=2)
        for s, b in zip(range(12), dl):
            logged[(s, r)] = [[f, row] for f, row in zip(b["file"], b["row"])]
        state = dl.state_dict()
    got = _by_step(Ledger(state).steps(0, 11))
    assert {k: [[x["file"], x["row"]] for x in v] for k, v in got.items()} == logged
    unmapped = {**state, "run": {**state["run"], "rank_batch_size": None}}
    got = _by_step(Ledger(unmapped).steps(0, 11))
    assert {k: [[x["file"], x["row"]] for x in v] for k, v in got.items()} != logged   # the mapping matters
