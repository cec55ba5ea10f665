"""The mixsql Arrow Flight server: one place executes a MIX statement, many ranks pull chunks.

Wire protocol (JSON bodies only; nothing is ever unpickled or executed):

``do_action`` (body: a JSON object, result: one JSON object)
    ``register_job``  {sql, params?, topology?: {dp_world, num_workers}} -> {job, groups, weights, spec, ...}
                      Same statement + params + catalog snapshot -> same job id on every rank.
    ``feedback``      {job, step, loss_sums: [..], token_counts: [..]} -> {step, weights, at_chunk, duplicate}
    ``checkpoint``    {job} -> the job's state (JSON)
    ``restore``       {job, state} -> {job}
    ``job_info``      {job} -> weights, weight log, frontier, per-rank consumption
    ``ping``          {} -> {ok: true}
``do_get`` (ticket: JSON {job, chunk, rank?, worker?})
    Chunk ``chunk`` as Arrow record batches (the engine's chunk table). Past the end of the
    stream: an empty stream whose schema metadata has ``mixsql.end = "true"``. With
    ``rank`` and ``worker`` the server checks that the chunk belongs to that rank and worker
    under the job's topology (``topology.owner``); ``rank`` records the rank's consumption.

Errors reach clients as ``FlightServerError("[mixsql:<ErrorClass>] message")`` (the client
re-raises the mixsql error class); a wrong or missing token is ``FlightUnauthenticatedError``.
Authentication: ``authorization: Bearer <token>`` checked by a server middleware; required by
default when the host is not loopback (token from ``token=``, ``$MIXSQL_TOKEN`` or generated
and printed). TLS when ``tls_cert``/``tls_key`` are given.
"""
from __future__ import annotations

import hmac
import ipaddress
import json
import os
import secrets
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.flight as flight

from . import errors
from .jobs import JobManager

ACTIONS = {
    "register_job": "register a MIX statement: {sql, params?, topology?} -> {job, ...}",
    "feedback": "per-group losses of one training step: {job, step, loss_sums, token_counts}",
    "checkpoint": "the job's resumable state: {job} -> state",
    "restore": "reset a job to a checkpoint: {job, state}",
    "job_info": "weights, weight log, frontier and consumption of a job: {job}",
    "ping": "liveness check: {} -> {ok: true}",
}
END_SCHEMA = pa.schema([], metadata={"mixsql.end": "true"})
MAX_BODY = 64 << 20


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class _AuthMiddleware(flight.ServerMiddleware):
    pass


class BearerAuthFactory(flight.ServerMiddlewareFactory):
    """Rejects every call whose ``authorization`` header is not ``Bearer <token>``."""

    def __init__(self, token: str):
        super().__init__()
        self._expected = f"Bearer {token}".encode()

    def start_call(self, info, headers):
        values = headers.get("authorization") or headers.get("Authorization") or []
        for v in values:
            got = v if isinstance(v, bytes) else str(v).encode()
            if hmac.compare_digest(got, self._expected):
                return _AuthMiddleware()
        raise flight.FlightUnauthenticatedError(
            "mixsql: missing or wrong token; pass MixClient(location, token=...) or set MIXSQL_TOKEN "
            "to the token the server was started with"
        )


def _error(exc: BaseException) -> flight.FlightServerError:
    if isinstance(exc, errors.Error):
        cls = type(exc).__name__
        if not hasattr(errors, cls):
            cls = next(c.__name__ for c in type(exc).__mro__ if hasattr(errors, c.__name__))
        return flight.FlightServerError(f"[mixsql:{cls}] {exc}")
    return flight.FlightServerError(f"[mixsql:InternalError] {type(exc).__name__}: {exc}")


def _parse(body: bytes, what: str) -> dict:
    if len(body) > MAX_BODY:
        raise errors.InterfaceError(f"{what}: body larger than {MAX_BODY} bytes")
    try:
        obj = json.loads(body.decode("utf-8")) if body else {}
    except (UnicodeDecodeError, ValueError) as exc:
        raise errors.InterfaceError(f"{what}: body must be a JSON object ({exc})") from None
    if not isinstance(obj, dict):
        raise errors.InterfaceError(f"{what}: body must be a JSON object, got {type(obj).__name__}")
    return obj


class MixServer(flight.FlightServerBase):
    """Flight server over one catalog. ``location`` is where clients connect."""

    def __init__(self, catalog: str | os.PathLike, host: str = "127.0.0.1", port: int = 0,
                 token: str | None = None, tls_cert: str | os.PathLike | None = None,
                 tls_key: str | os.PathLike | None = None, **job_options: Any):
        if (tls_cert is None) != (tls_key is None):
            raise errors.InterfaceError("TLS needs both a certificate (tls_cert) and a key (tls_key)")
        scheme = "grpc+tls" if tls_cert else "grpc+tcp"
        kwargs: dict[str, Any] = {}
        if tls_cert:
            kwargs["tls_certificates"] = [flight.CertKeyPair(Path(tls_cert).read_bytes(), Path(tls_key).read_bytes())]
        if token:
            kwargs["middleware"] = {"auth": BearerAuthFactory(token)}
        self.token = token
        self.jobs = JobManager(catalog, **job_options)
        bind = f"[{host}]" if ":" in host else host
        super().__init__(f"{scheme}://{bind}:{port}", **kwargs)
        shown = "localhost" if tls_cert and is_loopback(host) else bind
        self.location = f"{'grpc+tls' if tls_cert else 'grpc'}://{shown}:{self.port}"

    # -- actions --------------------------------------------------------------------------
    def list_actions(self, context):
        return list(ACTIONS.items())

    def do_action(self, context, action):
        try:
            kind = action.type
            if kind not in ACTIONS:
                raise errors.InterfaceError(f"unknown action {kind!r}; known: {', '.join(ACTIONS)}")
            body = _parse(action.body.to_pybytes() if action.body is not None else b"", kind)
            result = getattr(self, f"_act_{kind}")(body)
        except flight.FlightError:
            raise
        except Exception as exc:  # every failure becomes a clear Flight error; keep serving
            raise _error(exc) from None
        return [flight.Result(json.dumps(result).encode())]

    def _act_ping(self, body):
        return {"ok": True}

    def _act_register_job(self, body):
        return self.jobs.register(body.get("sql"), body.get("params"), body.get("topology"))

    def _act_feedback(self, body):
        job = self.jobs.get(body.get("job"))
        return job.feedback(body.get("step"), body.get("loss_sums"), body.get("token_counts"))

    def _act_checkpoint(self, body):
        return self.jobs.get(body.get("job")).checkpoint()

    def _act_restore(self, body):
        job = self.jobs.get(body.get("job"))
        job.restore(body.get("state"))
        return {"job": job.id}

    def _act_job_info(self, body):
        return self.jobs.get(body.get("job")).info()

    # -- chunks ---------------------------------------------------------------------------
    def do_get(self, context, ticket):
        try:
            req = _parse(ticket.ticket, "ticket")
            job = self.jobs.get(req.get("job"))
            rank, worker = req.get("rank"), req.get("worker")
            for name, v in (("rank", rank), ("worker", worker)):
                if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
                    raise errors.InterfaceError(f"ticket {name} must be a non-negative integer, got {v!r}")
            table = job.chunk(req.get("chunk"), rank, worker)
        except flight.FlightError:
            raise
        except Exception as exc:
            raise _error(exc) from None
        if table is None:
            return flight.RecordBatchStream(END_SCHEMA.empty_table())
        return flight.RecordBatchStream(table)

    def shutdown(self):
        super().shutdown()
        self.jobs.close()


def resolve_token(host: str, token: str | None) -> str | None:
    """Token policy: explicit > $MIXSQL_TOKEN > generated when the host is not loopback."""
    if token:
        return token
    env = os.environ.get("MIXSQL_TOKEN")
    if env:
        return env
    if not is_loopback(host):
        return secrets.token_urlsafe(24)
    return None


def serve(catalog: str | os.PathLike, host: str = "127.0.0.1", port: int = 0, token: str | None = None,
          tls_cert: str | os.PathLike | None = None, tls_key: str | os.PathLike | None = None,
          **job_options: Any) -> None:
    """Run the server until SIGINT/SIGTERM (blocking). Prints the location on the first line."""
    resolved = resolve_token(host, token)
    server = MixServer(catalog, host, port, token=resolved, tls_cert=tls_cert, tls_key=tls_key, **job_options)
    print(f"mixsql server listening on {server.location}", flush=True)
    if resolved and not token and not os.environ.get("MIXSQL_TOKEN"):
        print(f"mixsql token (pass it to clients or set MIXSQL_TOKEN): {resolved}", flush=True)

    def stop(*_):
        threading.Thread(target=server.shutdown, daemon=True).start()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
    server.serve()


if __name__ == "__main__":  # python -m mixsql.server CATALOG [PORT]
    serve(sys.argv[1], port=int(sys.argv[2]) if len(sys.argv) > 2 else 0)
