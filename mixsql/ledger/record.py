"""A run's record, as one rank's loader state holds it: :func:`read_state` finds the state in a
dict, a JSON file or a torch checkpoint; :class:`Run` reads it, one :class:`Segment` per topology."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from ..errors import ProgrammingError


def read_state(source: Any) -> dict:
    """One rank's loader state from a dict, a JSON file, or a ``torch.save``d checkpoint (loaded
    with ``torch.load(weights_only=True)``: no pickled objects) holding it at any depth."""
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.exists(path):
            raise ProgrammingError(f"mix_ledger: no checkpoint file {path!r}")
        with open(path, "rb") as f:
            head = f.read(1).lstrip()
        if head in (b"{", b"["):
            try:
                with open(path) as f:
                    obj = json.load(f)
            except ValueError as e:
                raise ProgrammingError(f"mix_ledger: {path} is not valid JSON ({e})") from None
        else:
            try:
                import torch
            except ImportError:
                raise ProgrammingError(f"mix_ledger: {path} is not JSON; reading a torch checkpoint needs torch "
                                       "(pip install 'mixsql[torch]')") from None
            try:
                obj = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as e:   # torch raises many kinds for foreign or unsafe files
                raise ProgrammingError(f"mix_ledger: cannot read {path} as JSON or as a torch checkpoint with "
                                       f"weights_only=True ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    else:
        obj, path = source, "the given object"
    found = _find_state(obj)
    if found is None:
        raise ProgrammingError(f"mix_ledger: {path} holds no mixsql loader state (a dict with 'mixsql' and 'run' "
                               "entries, as MixDataLoader.state_dict() returns)")
    return found


def _find_state(obj: Any, depth: int = 0) -> dict | None:
    if isinstance(obj, dict):
        if "mixsql" in obj and isinstance(obj["mixsql"], dict):
            return obj
        for v in obj.values():
            if depth < 6 and (hit := _find_state(v, depth + 1)) is not None:
                return hit
    elif isinstance(obj, (list, tuple)) and depth < 6:
        for v in obj:
            if (hit := _find_state(v, depth + 1)) is not None:
                return hit
    return None


@dataclass(frozen=True)
class Segment:
    """One topology of a run: from training step ``step`` on, ``dp_world`` ranks x ``workers``
    DataLoader workers and per-rank batches of ``batch_size``. A segment after the first
    resumed from ``states``: the old ranks' states (engine and packed carries left out), whose
    pending chunks, holes and frontier say what each new (rank, worker) read first."""

    step: int
    dp_world: int
    workers: int
    batch_size: int
    drop_last: bool = False
    states: list | None = None

    @classmethod
    def from_record(cls, t: dict) -> "Segment":
        return cls(step=int(t.get("step") or 0), dp_world=int(t["dp_world"]), workers=max(1, int(t.get("workers") or 1)),
                   batch_size=int(t.get("batch_size") or 1), drop_last=bool(t.get("drop_last")), states=t.get("states"))


@dataclass(frozen=True)
class Run:
    """What a loader state says about its run (see :meth:`MixDataset._run_record`)."""

    sql: str
    catalog: str | None
    snapshot: int | None
    params: Any = None
    seq_len: int | None = None
    tokenizer: str | None = None
    by_group: bool | None = None
    eos_id: int | None = None
    bos_id: int | None = None
    dp_world: int = 1
    workers: int = 1
    batch_size: int = 1
    drop_last: bool = False
    steps: int = 0
    server: str | None = None
    weight_changes: list = field(default_factory=list)
    segments: list = field(default_factory=list)
    job: dict | None = None
    rank_batch_size: int | None = None

    @classmethod
    def from_state(cls, state: dict) -> "Run":
        run = state.get("run")
        if not run or not run.get("sql"):
            raise ProgrammingError("mix_ledger: this state has no 'run' record (it predates the ledger, or comes "
                                   "from a stream_factory dataset); save loader.state_dict() with this mixsql")
        dp_world = int(run.get("dp_world") or state["mixsql"]["dp_world"])
        workers, batch = max(1, int(run.get("workers") or 1)), int(run.get("batch_size") or 1)
        tops = run.get("topologies") or [{"step": 0, "dp_world": dp_world, "workers": workers, "batch_size": batch,
                                          "drop_last": run.get("drop_last")}]
        job = run.get("job")
        if job is not None:   # server mode: the job's recorded weight changes and catalog snapshot
            changes, snapshot = job.get("weight_changes") or [], job.get("catalog_snapshot")
        else:
            changes, snapshot = (state.get("dynamic") or {}).get("weights", []), state.get("snapshot")
        return cls(sql=run["sql"], catalog=run.get("catalog"), snapshot=snapshot,
                   params=run.get("params"), seq_len=run.get("seq_len"), tokenizer=run.get("tokenizer"),
                   by_group=run.get("by_group"), eos_id=run.get("eos_id"), bos_id=run.get("bos_id"),
                   dp_world=dp_world, workers=workers, batch_size=batch, drop_last=bool(run.get("drop_last")),
                   steps=int(run.get("steps") or 0), server=run.get("server"),
                   weight_changes=[[int(a), [float(x) for x in w]] for a, w in changes],
                   segments=[Segment.from_record(t) for t in tops], job=job,
                   rank_batch_size=run.get("rank_batch_size"))
