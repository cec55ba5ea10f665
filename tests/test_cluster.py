"""Registration as Ray tasks on a real two-node Ray cluster started on this machine: the same
catalog as the local pool, retries of a killed task, a corrupt file aborting with nothing changed."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import zstandard

import mixsql
from mixsql.catalog import Catalog
from mixsql.errors import RegistrationError
from mixsql.registration import create_source, refresh_source

import ray
import tokenizers  # noqa: F401 (a test dependency: fail, never skip, when missing)
from bench.ray_cluster import LocalCluster  # noqa: E402
from conftest import random_texts, train_bpe  # noqa: E402
from test_registration import dump  # noqa: E402

pytestmark = pytest.mark.xdist_group("ray")   # one cluster for the module, in one xdist worker
TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def cluster():
    with LocalCluster(nodes=2, env={"PYTHONPATH": str(TESTS)}) as c:   # ray_faults importable on nodes
        yield c


def _write_shard(path: Path, texts: list[str], first: int) -> None:
    blob = "".join(json.dumps({"text": t, "meta": {"lang": ["en", "de", "fr"][(first + i) % 3]},
                               "score": (first + i) / 1000}) + "\n" for i, t in enumerate(texts))
    path.write_bytes(zstandard.ZstdCompressor(level=1).compress(blob.encode()))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Six .jsonl.zst shards with two properties, and a small BPE tokenizer to count tokens with."""
    d = tmp_path_factory.mktemp("raycorpus")
    texts = random_texts(3, 1200, vocabulary=3000, max_words=300)
    (d / "data").mkdir()
    for k in range(6):
        _write_shard(d / "data" / f"part{k}.jsonl.zst", texts[k * 200:(k + 1) * 200], k * 200)
    train_bpe(texts[:200], d / "tokenizer.json", vocab_size=400)
    return d


def _options(corpus: Path, **extra) -> dict:
    return {"lang": "meta.lang", "score": "score", "tokenizer": str(corpus / "tokenizer.json"), **extra}


def _tables(cat: Catalog, root: Path) -> dict:
    """What a registration wrote (paths relative to ``root``, no timestamps): samples, files, sources."""
    prefix = str(root) + os.sep
    return {
        "samples": cat.con.sql("SELECT * REPLACE (replace(file, $1, '') AS file) FROM samples ORDER BY file, row",
                               params=[prefix]).to_arrow_table(),
        "files": cat.con.execute("SELECT * REPLACE (replace(path, ?, '') AS path) FROM files ORDER BY file_id",
                                 [prefix]).fetchall(),
        "sources": cat.con.sql("SELECT name, format, n_files, n_samples, n_bytes, n_tokens, properties "
                               "FROM sources").fetchall(),
    }


def _register_locally(cat_dir: Path, data: Path, corpus: Path) -> dict:
    with Catalog(cat_dir) as cat:
        create_source(cat, "web", str(data), options=_options(corpus), progress=False)
        return _tables(cat, data)


@pytest.fixture(scope="module")
def local(corpus, tmp_path_factory):
    """The corpus registered by the local process pool: what Ray must reproduce."""
    return _register_locally(tmp_path_factory.mktemp("localcat"), corpus / "data", corpus)


def test_ray_registration_equals_local_and_refresh_scans_only_changes(cluster, corpus, local, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(corpus / "data", data)
    cat_dir = tmp_path / "cat"
    with mixsql.connect(cat_dir) as con:
        cur = con.cursor()
        cur.execute(f"CREATE SOURCE web FROM '{data}' WITH (lang = 'meta.lang', score = 'score', "
                    f"tokenizer = '{corpus / 'tokenizer.json'}', engine = 'ray', ray_address = '{cluster.address}')")
        summary = dict(zip([d[0] for d in cur.description], cur.fetchone()))
        assert (summary["engine"], summary["files"]) == ("ray", 6) and summary["ray_nodes"] >= 1
        assert not ray.is_initialized()          # mixsql's own Ray connection is closed again
    with Catalog(cat_dir) as cat:
        got = _tables(cat, data)
    assert got["samples"].num_rows == 1200 and got["samples"].column("n_tokens").null_count == 0
    assert got == local

    # REFRESH on Ray through the CLI (--ray ADDRESS): one file changed, one new; only those two are scanned
    _write_shard(data / "part1.jsonl.zst", ["changed text"] * 5, 7)
    _write_shard(data / "part9.jsonl.zst", ["a new file"] * 3, 9)
    out = subprocess.run([sys.executable, "-m", "mixsql", "--catalog", str(cat_dir), "register", "web", str(data),
                          "--no-progress", "--ray", cluster.address], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "refreshed source web: 2 files" in out.stdout and "1 new files; 1 changed files" in out.stdout
    want = _register_locally(tmp_path / "localref", data, corpus)["samples"]
    with Catalog(cat_dir) as cat:
        assert _tables(cat, data)["samples"].drop_columns(["file_id"]) == want.drop_columns(["file_id"])


def test_killed_task_is_retried_and_result_unchanged(cluster, corpus, local, tmp_path):
    fault = tmp_path / "fault"
    fault.mkdir()
    ray.init(address=cluster.address, logging_level="WARNING", log_to_driver=False,
             runtime_env={"worker_process_setup_hook": "ray_faults.stall_first_scan",
                          "env_vars": {"MIXSQL_FAULT_DIR": str(fault)}})
    try:
        outcome: dict = {}

        def register():
            try:
                with Catalog(tmp_path / "cat") as cat:   # the caller's Ray connection is reused
                    outcome["summary"] = create_source(cat, "web", str(corpus / "data"),
                                                       options=_options(corpus, engine="ray"), progress=False)
                    outcome["tables"] = _tables(cat, corpus / "data")
            except BaseException as exc:  # reported by the assertions below
                outcome["error"] = exc

        t = threading.Thread(target=register)
        t.start()
        deadline = time.monotonic() + 120
        while not (fault / "claimed").exists():
            assert t.is_alive(), outcome.get("error")
            assert time.monotonic() < deadline, "no scan task started"
            time.sleep(0.05)
        pid, victim = (fault / "claimed").read_text().split()
        while len(_attempts(fault)) < 2:            # the stalled task holds its node's one CPU: the
            assert t.is_alive(), outcome.get("error")   # next scan runs on the other node
            assert time.monotonic() < deadline, "no second scan started"
            time.sleep(0.05)
        os.kill(int(pid), signal.SIGKILL)           # the worker dies mid-scan
        t.join(240)
        assert not t.is_alive() and "error" not in outcome, outcome.get("error")
    finally:
        ray.shutdown()
    attempts = _attempts(fault)
    assert [path for path, _ in attempts].count(victim) == 2   # the killed scan, and Ray's retry
    assert len({node for _, node in attempts}) == 2             # both nodes scanned
    assert outcome["summary"]["engine"] == "ray"
    assert outcome["tables"] == local


def _attempts(fault: Path) -> list[tuple[str, str]]:
    """(file, node id) of every scan started, from tests/ray_faults.py."""
    path = fault / "attempts"
    return [tuple(line.split()) for line in path.read_text().splitlines()] if path.exists() else []


def test_corrupt_file_aborts_with_file_and_line_and_changes_nothing(cluster, corpus, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for p in sorted((corpus / "data").glob("*.zst"))[:3]:
        (data / p.name).write_bytes(p.read_bytes())
    lines = [json.dumps({"text": f"doc {i}", "meta": {"lang": "en"}, "score": 0.5}) for i in range(20)]
    lines[12] = '{"text": "broken", "meta": {"lang": '
    (data / "bad.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(("\n".join(lines) + "\n").encode()))
    with Catalog(tmp_path / "cat") as cat:
        create_source(cat, "first", str(corpus / "data" / "part0.jsonl.zst"), progress=False)
        before = dump(cat)
        with pytest.raises(RegistrationError) as err:
            create_source(cat, "web", str(data), options=_options(corpus, engine="ray",
                                                                  ray_address=cluster.address), progress=False)
        assert dump(cat) == before
    assert err.value.path == str(data / "bad.jsonl.zst") and err.value.line == 13
    assert str(err.value).startswith(f"{data / 'bad.jsonl.zst'}:13: malformed JSON")


def test_without_ray_the_error_says_how_to_install(tmp_path, monkeypatch, corpus):
    monkeypatch.setitem(sys.modules, "ray", None)   # import ray -> ImportError
    with Catalog(tmp_path / "cat") as cat:
        with pytest.raises(RegistrationError, match=r"pip install 'mixsql\[ray\]'"):
            create_source(cat, "web", str(corpus / "data"), options={"engine": "ray"}, progress=False)
        assert cat.source_names() == []
        with pytest.raises(mixsql.ProgrammingError, match="engine must be 'local' or 'ray'"):
            create_source(cat, "web", str(corpus / "data"), options={"engine": "spark"}, progress=False)
