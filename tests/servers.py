"""Real mixsql servers for tests, on 127.0.0.1: in a thread of the test process, or a
subprocess (for kill -9)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

from mixsql.client import MixClient
from mixsql.server import MixServer

REPO = Path(__file__).resolve().parents[1]


class Running:
    """A MixServer serving in a daemon thread; ``stop()`` shuts it down."""

    def __init__(self, catalog, **kw):
        self.server = MixServer(catalog, "127.0.0.1", 0, **kw)
        self.thread = threading.Thread(target=self.server.serve, daemon=True)
        self.thread.start()
        self.location = self.server.location

    def client(self, token=None, **kw) -> MixClient:
        return MixClient(self.location, token=token, retry_for=5, **kw)

    def stop(self):
        self.server.shutdown()
        self.thread.join(10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server_process(catalog, port) -> subprocess.Popen:
    """``python -m mixsql.server CATALOG PORT``, returned once it listens."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "mixsql.server", str(catalog), str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert "listening on" in line, proc.stderr.read()
    return proc
