"""kill -9 in the middle of a registration transaction leaves the catalog exactly as before."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

from test_registration import dump, slim_dir, write_parquet_dir

from mixsql.catalog import Catalog
from mixsql.registration import create_source

CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from mixsql import registration
    from mixsql.catalog import Catalog

    real = registration._write

    def write_then_hang(*args, **kwargs):
        out = real(*args, **kwargs)          # rows, files and new columns are written ...
        Path(sys.argv[3]).write_text("inside")
        time.sleep(600)                      # ... and the process dies before COMMIT
        return out

    registration._write = write_then_hang
    registration.create_source(Catalog(sys.argv[1]), "pq", sys.argv[2], progress=False)
""")


def test_kill_9_mid_registration_keeps_catalog_intact(tmp_path):
    cat_dir = tmp_path / "cat"
    slim_dir(tmp_path / "s1", shards=1)
    with Catalog(cat_dir) as cat:
        create_source(cat, "s1", str(tmp_path / "s1"), options={"preset": "slimpajama"}, progress=False)
        before = dump(cat)
    write_parquet_dir(tmp_path / "pq")
    marker = tmp_path / "marker"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(cat_dir), str(tmp_path / "pq"), str(marker)])
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert child.poll() is None, "registration child exited early"
            assert time.monotonic() < deadline, "registration child never reached the write"
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(30)
    finally:
        if child.poll() is None:
            child.kill()
    with Catalog(cat_dir) as cat:  # reopening replays DuckDB's WAL: the open transaction is gone
        assert dump(cat) == before
        assert cat.source_names() == ["s1"]
        create_source(cat, "pq", str(tmp_path / "pq"), progress=False)  # and it still works
        assert cat.source_names() == ["pq", "s1"]
