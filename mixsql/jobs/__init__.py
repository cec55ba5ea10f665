"""Server-side jobs: one MIX statement executed once, its chunks served to many ranks.

A :class:`Job` owns the statement's :class:`~mixsql.stream.MixStream` (the node's memory-mapped
selection), an engine that computes any chunk directly, a bounded cache of served chunks, and
the job's dynamic state: weight history, mixing algorithm, last feedback step, per-rank
consumption.

:class:`JobManager` (this module) holds the jobs of one catalog: it opens each statement's
selection through a sandbox (planned there and published to the node's selection cache when no
process on the node has, else mapped), admits it against the server's limits and loads it back
from its file. Determinism, feedback and checkpoints: :mod:`.job`; the job file and its
journal: :mod:`.journal`.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import OperationalError
from ..sandbox import Sandbox, SandboxLimits, parse_client_statement
from .job import HISTORY, JOB_FORMAT, FeedbackPending, Job, JobError, ServerLimits
from .journal import Journal, atomic_write

__all__ = ["JobManager", "Job", "JobError", "FeedbackPending", "ServerLimits", "Journal", "atomic_write",
           "job_id_for", "JOB_FORMAT", "HISTORY"]


def job_id_for(catalog_path: Path, snapshot: int, statement: str, params: Any, topology: dict | None = None,
               tenant: str = "") -> str:
    """Same statement + params + catalog (path and snapshot) + topology + token -> same job id on
    every rank; another topology or another token is another job."""
    key = json.dumps([str(catalog_path), int(snapshot), statement.strip(), params, topology, tenant],
                     sort_keys=True, default=str)
    return hashlib.sha256(key.encode()).hexdigest()[:20]


def _check_topology(top: Any, limits: ServerLimits) -> dict:
    top = top or {}
    if not isinstance(top, dict):
        raise JobError("topology must be an object {\"dp_world\": N, \"num_workers\": W}")
    unknown = sorted(set(top) - {"dp_world", "num_workers"})
    if unknown:
        raise JobError(f"unknown topology field(s) {', '.join(map(repr, unknown))}; known: dp_world, num_workers")
    out = {"dp_world": top.get("dp_world", 1), "num_workers": top.get("num_workers", 1)}
    bounds = {"dp_world": limits.max_dp_world, "num_workers": limits.max_num_workers}
    for k, v in out.items():
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise JobError(f"topology.{k} must be a positive integer, got {v!r}")
        if v > bounds[k]:
            raise JobError(f"topology.{k} = {v} is above this server's limit of {bounds[k]}")
    return out


class JobManager:
    """All jobs of one catalog; jobs persisted under ``<catalog>/jobs`` (0700, files 0600),
    reloaded lazily. Statements are planned in a :class:`~mixsql.sandbox.Sandbox`, at most
    ``limits.max_concurrent_plans`` at once, never under the manager lock (which guards only
    the job table). A job belongs to the token (``tenant``) that registered it: other tokens
    neither see nor reach it."""

    def __init__(self, catalog: str | os.PathLike, *, limits: ServerLimits = ServerLimits(),
                 sandbox: SandboxLimits = SandboxLimits(), **job_options):
        self.catalog = Path(catalog).expanduser().resolve()
        self.dir = self.catalog / "jobs"
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        self.limits, self.sandbox_limits = limits, sandbox
        self.jobs: dict[str, Job] = {}
        self.lock = threading.Lock()
        self.planning = threading.BoundedSemaphore(max(int(limits.max_concurrent_plans), 1))
        self.loading: dict[str, threading.Event] = {}   # jobs being planned right now
        self.job_options = job_options
        self.owners = {path.stem: self._tenant_of(path) for path in self.dir.glob("*.json")}

    @staticmethod
    def _tenant_of(path: Path) -> str | None:
        try:
            return json.loads(path.read_bytes()).get("tenant")
        except (OSError, ValueError, AttributeError):
            return None

    @contextmanager
    def _plan_slot(self):
        if not self.planning.acquire(timeout=self.limits.plan_wait):
            raise OperationalError(f"the server is busy planning other statements (at most "
                                   f"{self.limits.max_concurrent_plans} at once); retry later")
        try:
            yield
        finally:
            self.planning.release()

    def _open(self, statement: str, params: Any, expect_snapshot: int | None = None):
        """(snapshot, stream) of ``statement`` through a fresh sandbox, on ``expect_snapshot`` when
        given (a job keeps reading the snapshot it was registered on): the node's cached selection,
        planned in the sandbox only when no process on the node published it yet."""
        with self._plan_slot(), Sandbox(self.catalog, self.sandbox_limits, snapshot=expect_snapshot) as box:
            return box.snapshot, box.open_stream(statement, params)

    def _snapshot(self) -> int:
        with Sandbox(self.catalog, self.sandbox_limits) as box:
            return box.snapshot

    def _admit(self, jid: str, tenant: str) -> None:
        """Count ``jid`` against the server's and the token's job limits (manager lock held)."""
        if jid in self.owners:
            return
        if len(self.owners) >= self.limits.max_jobs:
            raise JobError(f"this server holds {len(self.owners)} jobs, its limit; drop finished jobs "
                           "(MixClient.drop_job) or ask the operator to raise --max-jobs")
        mine = sum(1 for t in self.owners.values() if t == tenant)
        if mine >= self.limits.max_jobs_per_token:
            raise JobError(f"this token holds {mine} jobs, the limit per token; drop finished jobs "
                           "(MixClient.drop_job) first")

    def _materialise(self, jid: str, build) -> Job:
        """The live job ``jid``: built once by ``build()`` (outside the manager lock) while
        concurrent callers for the same job wait for it."""
        while True:
            with self.lock:
                job = self.jobs.get(jid)
                if job is not None:
                    return job
                event = self.loading.get(jid)
                if event is None:
                    event = self.loading[jid] = threading.Event()
                    break
            event.wait()
        try:
            job = build()
            with self.lock:
                self.jobs[jid] = job
            return job
        finally:
            with self.lock:
                self.loading.pop(jid, None)
            event.set()

    def register(self, statement: Any, params: Any = None, topology: Any = None, tenant: str = "") -> dict:
        if params is not None and not isinstance(params, (list, dict)):
            raise JobError("register_job 'params' must be a list or an object")
        parse_client_statement(statement, self.sandbox_limits)   # length and syntax before any DuckDB work
        top = _check_topology(topology, self.limits)
        snap = self._snapshot()
        jid = job_id_for(self.catalog, snap, statement, params, top, tenant)
        with self.lock:
            self._admit(jid, tenant)
            self.owners[jid] = tenant   # reserved now: concurrent registrations count it

        def build() -> Job:
            if (self.dir / f"{jid}.json").exists():
                return self._load(jid)
            snapshot, stream = self._open(statement, params, snap)
            _check_dynamic(stream.spec)
            doc = {"format": JOB_FORMAT, "job": jid, "tenant": tenant, "statement": statement,
                   "params": params, "catalog_snapshot": snapshot, "topology": top,
                   "feedback_lag": int(self.limits.feedback_lag), "weight_log": [],
                   "algorithm_state": None, "last_step": None,
                   "consumption": {}, "weights": list(stream.spec.weights()), "weight_history": []}
            job = Job(jid, self.dir / f"{jid}.json", stream, doc, limits=self.limits, **self.job_options)
            job.save()
            return job

        try:
            job = self._materialise(jid, build)
        except BaseException:
            with self.lock:
                if jid not in self.jobs and not (self.dir / f"{jid}.json").exists():
                    self.owners.pop(jid, None)
            raise
        return {"job": jid, **self._describe(job)}

    def _describe(self, job: Job) -> dict:
        spec = job.spec
        return {"groups": [g.path for g in spec.groups], "weights": job.doc["weights"],
                "chunk_size": spec.chunk_size, "unit": spec.unit, "topology": job.doc["topology"],
                "feedback_lag": job.lag, "spec": spec.to_json()}

    def _load(self, jid: str) -> Job:
        path = self.dir / f"{jid}.json"
        try:
            doc = json.loads(path.read_bytes())
        except (OSError, ValueError) as exc:
            raise OperationalError(f"job file {path.name} is unreadable ({type(exc).__name__}); "
                                   "register the statement again") from None
        if doc.get("format") != JOB_FORMAT:
            raise JobError(f"job {jid} was written by another mixsql version (format {doc.get('format')!r}); "
                           "register the statement again")
        _, stream = self._open(doc["statement"], doc["params"], doc["catalog_snapshot"])
        return Job(jid, path, stream, doc, limits=self.limits, **self.job_options)

    def get(self, jid: Any, tenant: str = "") -> Job:
        """The job ``jid`` when ``tenant`` registered it (any other job is "unknown")."""
        if not isinstance(jid, str) or not 0 < len(jid) <= 64 or not all(c in "0123456789abcdef" for c in jid):
            raise JobError(f"unknown job {str(jid)[:64]!r}: job ids are hex strings returned by register_job")
        with self.lock:
            known = jid in self.owners and self.owners[jid] == tenant
        if not known:
            raise JobError(f"unknown job {jid!r}: register it first (register_job with the statement)")
        return self._materialise(jid, lambda: self._load(jid))

    def drop(self, jid: Any, tenant: str = "") -> dict:
        """Forget job ``jid`` and delete its files (frees a slot of the job limits)."""
        job = self.get(jid, tenant)
        with self.lock:
            self.jobs.pop(job.id, None)
            self.owners.pop(job.id, None)
        job.close()
        for path in (job.path, job.journal.path):
            path.unlink(missing_ok=True)
        return {"job": job.id, "dropped": True}

    def close(self) -> None:
        for job in list(self.jobs.values()):
            job.close()


def _check_dynamic(spec) -> None:
    """Feedback-driven mixtures need ``batch_size``: it maps a reported step onto the chunk where
    the step's weight change lands, the same chunk in every run."""
    if spec.weighting == "algorithm" and spec.algorithm is None:
        raise JobError("statement uses an algorithm but the plan names none")
    if (spec.algorithm is not None or spec.schedule) and not spec.batch_size:
        what = f"USING {spec.algorithm.name.upper()}" if spec.algorithm is not None else "WITH SCHEDULE"
        raise JobError(
            f"{what} on the server needs SETTINGS (batch_size = B): samples (or tokens with "
            "unit = 'tokens') per global training step, so that the feedback of step s changes the "
            "weights from the first chunk of step s + feedback_lag, the same chunk in every run")
