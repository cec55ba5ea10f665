"""The checkpoint half of :class:`~mixsql.torch.MixDataset`: ``state_dict`` / ``load_state_dict``.

A checkpoint holds the rank's state (:mod:`.tracker`), the statement's fingerprint and catalog
snapshot (a resume with another statement or snapshot is refused), in-process feedback's
algorithm state and weight changes, and the run record :mod:`mixsql.ledger` recomputes the
run's consumption from. ``_Checkpointing`` is a mixin: it reads the attributes
``MixDataset.__init__`` sets.
"""
from __future__ import annotations

import hashlib
import os
from typing import Sequence

from torch.utils.data import get_worker_info

from ..errors import InterfaceError, ProgrammingError
from .tracker import STATE_VERSION, _ledger_copy, merge_rank_states


class _Checkpointing:
    """``MixDataset``'s checkpoint methods (see the module doc)."""

    def state_dict(self) -> dict:
        """What this copy of the dataset handed out: direct iteration in the main process, or,
        inside a DataLoader worker, that worker's items (torchdata's ``StatefulDataLoader``
        collects these per worker and hands each back to its worker on resume).

        In the main process while DataLoader workers iterate copies of this dataset, its own state
        is stale: that raises (use ``MixDataLoader.state_dict()`` or ``StatefulDataLoader``)."""
        if self._tracker is None and get_worker_info() is None and self._workers_iterated():
            raise InterfaceError(
                "MixDataset.state_dict() in the main process does not see what DataLoader workers "
                "consumed; checkpoint the loader instead: mixsql.torch.MixDataLoader(ds, ...).state_dict() "
                "or torchdata.stateful_dataloader.StatefulDataLoader(ds, ...).state_dict()")
        st = self._tracker.state() if self._tracker else self._state
        return {"mixsql": st, "statement": self._fingerprint(), "snapshot": self.snapshot, **self._dynamic_state(),
                "run": self._run_record(self._steps, state=st)}

    def _run_record(self, steps: int, workers: int = 1, batch_size: int | None = 1, drop_last: bool = False,
                    state: dict | None = None) -> dict:
        """What :mod:`mixsql.ledger` needs to recompute the run's consumption: the statement, its
        catalog, packing, topology, batching and how many steps (batches) were handed out; the
        topology history (``topologies``: from which step each topology held, with the old
        ranks' states a changed topology resumed from); in server mode the job's record
        (``job``: catalog snapshot, stream fingerprint, weight changes; see ``Job.ledger``)."""
        from ..catalog import Catalog

        cat = self.catalog.path if isinstance(self.catalog, Catalog) else self.catalog
        now = {"dp_world": self.dp_world, "workers": max(1, int(workers)), "batch_size": batch_size,
               "drop_last": bool(drop_last)}
        topologies = list(self._topologies or [])
        if not topologies:
            topologies = [{"step": 0, **now}]
        elif any(topologies[-1].get(k) != v for k, v in now.items()):
            resumed = self._resumed or {"step": int(steps), "states": None}
            topologies.append({"step": resumed["step"], **now, "states": resumed["states"]})
        record = {"topologies": topologies}
        if self.server is not None and self.sql is not None:
            record["job"] = self._server_job_record(state)
        return {**record, "sql": self.sql, "params": self.params,
                "catalog": os.path.abspath(cat) if isinstance(cat, (str, os.PathLike)) else None,
                "server": self.server if isinstance(self.server, str) else None,
                "seq_len": self.seq_len,
                "tokenizer": self.tokenizer_spec if isinstance(self.tokenizer_spec, (str, type(None))) else None,
                "by_group": self.by_group, "eos_id": self.eos_id, "bos_id": self.bos_id, "pad_id": self.pad_id,
                "dp_world": self.dp_world, "replicas": self.replicas, "workers": max(1, int(workers)),
                "rank_batch_size": self.batch_size,
                "batch_size": batch_size, "drop_last": bool(drop_last), "steps": int(steps)}

    def _server_job_record(self, state: dict | None) -> dict:
        """The server job's ledger record (the ``ledger`` action), fetched at checkpoint time:
        the job this run read (its id travels in the engine state), else the statement's job."""
        if self._job_ledger is not None and not self._job_ledger.get("dynamic"):
            return self._job_ledger
        from ..client import MixClient

        own = isinstance(self.server, str)
        client = MixClient(self.server) if own else self.server
        try:
            job = ((state or {}).get("engine") or {}).get("job")
            if job is None:
                job = client.register(self.sql, self.params)["job"]
            self._job_ledger = client.ledger(job)
        finally:
            if own:
                client.close()
        return self._job_ledger

    def _dynamic_state(self) -> dict:
        """In-process feedback's part of a checkpoint: the algorithm's state and the weight
        changes it made (re-applied from the restored engine position on)."""
        import copy

        algo = self._algo.state_dict() if self._algo is not None else self._algo_state
        algo = copy.deepcopy(algo)   # a snapshot: the live algorithm keeps appending
        if algo is None and not self._weight_log:
            return {}
        return {"dynamic": {"algorithm": algo, "weights": [[int(a), list(w)] for a, w in self._weight_log]}}

    def load_state_dict(self, state: dict | Sequence[dict]) -> None:
        """Restore ``state_dict()`` output. ``state`` may be the list of *every* old rank's state
        (as saved per rank): with a different number of data-parallel ranks (or workers) the
        remaining work is redistributed over the new topology, nothing lost or repeated."""
        given = [s.get("mixsql", s) for s in state] if isinstance(state, (list, tuple)) else None
        if isinstance(state, (list, tuple)):
            state = self._merge_states(list(state))
        st = state.get("mixsql", state)
        if state.get("snapshot") not in (None, self.snapshot):
            raise ProgrammingError(f"this checkpoint was taken on catalog snapshot {state['snapshot']}, this dataset "
                                   f"reads snapshot {self.snapshot}; resume with 'AT SNAPSHOT {state['snapshot']}' "
                                   "after FROM samples in the statement")
        if state.get("statement") not in (None, self._fingerprint()):
            raise ProgrammingError("this checkpoint was taken with a different MIX statement or parameters; "
                                   "resume with the same statement")
        if st.get("version") != STATE_VERSION:
            raise ProgrammingError(f"unsupported mixsql state version {st.get('version')!r}")
        if (st["dp_rank"], st["dp_world"]) != (self.dp_rank, self.dp_world):
            raise ProgrammingError(
                f"checkpoint is for data-parallel rank {st['dp_rank']} of {st['dp_world']}, this process is "
                f"rank {self.dp_rank} of {self.dp_world}; resume with the same number of data-parallel ranks"
            )
        self._state = st
        self._tracker = None
        run = state.get("run")
        if run is not None:   # a checkpoint (a state without one continues this run's record)
            self._steps = int(run.get("steps", 0))
            self._topologies = run.get("topologies") or [
                {"step": 0, **{k: run.get(k) for k in ("dp_world", "batch_size", "drop_last")},
                 "workers": max(1, int(run.get("workers") or 1))}]
            self._resumed = {"step": self._steps, "states": [_ledger_copy(s) for s in (given or [st])]}
        if self._worker_flag is not None:
            self._worker_flag.value = 0
        dyn = state.get("dynamic") or {}
        if self._algo is not None:
            self._algo.close()
        self._algo, self._algo_state = None, dyn.get("algorithm")
        self._weight_log = [[int(a), [float(x) for x in w]] for a, w in dyn.get("weights", [])]

    def _merge_states(self, states: list[dict]) -> dict:
        """One state for this rank from all old ranks' states (see :func:`merge_rank_states`)."""
        if not states:
            raise ProgrammingError("load_state_dict got an empty list of states")
        fps = {s.get("statement") for s in states}
        if len(fps) > 1:
            raise ProgrammingError("the states come from different MIX statements; pass the states of one run")
        dyn = [s.get("dynamic") for s in states if s.get("dynamic")]
        merged = merge_rank_states([s.get("mixsql", s) for s in states], self.dp_rank, self.dp_world)
        out = {"mixsql": merged, "statement": next(iter(fps))}
        if states[0].get("run"):
            out["run"] = states[0]["run"]
        if dyn:
            out["dynamic"] = dyn[0]
        return out

    def _fingerprint(self) -> str:
        from ..source_statements import split_snapshot

        text = f"{split_snapshot(self.sql)[0]}\x00{self.params!r}\x00{self.seq_len}\x00{self.snapshot}"
        return hashlib.sha256(text.encode()).hexdigest()[:16]
