"""A real two-node Ray cluster on this machine for tests and bench: ``ray start --head`` plus
``ray start --address`` processes, each with one CPU, its own temp dir, free ports and custom
resources; stopped by their pids (never ``ray stop``, which would stop other users' clusters)."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

START_TIMEOUT = 120
START_ATTEMPTS = 3
_PORT_FLAGS = ("--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
               "--dashboard-agent-grpc-port", "--runtime-env-agent-port", "--metrics-export-port",
               "--dashboard-port")


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class NodeExited(RuntimeError):
    def __init__(self, index: int, message: str):
        super().__init__(message)
        self.index = index


class LocalCluster:
    """``LocalCluster(nodes=2, env=...)``: a head and ``nodes - 1`` workers (``add_node()`` adds
    one); ``address`` to connect; ``stop()`` ends every process the nodes started. ``env`` is the nodes' environment (Ray
    workers inherit it, e.g. a PYTHONPATH for setup hooks)."""

    def __init__(self, nodes: int = 2, env: dict | None = None, cpus_per_node: int = 1):
        self.ray = str(Path(sys.executable).with_name("ray"))
        self.env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", **(env or {})}
        self.env.pop("RAY_ADDRESS", None)
        self.cpus = cpus_per_node
        self.procs: list[subprocess.Popen] = []
        self.dirs: list[str] = []
        self.address = ""
        try:
            self._node(lambda: ["--head", "--port", self._new_address(), "--include-dashboard", "false"])
            for _ in range(1, nodes):
                self.add_node()
        except BaseException:
            self.stop()
            raise

    @property
    def nodes(self) -> int:
        return len(self.procs)

    def add_node(self) -> None:
        """One more worker node (resource ``node<k>``); returns once the cluster counts it."""
        k = self.nodes
        self._node(lambda: ["--address", self.address, "--resources", f'{{"node{k}": 1}}'])

    def _new_address(self) -> str:
        port, = free_ports(1)
        self.address = f"127.0.0.1:{port}"
        return str(port)

    def _node(self, args_of) -> None:
        """Start a node (``ray start`` with ``args_of()``) and wait until the cluster counts it.
        ``ray start`` gives a node 30 s to register and then exits: on a loaded machine, retry."""
        for attempt in range(START_ATTEMPTS):
            self._start(args_of())
            try:
                self._wait(self.nodes)
                return
            except NodeExited as exc:
                if attempt == START_ATTEMPTS - 1 or exc.index != self.nodes - 1:
                    raise
                self._kill(self.procs.pop())
                shutil.rmtree(self.dirs.pop(), ignore_errors=True)

    def _start(self, args: list[str]) -> None:
        tmp = tempfile.mkdtemp(prefix="mxray", dir="/tmp")   # short: Ray's socket paths live below it
        self.dirs.append(tmp)
        ports = [str(p) for pair in zip(_PORT_FLAGS, free_ports(len(_PORT_FLAGS))) for p in pair]
        cmd = [self.ray, "start", *args, "--num-cpus", str(self.cpus), "--object-store-memory", str(96 << 20),
               "--temp-dir", tmp, "--disable-usage-stats", "--node-ip-address", "127.0.0.1", *ports, "--block"]
        log = open(os.path.join(tmp, "ray_start.log"), "w")
        self.procs.append(subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                           stdin=subprocess.DEVNULL, start_new_session=True))
        log.close()

    def _log(self, k: int) -> str:
        return Path(self.dirs[k], "ray_start.log").read_text(errors="replace")[-3000:]

    def _wait(self, nodes: int) -> None:
        """Until the cluster counts ``nodes`` alive nodes (asked through the GCS with ``ray status``)."""
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            for k, p in enumerate(self.procs):
                if p.poll() is not None:
                    raise NodeExited(k, f"ray start exited with {p.returncode}:\n{self._log(k)}")
            try:
                out = subprocess.run([self.ray, "status", "--address", self.address], env=self.env,
                                     capture_output=True, text=True, timeout=30).stdout
            except subprocess.TimeoutExpired:
                out = ""
            if out.count(" node_") >= nodes:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Ray cluster did not reach {nodes} nodes:\n{out}\n{self._log(0)}")
            time.sleep(0.5)

    def stop(self) -> None:
        """SIGTERM each ``ray start --block`` (it stops the processes of its node), then SIGKILL
        whatever is left in its process group."""
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(self.procs):
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                pass
            self._kill(p)
        self.procs.clear()
        for d in self.dirs:
            shutil.rmtree(d, ignore_errors=True)
        self.dirs.clear()

    @staticmethod
    def _kill(p: subprocess.Popen) -> None:
        """SIGKILL what is left of one node: its ``ray start`` process group (its own session)."""
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        p.wait(10)

    def __enter__(self) -> "LocalCluster":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
