"""One server job: chunks computed directly from the node's selection and the weight log;
feedback applied at the chunk its training step maps to; checkpoint and restore.

Selection
    The job's pointers are the node's selection of its statement (:mod:`mixsql.selection`):
    planned once in a :class:`~mixsql.sandbox.Sandbox` and published, then memory-mapped by every
    job of the same statement, parameters and catalog snapshot (another topology or token), by a
    restarted server and by a job reloaded from its file: none of them plans again.

Determinism
    Chunk k is ``engine.chunk(k)``, computed directly (no chunk before it is composed) by an
    engine over (statement, catalog snapshot, seed) with every recorded weight change applied
    (``engine.set_weights(weights, at_chunk)``). A change at chunk a never alters a chunk before
    a, so chunk k is the chunk an in-order stream with the same changes produces, whatever the
    order in which chunks are requested. Every change is recorded in the weight history
    (``[at_chunk, weights]``, journaled whole: see :mod:`.journal`); the job file keeps the newest
    ``LOG_KEEP`` of them with their reasons as the weight log (``job_info``).
    Feedback-driven mixtures (``USING ADO``/``LOSS_AVERAGE``) need ``SETTINGS (batch_size = B)``:
    the feedback of training step s changes the weights from ``step_chunk(s + lag)``, the first
    chunk of step s + lag (``ceil(t * B / chunk_size)`` for step t; ``lag`` is the server's
    ``feedback_lag``, recorded in the job). A chunk is served only once every feedback that
    can change it has arrived: a request for it waits (briefly, then :class:`FeedbackPending`,
    which clients retry). So where a change lands is a pure function of the reporting step,
    whatever the ranks' speeds, and a restarted server reproduces every chunk. ``SCHEDULE``
    steps are mapped onto chunks by the engine from the same ``batch_size``.

Serving
    Any chunk index up to ``limits.max_chunk`` may be requested, in any order; no chunk before
    it is composed. The last ``window`` served chunks are
    kept (the tensor- and pipeline-parallel peers of a rank ask for the same chunk).
"""
from __future__ import annotations

import json
import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from ..algorithms import make_algorithm
from ..engine import schedule_chunk
from ..errors import InterfaceError, OperationalError, ProgrammingError
from ..topology import owner
from .journal import Journal, _dumps, atomic_write

JOB_FORMAT = 3   # 3: chunks computed directly (no engine snapshots, lease or end in the job file)
HISTORY = "mixsql.weight_history"   # the journal key of the job's weight history
LOG_KEEP = 256   # newest weight changes kept, with their reasons, in the job file (job_info's weight_log)
SAVE_EVERY = 64  # chunks served between two writes of the job file (per-rank consumption)


class JobError(ProgrammingError):
    """A request about a job cannot be honoured (unknown job, chunk out of range, ...)."""


class FeedbackPending(OperationalError):
    """Chunk k of a feedback-driven job waits for the feedback of an earlier training step."""


@dataclass(frozen=True)
class ServerLimits:
    """Bounds on what clients may ask of one server (see README, "Server")."""

    max_dp_world: int = 16384
    max_num_workers: int = 64
    max_window: int = 16384        # served chunks cached per job
    max_chunk: int = (1 << 40) - 1  # largest chunk index a request may name
    max_jobs: int = 256            # job files per server
    max_jobs_per_token: int = 32
    max_concurrent_plans: int = 2  # statements planned at once (each in its own sandbox)
    plan_wait: float = 60.0        # seconds a registration waits for a planning slot
    feedback_lag: int = 8          # feedback of step s applies from the first chunk of step s + lag
    pending_wait: float = 0.5      # seconds a chunk request waits server-side for pending feedback
    max_request_bytes: int = 8 << 20   # JSON body of one action (a restore carries a whole job state)
    max_ticket_bytes: int = 4 << 10

    def __post_init__(self):
        if not isinstance(self.feedback_lag, int) or self.feedback_lag < 1:
            raise InterfaceError(f"feedback_lag must be an integer >= 1 (steps), got {self.feedback_lag!r}: "
                                 "the feedback of step s arrives after step s was read")


def _finite_numbers(v: Any, k: int) -> bool:
    return isinstance(v, list) and len(v) == k and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v)


class Job:
    """One registered statement. Thread-safe; all state changes go through ``self.lock``."""

    def __init__(self, job_id: str, path: Path, stream, doc: dict, *, limits: ServerLimits = ServerLimits(),
                 window: int = 1024):
        self.id = job_id
        self.path = path
        self.stream = stream
        self.spec = stream.spec
        self.doc = doc
        self.limits = limits
        self.lock = threading.RLock()
        self.fed = threading.Condition(self.lock)   # notified when feedback advances last_step
        top = doc["topology"]
        self.window = min(max(window, 4 * top["dp_world"] * top["num_workers"]), limits.max_window)
        self.lag = int(doc["feedback_lag"])
        self.cache: OrderedDict[int, pa.Table] = OrderedDict()
        self.served = 0     # one past the highest chunk served since the job was loaded or restored
        self.unsaved = 0    # chunks served since the job file was last written
        groups = [g.path for g in self.spec.groups]
        self.algorithm = None
        self.journal = Journal(path.with_suffix(".journal"))
        lengths = doc.pop("journal", None)
        if lengths:
            items = self.journal.load(lengths)
            if HISTORY in items:
                doc["weight_history"] = items.pop(HISTORY)
            if doc.get("algorithm_state") is not None:
                doc["algorithm_state"].update(items)
        if self.spec.algorithm is not None:
            self.algorithm = make_algorithm(self.spec.algorithm.name, groups, self.spec.weights(),
                                            self.spec.algorithm.kwargs())
            if doc.get("algorithm_state") is not None:
                self.algorithm.load_state_dict(doc["algorithm_state"])
        self._reset_engine()

    # -- engine ---------------------------------------------------------------------------
    def _changes(self) -> list[list]:
        """Every weight change since chunk 0, ``[at_chunk, weights]`` by chunk (the last recorded
        for a chunk wins)."""
        changes: dict[int, list] = {}
        for at, w in self.doc["weight_history"]:
            changes[int(at)] = w
        return [[at, changes[at]] for at in sorted(changes)]

    def _reset_engine(self) -> None:
        """An engine over the job's selection with every recorded weight change applied. With
        ``SETTINGS (batch_size = b)`` the engine maps SCHEDULE steps onto chunks itself."""
        self.engine = self.stream.engine()
        for at, w in self._changes():
            self.engine.set_weights(w, at_chunk=at)
        self.cache.clear()
        self.served = 0

    def chunk(self, k: int, rank: int | None = None, worker: int | None = None) -> pa.Table | None:
        """Chunk k as an Arrow table, or None when the stream ends before chunk k."""
        if not isinstance(k, int) or isinstance(k, bool) or k < 0:
            raise JobError(f"chunk index must be a non-negative integer, got {k!r}")
        if k > self.limits.max_chunk:
            raise JobError(f"chunk {k} is beyond the largest chunk index this server serves "
                           f"({self.limits.max_chunk})")
        top = self.doc["topology"]
        if rank is not None and worker is not None:  # ownership is checked when both are given
            r, w = rank, worker
            own = owner(k, top["dp_world"], top["num_workers"])
            if (r, w) != own:
                raise JobError(
                    f"chunk {k} belongs to dp_rank {own[0]} worker {own[1]} under topology "
                    f"dp_world={top['dp_world']} num_workers={top['num_workers']}, not to "
                    f"dp_rank {r} worker {w}"
                )
        with self.lock:
            table = self.cache.get(k)
            if table is None:
                self._await_feedback(k)
                table = self.engine.chunk(k)
                if table is None:
                    return None
                self.cache[k] = table
                while len(self.cache) > self.window:
                    self.cache.popitem(last=False)
            else:
                self.cache.move_to_end(k)
            self.served = max(self.served, k + 1)
            if rank is not None:
                key = f"{rank}/{'*' if worker is None else worker}"
                cons = self.doc["consumption"]
                cons[key] = max(cons.get(key, -1), k)
                self.unsaved += 1
                if self.unsaved >= SAVE_EVERY:
                    self.save()
            return table

    # -- feedback -------------------------------------------------------------------------
    def step_chunk(self, step: int) -> int:
        """The first chunk of training step ``step`` (``SETTINGS (batch_size = b)``)."""
        return schedule_chunk(step, self.spec.batch_size, self.spec.chunk_size)

    def needed_step(self, k: int) -> int:
        """The last training step whose feedback can change chunk ``k`` (-1: none): feedback of
        step s applies from ``step_chunk(s + lag)``, and ``step_chunk(t) <= k`` iff
        ``t <= k * chunk_size // batch_size``."""
        if self.algorithm is None:
            return -1
        return k * self.spec.chunk_size // self.spec.batch_size - self.lag

    def _await_feedback(self, k: int) -> None:
        """Block (lock released) until every feedback that can change chunk ``k`` has arrived, for
        at most ``limits.pending_wait`` seconds; then :class:`FeedbackPending` (clients retry)."""
        need = self.needed_step(k)
        deadline = time.monotonic() + self.limits.pending_wait
        while need >= 0 and (self.doc["last_step"] is None or self.doc["last_step"] < need):
            left = deadline - time.monotonic()
            if left <= 0:
                raise FeedbackPending(
                    f"chunk {k} of job {self.id} waits for the feedback of training step {need} (feedback of "
                    f"step s changes the weights from the first chunk of step s + {self.lag}); last step "
                    f"reported: {self.doc['last_step']}")
            self.fed.wait(left)

    def _record(self, weights, reason: str, at: int) -> int:
        w = [float(x) for x in weights]
        s = sum(w)
        w = [x / s for x in w]
        log = self.doc["weight_log"]
        if log and log[-1][0] == at:
            log[-1] = [at, w, reason]
        else:
            log.append([at, w, reason])
        del log[:-LOG_KEEP]
        self.doc["weight_history"].append([at, w])   # append-only: the last entry of a chunk wins
        self.doc["weights"] = w
        self.engine.set_weights(w, at_chunk=at)
        return at

    def feedback(self, step: int, loss_sums, token_counts) -> dict:
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise JobError(f"feedback step must be a non-negative integer, got {step!r}")
        k = len(self.spec.groups)
        for name, v in (("loss_sums", loss_sums), ("token_counts", token_counts)):
            if not _finite_numbers(v, k):
                raise JobError(
                    f"feedback {name} must be a list of {k} finite numbers, one per group "
                    f"({', '.join(g.path for g in self.spec.groups)})"
                )
        with self.lock:
            last = self.doc["last_step"]
            if last is not None and step <= last:
                return {"step": step, "duplicate": True, "weights": self.doc["weights"]}
            changed_at = None
            if self.algorithm is not None:
                at = self.step_chunk(step + self.lag)   # after every chunk served so far (the gate in chunk())
                w = self.algorithm.update(step, loss_sums, token_counts)
                self.doc["algorithm_state"] = self.algorithm.state_dict()
                if w is not None:
                    changed_at = self._record(w, f"{self.algorithm.name} step {step}", at)
            self.doc["last_step"] = step
            self.save()
            self.fed.notify_all()
            return {"step": step, "duplicate": False, "weights": self.doc["weights"], "at_chunk": changed_at}

    # -- checkpoint / restore -------------------------------------------------------------
    def checkpoint(self) -> dict:
        with self.lock:
            self.save()
            return json.loads(_dumps(self.doc))

    def restore(self, state: dict) -> None:
        """Reset to a checkpoint of this job, or of a job of the same statement, parameters and
        catalog snapshot registered with another topology (a world-size change)."""
        same = ("statement", "params", "catalog_snapshot", "feedback_lag")
        if not isinstance(state, dict) or state.get("format") != JOB_FORMAT or any(
                state.get(k) != self.doc[k] for k in same):
            raise JobError(f"restore needs a checkpoint of job {self.id} or of the same statement "
                           "(as returned by checkpoint)")
        G = len(self.spec.groups)
        history = state.get("weight_history")
        if not isinstance(history, list) or not all(
                isinstance(e, list) and len(e) == 2 and isinstance(e[0], int) and not isinstance(e[0], bool)
                and 0 <= e[0] <= self.limits.max_chunk and _finite_numbers(e[1], G)
                and min(e[1]) >= 0 and sum(e[1]) > 0
                for e in history):
            raise JobError(f"restore: the checkpoint's weight_history must list [chunk, [{G} weights]] "
                           "changes (as returned by checkpoint)")
        with self.lock:
            keep = {k: self.doc[k] for k in ("job", "tenant", "topology")}
            self.doc = {**json.loads(_dumps(state)), **keep}
            self.doc.pop("journal", None)
            if self.algorithm is not None and self.doc.get("algorithm_state") is not None:
                self.algorithm.load_state_dict(self.doc["algorithm_state"])
            self.journal.clean = False   # the restored lists replace the journal's
            self._reset_engine()
            self.save()

    def _known_end(self) -> int | None:
        """Number of chunks of the stream when no feedback can change it any more (else None)."""
        return None if self.algorithm is not None else self.engine.stream_end()

    def info(self) -> dict:
        with self.lock:
            return {"job": self.id, "groups": [g.path for g in self.spec.groups],
                    "weights": self.doc["weights"], "served": self.served, "end": self._known_end(),
                    "feedback_lag": self.lag, "batch_size": self.spec.batch_size,
                    "last_step": self.doc["last_step"], "topology": self.doc["topology"],
                    "consumption": dict(self.doc["consumption"]), "weight_log": self.doc["weight_log"]}

    def ledger(self) -> dict:
        """What the data ledger needs to recompute this job's chunks elsewhere: statement,
        parameters, catalog snapshot, the stream's fingerprint and every weight change since
        chunk 0 (``[at_chunk, weights]``, one per chunk: the last recorded wins)."""
        with self.lock:
            return {"job": self.id, "statement": self.doc["statement"], "params": self.doc["params"],
                    "catalog_snapshot": self.doc["catalog_snapshot"], "fingerprint": self.engine._fingerprint,
                    "batch_size": self.spec.batch_size, "feedback_lag": self.lag,
                    "dynamic": self.algorithm is not None,
                    "weight_changes": self._changes()}

    def save(self) -> None:
        """Journal the new append-only items (the algorithm's lists, the weight history), then
        rewrite the job file (which commits them)."""
        with self.lock:
            doc = self.doc
            if self.algorithm is not None:
                state = doc.get("algorithm_state") or {}
                keys = [k for k in getattr(self.algorithm, "append_only", ()) if k in state]
                lengths = self.journal.persist({**state, HISTORY: doc["weight_history"]}, [*keys, HISTORY])
                doc = {**doc, "weight_history": [], "journal": lengths}
                if doc.get("algorithm_state") is not None:
                    doc["algorithm_state"] = {k: v for k, v in state.items() if k not in keys}
            atomic_write(self.path, _dumps(doc))
            self.unsaved = 0

    def close(self) -> None:
        if self.algorithm is not None:
            self.algorithm.close()
