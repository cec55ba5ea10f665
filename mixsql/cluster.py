"""Registration scans as Ray tasks: ``CREATE SOURCE ... WITH (engine = 'ray'[, ray_address = '...'])``.

Each file is one Ray task running the same per-file scanner as the local pool
(:func:`mixsql.formats.scan_file`, token counting included); the task returns its index part as
zstd-compressed Arrow IPC bytes, and the head collects the parts as they finish
(:func:`scan` yields ``(task index, result)`` in completion order), reports progress and commits
one catalog transaction exactly as a local registration does (mixsql.registration).

* ``ray_address``: ``None`` connects to ``RAY_ADDRESS``, else starts a new local Ray instance;
  ``'auto'`` connects to the cluster running on this node, ``'host:port'`` to that head. A process
  that already called ``ray.init`` is reused as it is (and left connected).
* A task whose worker or node dies is retried by Ray (``MAX_RETRIES`` times); a file that fails
  for good raises RegistrationError naming it, and the caller commits nothing.
* Tasks are spread over the nodes, at most ``WINDOW_PER_CPU`` per cluster CPU in flight.

Ray is an optional extra (``pip install 'mixsql[ray]'``); :func:`require_ray` says so.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

import pyarrow as pa

from . import formats
from .errors import RegistrationError

ENGINES = ("local", "ray")
MAX_RETRIES = 3          # Ray re-runs a task whose worker or node died this many times
WINDOW_PER_CPU = 2       # tasks in flight per cluster CPU: keeps every core busy, bounds the object store
INSTALL_HINT = "install it with: pip install 'mixsql[ray]' (on the head and on every node of the cluster)"

__all__ = ["ENGINES", "MAX_RETRIES", "require_ray", "connected", "scan", "encode_part", "decode_part"]


def require_ray():
    """The ``ray`` module, or a RegistrationError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise RegistrationError("engine = 'ray' needs the ray package, which is not installed",
                                hint=INSTALL_HINT) from None
    return ray


@contextmanager
def connected(address: str | None):
    """A Ray connection for one registration: the caller's if ``ray.init`` already ran, else a new
    one to ``address`` that is closed again afterwards."""
    ray = require_ray()
    if ray.is_initialized():
        yield ray
        return
    if not address:   # RAY_ADDRESS, else a new local instance (never "the latest cluster on this machine")
        address = None if os.environ.get("RAY_ADDRESS") else "local"
    kwargs = {"include_dashboard": False} if address == "local" else {}
    try:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise RegistrationError(f"cannot connect to the Ray cluster at {address or 'RAY_ADDRESS/local'} ({exc})",
                                hint="start one with `ray start --head`, or give ray_address = 'host:port' "
                                     "(or 'auto' on a node of the cluster)") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def encode_part(table: pa.Table | None) -> bytes | None:
    """An index part as compact Arrow IPC bytes (zstd-compressed buffers)."""
    if table is None:
        return None
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema, options=pa.ipc.IpcWriteOptions(compression="zstd")) as w:
        w.write_table(table)
    return sink.getvalue().to_pybytes()


def decode_part(data: bytes | None) -> pa.Table | None:
    if data is None:
        return None
    return pa.ipc.open_stream(pa.py_buffer(data)).read_all()


def scan_task(task: formats.ScanTask) -> dict:
    """Body of one Ray task: scan one file where the task runs; the table travels as IPC bytes."""
    import ray

    if task.tokenizer:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"   # one CPU per task
    res = formats.scan_file(task)
    res["table"] = encode_part(res["table"])
    res["node"] = ray.get_runtime_context().get_node_id()
    return res


def scan(tasks: list[formats.ScanTask], sizes: list[int], address: str | None) -> Iterator[tuple[int, dict]]:
    """Scan ``tasks`` (files of ``sizes`` bytes, the largest first) as Ray tasks; yield ``(index,
    result)`` as they finish (results as :func:`mixsql.formats.scan_file` returns them, plus
    ``node``: the Ray node id)."""
    if not tasks:
        return
    with connected(address) as ray:
        remote = ray.remote(scan_task).options(num_cpus=1, max_retries=MAX_RETRIES, retry_exceptions=False,
                                               scheduling_strategy="SPREAD", name="mixsql_scan")
        window = max(2, WINDOW_PER_CPU * int(ray.cluster_resources().get("CPU", 1)))
        todo = sorted(range(len(tasks)), key=lambda i: -sizes[i])[::-1]   # pop() takes the largest first
        pending: dict = {}
        try:
            while todo or pending:
                while todo and len(pending) < window:
                    i = todo.pop()
                    pending[remote.remote(tasks[i])] = i
                done, _ = ray.wait(list(pending), num_returns=1)
                i = pending.pop(done[0])
                yield i, _result(ray, done[0], tasks[i])
        finally:
            for ref in pending:
                ray.cancel(ref)


def _result(ray, ref, task: formats.ScanTask) -> dict:
    try:
        res = ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        raise RegistrationError(f"the scan task failed ({exc.cause!r})", path=task.path,
                                hint="a bug in the scanner or on that node; see the node's Ray logs") from None
    except ray.exceptions.RayError as exc:
        raise RegistrationError(
            f"the Ray task scanning this file failed {MAX_RETRIES + 1} times ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''})", path=task.path,
            hint="check the cluster's nodes (memory, crashes) and run the registration again") from None
    res["table"] = decode_part(res["table"])
    return res
