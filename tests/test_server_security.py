"""A hostile client against the real Flight server on 127.0.0.1: every attempt to read files,
reach the network, load extensions, change settings, attach databases, exhaust the server,
hijack another job or smuggle a second statement is refused with a mixsql error that carries
no data from outside the catalog, while a well-behaved job keeps streaming unchanged."""
from __future__ import annotations

import json
import threading
import uuid

import pyarrow.flight as flight
import pytest

from conftest import write_jsonl_catalog
from servers import Running
from mixsql import errors
from mixsql.server import MixServer

GOOD = "SELECT * FROM samples MIX BY kind WITH (a 0.5, b 0.5) SETTINGS (chunk_size = 10, seed = 2)"
BASE = "SELECT * FROM samples {clause} MIX BY kind WITH NATURAL SETTINGS (chunk_size = 10)"
TOKENS = ("token-of-team-a", "token-of-team-b")


@pytest.fixture(scope="module")
def secret(tmp_path_factory):
    """A file outside the catalog whose content must never reach a client."""
    marker = f"MIXSQL-SECRET-{uuid.uuid4().hex}"
    path = tmp_path_factory.mktemp("outside") / "secret.csv"
    path.write_text(f"{marker}\n{marker},1\n")
    return path, marker


def _catalog(path):
    recs = [{"text": f"{k} {i}", "kind": k} for k in "ab" for i in range(60)]
    return write_jsonl_catalog(path, recs, properties={"kind": "VARCHAR"}, rows_per_file=30)


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    return _catalog(tmp_path_factory.mktemp("sec") / "cat")


@pytest.fixture(scope="module")
def server(catalog):
    srv = Running(catalog, token=list(TOKENS), query_timeout=1.5)
    yield srv
    srv.stop()


def hostile_statements(path) -> list[str]:
    s = str(path)
    mix = BASE.format(clause="")
    return [
        # files
        f"SELECT * FROM samples MIX BY (SELECT string_agg(content, '') FROM read_text('{s}')) WITH NATURAL",
        BASE.format(clause=f"WHERE CAST((SELECT content FROM read_text('{s}')) AS INTEGER) = 1"),
        BASE.format(clause=f", read_csv('{s}') r"),
        BASE.format(clause=f", read_csv_auto('{s}') r"),
        BASE.format(clause=f"JOIN '{s}' p ON true"),
        BASE.format(clause=", '/etc/passwd' p"),
        BASE.format(clause="WHERE kind IN (SELECT file FROM glob('/etc/*'))"),
        BASE.format(clause=f", read_parquet('{s}') r"),
        BASE.format(clause=f", read_json('{s}') r"),
        BASE.format(clause=f", read_blob('{s}') r"),
        BASE.format(clause=f", sniff_csv('{s}') r"),
        BASE.format(clause=f", sqlite_scan('{s}', 't') r"),
        BASE.format(clause=f", LATERAL (SELECT * FROM read_text('{s}')) r"),
        f"WITH x AS (SELECT * FROM read_text('{s}')) SELECT * FROM samples, x MIX BY kind WITH NATURAL",
        BASE.format(clause=f"WHERE kind = (SELECT CAST(content AS INTEGER) FROM read_text('{s}'))"),
        # network
        BASE.format(clause=", read_parquet('http://127.0.0.1:9/x.parquet') r"),
        BASE.format(clause=", 'https://example.com/data.csv' r"),
        BASE.format(clause="WHERE kind = (SELECT content FROM read_text('http://127.0.0.1:9/'))"),
        # settings, catalogs, extensions
        BASE.format(clause=", duckdb_settings() st"),
        BASE.format(clause="WHERE current_setting('memory_limit') <> ''"),
        BASE.format(clause=", duckdb_extensions() e"),
        BASE.format(clause=", pragma_database_list() d"),
        BASE.format(clause=", query('SELECT 42') q"),
        BASE.format(clause=", query_table('files') q"),
        BASE.format(clause=", system.main.duckdb_tables t"),
        BASE.format(clause=", information_schema.tables t"),
        BASE.format(clause="WHERE getenv('HOME') IS NOT NULL"),
        "SET enable_external_access = true",
        "SET memory_limit = '100GB'",
        f"ATTACH '{s}' AS evil",
        "COPY (SELECT * FROM samples) TO '/tmp/mixsql_leak.csv'",
        "EXPORT DATABASE '/tmp/mixsql_export'",
        "INSTALL httpfs",
        "LOAD httpfs",
        "PRAGMA enable_profiling",
        "CREATE TABLE stolen AS SELECT 1",
        "EXPLAIN MIX " + mix,
        # a second statement
        mix + "; INSTALL httpfs",
        mix + "; LOAD httpfs",
        mix + "; SET enable_external_access = true",
        mix + f"; ATTACH '{s}' AS evil",
        mix + "; COPY samples TO '/tmp/mixsql_leak.csv'",
        mix + f"; SELECT * FROM read_text('{s}')",
        # CPU and memory
        BASE.format(clause="WHERE (SELECT count(*) FROM samples a, samples b, samples c, samples d, samples e) > 0"),
        BASE.format(clause=", range(1000000000000) r"),
        BASE.format(clause=", generate_series(1, 1000000000000) g"),
        BASE.format(clause="WHERE kind <> '" + "x" * 20000 + "'"),
    ]


def _refused(fn, marker) -> str | None:
    """None when ``fn`` raised a mixsql error free of ``marker``; else what went wrong."""
    try:
        fn()
    except errors.Error as exc:
        return f"leaked: {exc}" if marker in str(exc) else None
    except Exception as exc:  # noqa: BLE001 - reported as a failure below
        return f"not a mixsql error: {type(exc).__name__}: {exc}"
    return "accepted"


class WellBehaved(threading.Thread):
    """A job streaming its chunks again and again while the hostile client works."""

    def __init__(self, client, job, expected):
        super().__init__(daemon=True)
        self.client, self.job, self.expected = client, job, expected
        self.stop, self.rounds, self.problems = threading.Event(), 0, []

    def run(self):
        while not self.stop.is_set():
            for k, want in enumerate(self.expected):
                got = self.client.get_chunk(self.job, k, rank=0)
                if not got.equals(want):
                    self.problems.append(k)
            self.rounds += 1


def test_hostile_statements_are_refused_without_leaking(server, secret):
    path, marker = secret
    good = server.client(TOKENS[0])
    job = good.register_job(GOOD)
    expected = []
    while (t := good.get_chunk(job, len(expected))) is not None:
        expected.append(t)
    reader = WellBehaved(server.client(TOKENS[0]), job, expected)
    reader.start()
    evil = server.client(TOKENS[1])
    statements = hostile_statements(path)
    assert len(statements) >= 30
    outcome = {sql[:120]: _refused(lambda sql=sql: evil.register_job(sql), marker) for sql in statements}
    reader.stop.set()
    reader.join(30)
    assert {k: v for k, v in outcome.items() if v is not None} == {}
    assert reader.rounds >= 1 and reader.problems == []
    assert good.ping() and good.job_info(job)["weights"] == [0.5, 0.5]
    assert [good.get_chunk(job, k) for k in range(len(expected))] == expected


def test_refusals_say_what_is_not_allowed(server, secret):
    path, _ = secret
    c = server.client(TOKENS[0])
    cases = {
        BASE.format(clause=f", read_csv('{path}') r"): "table functions are not available",
        BASE.format(clause=", '/etc/passwd' p"): "unknown table '/etc/passwd'",
        BASE.format(clause="WHERE current_setting('threads') > 0"): r"current_setting\(\) is not available",
        BASE.format(clause=", system.main.duckdb_tables t"): "without a schema",
        "SET memory_limit = '1TB'": "MIX statements only",
        BASE.format(clause="") + "; INSTALL httpfs": "one statement at a time",
        BASE.format(clause="WHERE (SELECT count(*) FROM samples a, samples b, samples c, samples d, samples e) > 0"):
            "query time limit",
        BASE.format(clause="WHERE kind <> '" + "x" * 20000 + "'"): "at most 16384",
    }
    for sql, message in cases.items():
        with pytest.raises(errors.Error, match=message):
            c.register_job(sql)


def test_statement_bound_is_a_server_setting(catalog):
    """A long statement (a mixture listing many groups) is refused by default with the flag to
    raise, and served by a server started with a larger bound."""
    many = GOOD.replace("FROM samples", "FROM samples WHERE kind <> '" + "x" * 20000 + "'")
    small = Running(catalog, token=TOKENS[0])
    try:
        with pytest.raises(errors.Error, match="--max-statement-bytes"):
            small.client(TOKENS[0]).register_job(many)
    finally:
        small.stop()
    big = Running(catalog, token=TOKENS[0], max_statement_bytes=64 << 10)
    try:
        c = big.client(TOKENS[0])
        assert c.get_chunk(c.register_job(many), 0).num_rows == 10
    finally:
        big.stop()


def test_the_manager_is_not_blocked_while_a_statement_plans(server, monkeypatch):
    """One registration held inside planning (after its sandbox opened) does not stop other
    registrations, chunks or job info: the manager lock is not held while DuckDB plans."""
    from mixsql.sandbox import Sandbox

    entered, release = threading.Event(), threading.Event()
    real = Sandbox.open_stream

    def held(self, statement, params=None):
        if "seed = 99" in statement:
            entered.set()
            release.wait(60)
        return real(self, statement, params)

    monkeypatch.setattr(Sandbox, "open_stream", held)
    c = server.client(TOKENS[0])
    job = c.register_job(GOOD)
    slow = threading.Thread(target=c.register_job, args=(GOOD.replace("seed = 2", "seed = 99"),))
    slow.start()
    try:
        assert entered.wait(30)
        other = c.register_job(GOOD.replace("seed = 2", "seed = 8"))   # plans in the second slot
        assert c.job_info(job)["job"] == job and c.get_chunk(other, 0).num_rows == 10
        assert slow.is_alive()                                           # still planning
    finally:
        release.set()
        slow.join(30)


def test_bounds_on_topology_window_and_requests(server):
    c = server.client(TOKENS[0])
    for top, message in (({"dp_world": 10 ** 9}, "dp_world = 1000000000 is above"),
                         ({"num_workers": 10 ** 6}, "num_workers = 1000000 is above"),
                         ({"dp_world": 2, "replicas": 10 ** 9}, "unknown topology field"),
                         ({"dp_world": True}, "positive integer")):
        with pytest.raises(errors.ProgrammingError, match=message):
            c.register_job(GOOD, topology=top)
    endless = c.register_job(GOOD.replace("seed = 2", "seed = 3, on_exhausted = 'repeat'"))
    with pytest.raises(errors.ProgrammingError, match="beyond the largest chunk index"):
        c.get_chunk(endless, 10 ** 15)
    job = c.register_job(GOOD)
    with pytest.raises(errors.ProgrammingError, match="finite numbers"):
        c.action("feedback", {"job": job, "step": 0, "loss_sums": [float("nan"), 1.0], "token_counts": [1, 1]})
    raw = flight.FlightClient(server.location)
    auth = flight.FlightCallOptions(headers=[(b"authorization", f"Bearer {TOKENS[0]}".encode())])
    with pytest.raises(flight.FlightServerError, match="larger than this server's limit"):
        list(raw.do_action(flight.Action("job_info", b'{"job": "' + b"a" * (9 << 20) + b'"}'), auth))
    with pytest.raises(flight.FlightServerError, match="larger than this server's limit"):
        raw.do_get(flight.Ticket(json.dumps({"job": job, "pad": "x" * 5000}).encode()), auth).read_all()
    assert c.get_chunk(job, 0).num_rows == 10


def test_topology_is_fixed_and_jobs_are_private_to_their_token(server):
    a, b = server.client(TOKENS[0]), server.client(TOKENS[1])
    sql = GOOD.replace("seed = 2", "seed = 6")
    job = a.register_job(sql, topology={"dp_world": 2, "num_workers": 1})
    resized = a.register_job(sql, topology={"dp_world": 4, "num_workers": 1})
    assert resized != job                                             # another topology: another job
    assert a.job_info(job)["topology"] == {"dp_world": 2, "num_workers": 1}
    with pytest.raises(errors.ProgrammingError, match="belongs to dp_rank 1"):
        a.get_chunk(job, 1, rank=0, worker=0)                         # still the 2-rank ownership
    assert b.register_job(sql, topology={"dp_world": 2, "num_workers": 1}) != job
    for hijack in (lambda: b.job_info(job), lambda: b.get_chunk(job, 0), lambda: b.checkpoint(job),
                   lambda: b.feedback(job, 0, [1, 1], [1, 1]), lambda: b.restore(job, a.checkpoint(job)),
                   lambda: b.drop_job(job), lambda: b.files(job)):
        with pytest.raises(errors.ProgrammingError, match=f"unknown job '{job}'"):
            hijack()
    with pytest.raises(errors.OperationalError, match="rejected the token"):
        server.client("a-guessed-token").job_info(job)
    assert a.get_chunk(job, 0).num_rows == 10


def test_job_limits_and_private_job_files(tmp_path):
    catalog = _catalog(tmp_path / "cat")
    srv = Running(catalog, token=list(TOKENS), max_jobs_per_token=2, max_jobs=3)
    try:
        a, b = srv.client(TOKENS[0]), srv.client(TOKENS[1])
        jobs = [a.register_job(GOOD.replace("seed = 2", f"seed = {s}")) for s in (11, 12)]
        assert a.register_job(GOOD.replace("seed = 2", "seed = 11")) == jobs[0]   # the same job again
        with pytest.raises(errors.ProgrammingError, match="this token holds 2 jobs"):
            a.register_job(GOOD.replace("seed = 2", "seed = 13"))
        b.register_job(GOOD.replace("seed = 2", "seed = 14"))
        with pytest.raises(errors.ProgrammingError, match="this server holds 3 jobs"):
            b.register_job(GOOD.replace("seed = 2", "seed = 15"))
        a.drop_job(jobs[0])
        a.register_job(GOOD.replace("seed = 2", "seed = 13"))
        jobs_dir = catalog / "jobs"
        assert jobs_dir.stat().st_mode & 0o777 == 0o700
        assert {p.stat().st_mode & 0o777 for p in jobs_dir.iterdir()} == {0o600}
    finally:
        srv.stop()


def test_off_loopback_needs_tls_and_a_token(catalog):
    with pytest.raises(errors.InterfaceError, match=r"needs TLS .* and a token"):
        MixServer(catalog, "0.0.0.0", 0)
    with pytest.raises(errors.InterfaceError, match=r"needs TLS"):
        MixServer(catalog, "0.0.0.0", 0, token="t")


def test_duckdb_refuses_outside_access_even_without_the_statement_check(catalog, secret):
    """The second layer alone: the sandboxed connection itself cannot reach files, the network,
    extensions or its own configuration."""
    import duckdb

    from mixsql.sandbox import Sandbox

    path, marker = secret
    with Sandbox(catalog) as box:
        assert box.con.execute("SELECT count(*) FROM samples").fetchone() == (120,)
        for sql in (f"SELECT * FROM read_text('{path}')", f"SELECT * FROM read_csv('{path}')",
                    "SELECT * FROM glob('/etc/*')", "SELECT * FROM read_csv('http://127.0.0.1:9/x.csv')",
                    f"ATTACH '{path}' AS evil", "COPY samples TO '/tmp/mixsql_leak.csv'", "INSTALL httpfs",
                    "LOAD httpfs", "SET enable_external_access = true", "SET lock_configuration = false",
                    "SET memory_limit = '100GB'"):
            with pytest.raises(duckdb.Error) as info:
                box.con.execute(sql).fetchall()
            assert marker not in str(info.value)


def test_feedback_lag_must_leave_the_reporting_step_behind(catalog):
    with pytest.raises(errors.InterfaceError, match="feedback_lag must be an integer >= 1"):
        MixServer(catalog, "127.0.0.1", 0, feedback_lag=0)
