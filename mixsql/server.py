"""The mixsql Arrow Flight server: one place executes a MIX statement, many ranks pull chunks.

Wire protocol (JSON bodies only; nothing is ever unpickled or executed):

``do_action`` (body: a JSON object, result: one JSON object)
    ``register_job``  {sql, params?, topology?: {dp_world, num_workers}} -> {job, groups, weights, spec, ...}
                      Same statement + params + topology + catalog snapshot + token -> same job id
                      on every rank; another topology or token is another job.
    ``feedback``      {job, step, loss_sums: [..], token_counts: [..]} -> {step, weights, at_chunk, duplicate}
    ``checkpoint``    {job} -> the job's state (JSON)
    ``restore``       {job, state} -> {job}  (a checkpoint of this job or of the same statement)
    ``job_info``      {job} -> weights, weight log, chunks served, end (when known), per-rank consumption
    ``ledger``        {job} -> statement, params, catalog snapshot, stream fingerprint and every
                      weight change since chunk 0: what :mod:`mixsql.ledger` needs (see ``Job.ledger``)
    ``drop_job``      {job} -> {job, dropped}  (deletes the job's files; frees a job slot)
    ``ping``          {} -> {ok: true}
``do_get`` (ticket: JSON {job, chunk, rank?, worker?} or {job, files: true})
    Chunk ``chunk`` as Arrow record batches (the engine's chunk table), computed directly: any
    index, in any order (see :mod:`mixsql.jobs.job`). Past the end of the
    stream: an empty stream whose schema metadata has ``mixsql.end = "true"``. With
    ``rank`` and ``worker`` the server checks that the chunk belongs to that rank and worker
    under the job's topology (``topology.owner``); ``rank`` records the rank's consumption.
    ``files: true``: the job's files table (paths, formats, options, fingerprints), all a rank
    needs to read the pointed-to samples without the catalog.

Errors reach clients as ``FlightServerError("[mixsql:<ErrorClass>] message")`` (the client
re-raises the mixsql error class); ``[mixsql:FeedbackPending]`` means "retry shortly" (the
chunk waits for an earlier step's feedback). A wrong or missing token is
``FlightUnauthenticatedError``.

Security (see :mod:`mixsql.sandbox` and README "Server"): client SQL is planned in a sandbox
that reads only the catalog's tables; requests, statements, topologies, jobs per server and
per token, and planning time and memory are bounded (:class:`~mixsql.jobs.ServerLimits`,
:class:`~mixsql.sandbox.SandboxLimits`). Tokens: ``authorization: Bearer <token>``; one or
more tokens (each a tenant: its jobs are invisible to the others), from ``$MIXSQL_TOKEN`` or a
token file, never the command line. Off loopback the server refuses to start without TLS
and a token unless ``insecure=True``. Job files are created 0600 in a 0700 directory.
"""
from __future__ import annotations

import dataclasses
import hashlib
import hmac
import ipaddress
import json
import os
import signal
import sys
import threading
import traceback
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.flight as flight

from . import errors
from .jobs import FeedbackPending, JobManager, ServerLimits
from .sandbox import SandboxLimits

ACTIONS = {
    "register_job": "register a MIX statement: {sql, params?, topology?} -> {job, ...}",
    "feedback": "per-group losses of one training step: {job, step, loss_sums, token_counts}",
    "checkpoint": "the job's resumable state: {job} -> state",
    "restore": "reset a job to a checkpoint: {job, state}",
    "job_info": "weights, weight log, chunks served, end and consumption of a job: {job}",
    "ledger": "what the data ledger needs to recompute a job's chunks: {job}",
    "drop_job": "delete a job and its files: {job}",
    "ping": "liveness check: {} -> {ok: true}",
}
END_SCHEMA = pa.schema([], metadata={"mixsql.end": "true"})
MAX_MESSAGE = 4000   # characters of an error message sent to a client


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def tenant_of(token: str) -> str:
    """The name a token's jobs are filed under (a hash: the token itself is never stored)."""
    return hashlib.sha256(token.encode()).hexdigest()[:16]


class _AuthMiddleware(flight.ServerMiddleware):
    def __init__(self, tenant: str):
        super().__init__()
        self.tenant = tenant


class BearerAuthFactory(flight.ServerMiddlewareFactory):
    """Rejects every call whose ``authorization`` header is not ``Bearer <token>`` for one of
    the server's tokens; the call then acts as that token's tenant."""

    def __init__(self, tokens):
        super().__init__()
        self._expected = [(f"Bearer {t}".encode(), tenant_of(t)) for t in tokens]

    def start_call(self, info, headers):
        values = headers.get("authorization") or headers.get("Authorization") or []
        for v in values:
            got = v if isinstance(v, bytes) else str(v).encode()
            match = None
            for expected, tenant in self._expected:   # compare with every token: constant work
                if hmac.compare_digest(got, expected):
                    match = tenant
            if match is not None:
                return _AuthMiddleware(match)
        raise flight.FlightUnauthenticatedError(
            "mixsql: missing or wrong token; pass MixClient(location, token=...) or set MIXSQL_TOKEN "
            "to the token the server was started with"
        )


def _error(exc: BaseException) -> flight.FlightServerError:
    if isinstance(exc, FeedbackPending):
        return flight.FlightServerError(f"[mixsql:FeedbackPending] {exc}")
    if isinstance(exc, errors.Error):
        cls = type(exc).__name__
        if not hasattr(errors, cls):
            cls = next(c.__name__ for c in type(exc).__mro__ if hasattr(errors, c.__name__))
        text = str(exc)
        if len(text) > MAX_MESSAGE:
            text = text[:MAX_MESSAGE] + " [...]"
        return flight.FlightServerError(f"[mixsql:{cls}] {text}")
    # an unexpected failure: its text could carry anything, so it stays in the server's log
    traceback.print_exception(exc, file=sys.stderr)
    return flight.FlightServerError(f"[mixsql:InternalError] the server failed handling the request "
                                    f"({type(exc).__name__}); the traceback is in the server's log")


def _parse(body: bytes, what: str, limit: int) -> dict:
    if len(body) > limit:
        raise errors.InterfaceError(f"{what}: body of {len(body)} bytes is larger than this server's "
                                    f"limit of {limit} bytes")
    try:
        obj = json.loads(body.decode("utf-8")) if body else {}
    except (UnicodeDecodeError, ValueError) as exc:
        raise errors.InterfaceError(f"{what}: body must be a JSON object ({exc})") from None
    if not isinstance(obj, dict):
        raise errors.InterfaceError(f"{what}: body must be a JSON object, got {type(obj).__name__}")
    return obj


def _split_options(options: dict) -> tuple[ServerLimits, SandboxLimits, dict]:
    """``MixServer(**options)``: ServerLimits fields, SandboxLimits fields, the rest for jobs."""
    picked = []
    for cls in (ServerLimits, SandboxLimits):
        names = {f.name for f in dataclasses.fields(cls)}
        picked.append(cls(**{k: options.pop(k) for k in list(options) if k in names}))
    return picked[0], picked[1], options


class MixServer(flight.FlightServerBase):
    """Flight server over one catalog. ``location`` is where clients connect.

    ``token``: one token or a list of tokens (each its own tenant). Off loopback the server
    needs TLS and a token unless ``insecure=True``. Other keyword options are the fields of
    :class:`~mixsql.jobs.ServerLimits` and :class:`~mixsql.sandbox.SandboxLimits`, and the
    job's served-chunk cache size (``window``)."""

    def __init__(self, catalog: str | os.PathLike, host: str = "127.0.0.1", port: int = 0,
                 token: str | list[str] | None = None, tls_cert: str | os.PathLike | None = None,
                 tls_key: str | os.PathLike | None = None, insecure: bool = False, **options: Any):
        if (tls_cert is None) != (tls_key is None):
            raise errors.InterfaceError("TLS needs both a certificate (tls_cert) and a key (tls_key)")
        tokens = [token] if isinstance(token, str) else [t for t in (token or []) if t]
        if not is_loopback(host) and not insecure:
            missing = [w for w, ok in (("TLS (--tls-cert/--tls-key)", tls_cert), ("a token ($MIXSQL_TOKEN "
                       "or --token-file)", tokens)) if not ok]
            if missing:
                raise errors.InterfaceError(
                    f"serving {host} (not loopback) needs {' and '.join(missing)}: clients send the token "
                    "with every call, and without TLS anyone on the network can read it; pass --insecure "
                    "only on a network you trust entirely")
        self.limits, sandbox, job_options = _split_options(dict(options))
        scheme = "grpc+tls" if tls_cert else "grpc+tcp"
        kwargs: dict[str, Any] = {}
        if tls_cert:
            kwargs["tls_certificates"] = [flight.CertKeyPair(Path(tls_cert).read_bytes(), Path(tls_key).read_bytes())]
        if tokens:
            kwargs["middleware"] = {"auth": BearerAuthFactory(tokens)}
        self.token = tokens[0] if tokens else None
        self.jobs = JobManager(catalog, limits=self.limits, sandbox=sandbox, **job_options)
        bind = f"[{host}]" if ":" in host else host
        super().__init__(f"{scheme}://{bind}:{port}", **kwargs)
        shown = "localhost" if tls_cert and is_loopback(host) else bind
        self.location = f"{'grpc+tls' if tls_cert else 'grpc'}://{shown}:{self.port}"

    # -- actions --------------------------------------------------------------------------
    def list_actions(self, context):
        return list(ACTIONS.items())

    @staticmethod
    def _tenant(context) -> str:
        mw = context.get_middleware("auth")
        return mw.tenant if mw is not None else ""

    def do_action(self, context, action):
        try:
            kind = action.type
            if kind not in ACTIONS:
                raise errors.InterfaceError(f"unknown action {str(kind)[:64]!r}; known: {', '.join(ACTIONS)}")
            body = _parse(action.body.to_pybytes() if action.body is not None else b"", kind,
                          self.limits.max_request_bytes)
            result = getattr(self, f"_act_{kind}")(body, self._tenant(context))
        except flight.FlightError:
            raise
        except Exception as exc:  # every failure becomes a clear Flight error; keep serving
            raise _error(exc) from None
        return [flight.Result(json.dumps(result).encode())]

    def _act_ping(self, body, tenant):
        return {"ok": True}

    def _act_register_job(self, body, tenant):
        return self.jobs.register(body.get("sql"), body.get("params"), body.get("topology"), tenant)

    def _act_feedback(self, body, tenant):
        job = self.jobs.get(body.get("job"), tenant)
        return job.feedback(body.get("step"), body.get("loss_sums"), body.get("token_counts"))

    def _act_checkpoint(self, body, tenant):
        return self.jobs.get(body.get("job"), tenant).checkpoint()

    def _act_restore(self, body, tenant):
        job = self.jobs.get(body.get("job"), tenant)
        job.restore(body.get("state"))
        return {"job": job.id}

    def _act_job_info(self, body, tenant):
        return self.jobs.get(body.get("job"), tenant).info()

    def _act_ledger(self, body, tenant):
        return self.jobs.get(body.get("job"), tenant).ledger()

    def _act_drop_job(self, body, tenant):
        return self.jobs.drop(body.get("job"), tenant)

    # -- chunks ---------------------------------------------------------------------------
    def do_get(self, context, ticket):
        try:
            req = _parse(ticket.ticket, "ticket", self.limits.max_ticket_bytes)
            job = self.jobs.get(req.get("job"), self._tenant(context))
            if req.get("files") is True:
                return flight.RecordBatchStream(job.stream.files)
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


def read_token_file(path: str | os.PathLike) -> list[str]:
    """Tokens from a file: one per line; blank lines and ``#`` comments are ignored."""
    p = Path(path).expanduser()
    try:
        text = p.read_text()
        mode = p.stat().st_mode
    except OSError as exc:
        raise errors.InterfaceError(f"cannot read the token file {p}: {exc.strerror}") from None
    tokens = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not tokens:
        raise errors.InterfaceError(f"the token file {p} holds no token (one token per line)")
    if mode & 0o077:
        print(f"mixsql: warning: the token file {p} is readable by other users; chmod 600 it", file=sys.stderr)
    return tokens


def resolve_tokens(token_file: str | os.PathLike | None = None) -> list[str]:
    """The server's tokens: those of ``token_file``, else ``$MIXSQL_TOKEN``, else none."""
    if token_file:
        return read_token_file(token_file)
    env = os.environ.get("MIXSQL_TOKEN")
    return [env] if env else []


def serve(catalog: str | os.PathLike, host: str = "127.0.0.1", port: int = 0,
          token_file: str | os.PathLike | None = None, tls_cert: str | os.PathLike | None = None,
          tls_key: str | os.PathLike | None = None, insecure: bool = False, **options: Any) -> None:
    """Run the server until SIGINT/SIGTERM (blocking). Prints the location on the first line."""
    server = MixServer(catalog, host, port, token=resolve_tokens(token_file), tls_cert=tls_cert,
                       tls_key=tls_key, insecure=insecure, **options)
    print(f"mixsql server listening on {server.location}", flush=True)

    def stop(*_):
        threading.Thread(target=server.shutdown, daemon=True).start()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
    server.serve()


if __name__ == "__main__":  # python -m mixsql.server CATALOG [PORT]
    serve(sys.argv[1], port=int(sys.argv[2]) if len(sys.argv) > 2 else 0)
