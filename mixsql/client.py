"""Client of the mixsql Flight server (see :mod:`mixsql.server` for the protocol).

``MixClient`` is thread-safe (one gRPC channel; share one client between threads). Every
call is idempotent on the server (registration by content, chunks by index, feedback by
step), so when the server is unreachable (restarting after a crash) calls reconnect and
retry for up to ``retry_for`` seconds before raising :class:`mixsql.OperationalError`.
Server-side errors are re-raised as the mixsql error class the server named. Until the server
has answered once, a client gives up after ``connect_timeout`` seconds (default 10) with an
error naming the address (a wrong host or port, or no server there); ``mixsql ping URL`` is
the same check from the command line.

A chunk of a feedback-driven job that waits for an earlier step's feedback
(``[mixsql:FeedbackPending]``) is requested again until it is ready, for up to
``feedback_wait`` seconds: the training loop's ``feedback()`` calls release it.
"""
from __future__ import annotations

import json
import os
import re
import threading
import time
from typing import Any, Sequence

import pyarrow as pa
import pyarrow.flight as flight

from . import errors

_ERR = re.compile(r"\[mixsql:(\w+)\] (.*?)(?:\. Detail: .*)?$", re.S)
_PENDING = "[mixsql:FeedbackPending]"


def _raise_mapped(exc: flight.FlightError) -> None:
    msg = str(exc)
    m = _ERR.search(msg)
    if m:
        cls = getattr(errors, m.group(1), None)
        if isinstance(cls, type) and issubclass(cls, errors.Error):
            text = m.group(2)
            try:
                err = cls(text)
            except TypeError:  # classes with structured constructors (StaleFileError)
                err = cls.__new__(cls)
                Exception.__init__(err, text)
            raise err from None
    raise exc


class _Pending(Exception):
    """The requested chunk waits for feedback (internal: get_chunk retries)."""


def normalise_location(location: str) -> str:
    if "://" not in location:
        location = f"grpc://{location}"
    return location


class MixClient:
    """Connection to ``mixsql serve``. ``location``: ``grpc://host:port`` (or ``grpc+tls://``)."""

    def __init__(self, location: str, token: str | None = None, *, token_file: str | os.PathLike | None = None,
                 tls_root_certs: bytes | str | None = None, retry_for: float = 60.0,
                 timeout: float | None = 120.0, feedback_wait: float = 600.0, connect_timeout: float = 10.0):
        self.location = normalise_location(location)
        if token is None and token_file is not None:
            with open(token_file) as f:
                token = next((ln.strip() for ln in f if ln.strip() and not ln.lstrip().startswith("#")), None)
        self.token = token if token is not None else os.environ.get("MIXSQL_TOKEN")
        self.feedback_wait = feedback_wait
        if isinstance(tls_root_certs, str) and os.path.exists(tls_root_certs):
            with open(tls_root_certs, "rb") as f:
                tls_root_certs = f.read()
        self._tls = tls_root_certs
        self.retry_for = retry_for
        self.connect_timeout = connect_timeout
        self._reached = False   # the server answered once: from then on, outages are restarts (retry_for)
        headers = [(b"authorization", f"Bearer {self.token}".encode())] if self.token else []
        self._options = flight.FlightCallOptions(headers=headers, timeout=timeout)
        self._lock = threading.Lock()
        self._client: flight.FlightClient | None = None
        self._connect()

    def _connect(self) -> flight.FlightClient:
        with self._lock:
            if self._client is None:
                kw = {"tls_root_certs": self._tls} if self._tls else {}
                self._client = flight.FlightClient(self.location, **kw)
            return self._client

    def _reconnect(self) -> None:
        with self._lock:
            old, self._client = self._client, None
        if old is not None:
            try:
                old.close()
            except Exception:
                pass

    def _call(self, fn, pending_ok: bool = False):
        start = time.monotonic()
        delay = 0.05
        tries = 0
        while True:
            client = self._connect()
            tries += 1
            try:
                result = fn(client)
                self._reached = True
                return result
            except flight.FlightUnavailableError as exc:
                limit = self.retry_for if self._reached else min(self.retry_for, self.connect_timeout)
                if time.monotonic() - start >= limit:
                    raise self._unreachable(exc, tries, time.monotonic() - start) from None
                self._reconnect()
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
            except flight.FlightUnauthenticatedError as exc:
                raise errors.OperationalError(
                    f"mixsql server at {self.location} rejected the token: {exc}"
                ) from None
            except flight.FlightError as exc:
                if pending_ok and _PENDING in str(exc):
                    raise _Pending(str(exc).split(_PENDING, 1)[1].split(". Detail:")[0].strip()) from None
                _raise_mapped(exc)

    def _unreachable(self, exc: Exception, tries: int, seconds: float) -> errors.OperationalError:
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        if self._reached:
            return errors.OperationalError(
                f"mixsql server at {self.location} unreachable for {seconds:.0f} s: {reason}")
        return errors.OperationalError(
            f"cannot reach a mixsql server at {self.location} ({tries} tries in {seconds:.0f} s: {reason}). "
            f"Is `mixsql serve` running there, and are the host and port right? "
            f"`mixsql ping {self.location}` checks.")

    def action(self, kind: str, body: dict | None = None) -> Any:
        payload = json.dumps(body or {}).encode()

        def run(client):
            results = list(client.do_action(flight.Action(kind, payload), self._options))
            return json.loads(results[0].body.to_pybytes()) if results else None

        return self._call(run)

    # -- public API -----------------------------------------------------------------------
    def ping(self) -> bool:
        return bool(self.action("ping")["ok"])

    def register(self, sql: str, params: Any = None, topology: dict | None = None) -> dict:
        """Register a MIX statement; returns {job, groups, weights, spec, chunk_size, unit, topology}."""
        return self.action("register_job", {"sql": sql, "params": params, "topology": topology})

    def register_job(self, sql: str, params: Any = None, topology: dict | None = None) -> str:
        """Register a MIX statement and return its job id (the same on every rank)."""
        return self.register(sql, params, topology)["job"]

    def get_chunk(self, job: str, chunk: int, rank: int | None = None, worker: int | None = None) -> pa.Table | None:
        """Chunk ``chunk`` of ``job`` as an Arrow table; None when the stream has ended."""
        req: dict[str, Any] = {"job": job, "chunk": chunk}
        if rank is not None:
            req["rank"] = rank
        if worker is not None:
            req["worker"] = worker
        ticket = flight.Ticket(json.dumps(req).encode())
        deadline = time.monotonic() + self.feedback_wait
        while True:
            try:
                table = self._call(lambda c: c.do_get(ticket, self._options).read_all(), pending_ok=True)
                break
            except _Pending as exc:
                if time.monotonic() >= deadline:
                    raise errors.OperationalError(
                        f"{exc} -- still waiting after {self.feedback_wait:.0f} s: does the training loop "
                        "call feedback() every step? If it does, the loaders read further ahead than the server's "
                        "--feedback-lag allows (DataLoader workers x prefetch): raise it") from None
                time.sleep(0.02)
        md = table.schema.metadata or {}
        if md.get(b"mixsql.end") == b"true":
            return None
        return table

    def feedback(self, job: str, step: int, loss_sums: Sequence[float], token_counts: Sequence[float]) -> dict:
        """Report one training step's per-group loss sums and token counts (all-reduced)."""
        return self.action("feedback", {"job": job, "step": int(step),
                                        "loss_sums": [float(x) for x in loss_sums],
                                        "token_counts": [float(x) for x in token_counts]})

    def files(self, job: str) -> pa.Table:
        """The job's files table (paths, formats, options, fingerprints): what a reader needs."""
        ticket = flight.Ticket(json.dumps({"job": job, "files": True}).encode())
        return self._call(lambda c: c.do_get(ticket, self._options).read_all())

    def drop_job(self, job: str) -> dict:
        """Delete the job and its files on the server (frees one of the token's job slots)."""
        return self.action("drop_job", {"job": job})

    def checkpoint(self, job: str) -> dict:
        return self.action("checkpoint", {"job": job})

    def restore(self, job: str, state: dict) -> dict:
        return self.action("restore", {"job": job, "state": state})

    def job_info(self, job: str) -> dict:
        return self.action("job_info", {"job": job})

    def ledger(self, job: str) -> dict:
        """Statement, catalog snapshot, stream fingerprint and whole weight history of ``job``
        (what :mod:`mixsql.ledger` recomputes a server-mode run from)."""
        return self.action("ledger", {"job": job})

    def close(self) -> None:
        self._reconnect()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
