"""Client connection: a dead address fails within seconds naming it; ``mixsql ping``."""
from __future__ import annotations

import time

import pytest

from mixsql import OperationalError, cli
from mixsql.client import MixClient

from conftest import write_jsonl_catalog
from servers import Running, free_port


def test_dead_address_fails_fast_naming_it():
    url = f"grpc://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    with pytest.raises(OperationalError, match="cannot reach a mixsql server at " + url) as info:
        MixClient(url, connect_timeout=1.5).ping()
    assert time.monotonic() - t0 < 10
    assert "mixsql ping" in str(info.value)


def test_ping_command(capsys, tmp_path):
    dead = f"grpc://127.0.0.1:{free_port()}"
    code = cli.main(["ping", dead, "--timeout", "1"])
    out, err = capsys.readouterr()
    assert code == 1 and err.startswith(f"mixsql: cannot reach a mixsql server at {dead}") and "Traceback" not in err
    catalog = write_jsonl_catalog(tmp_path / "cat", [{"text": "a"}])
    srv = Running(catalog)
    try:
        code = cli.main(["ping", srv.location])
        out, err = capsys.readouterr()
        assert code == 0, err
        assert out.startswith(f"mixsql server at {srv.location} answered in ")
    finally:
        srv.stop()
