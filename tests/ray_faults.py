"""Fault injection for tests/test_cluster.py, run inside Ray workers as a ``worker_process_setup_hook``
(the test cluster's nodes have this directory on their PYTHONPATH)."""
from __future__ import annotations

import os
import time
from pathlib import Path


def stall_first_scan() -> None:
    """The first scan of the job records its worker's pid in ``$MIXSQL_FAULT_DIR/claimed`` and
    sleeps (the test kills that worker there); every scan appends its file and node to ``attempts``."""
    import ray

    import mixsql.formats as formats

    real = formats.scan_file
    fault_dir = Path(os.environ["MIXSQL_FAULT_DIR"])

    def scan_file(task):
        with open(fault_dir / "attempts", "a") as fh:
            fh.write(f"{task.path} {ray.get_runtime_context().get_node_id()}\n")
        mine = fault_dir / f"claim.{os.getpid()}"
        mine.write_text(f"{os.getpid()}\n{task.path}\n")
        try:
            os.link(mine, fault_dir / "claimed")   # atomic: one scan only, content complete
        except FileExistsError:
            return real(task)
        time.sleep(300)
        raise AssertionError("the test should have killed this worker")

    formats.scan_file = scan_file
