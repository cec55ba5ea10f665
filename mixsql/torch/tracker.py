"""Checkpoint state: what was consumed, as a canonical description of the remaining work.

A state (``initial_state``) is a plain JSON-able dict: the pending (partially consumed) chunks
with their packed carry, the holes (chunks below the frontier nobody started), the frontier, one
engine state to seek from and the end of the stream, for one data-parallel rank. ``_Tracker``
builds it from the resume tokens of the items handed to the training loop;
``merge_rank_states`` redistributes every old rank's state over a new number of ranks. Which
(rank, worker) owns chunk *k*: :mod:`mixsql.topology` (the one formula), through ``_owner_worker`` / ``_suffix``.
"""
from __future__ import annotations

import numpy as np

from ..errors import InterfaceError, ProgrammingError
from ..topology import Topology, owned_chunks, owner

STATE_VERSION = 1


def _owner_worker(k: int, dp_world: int, num_workers: int) -> int:
    """The DataLoader worker that reads chunk ``k`` (:func:`mixsql.topology.owner`)."""
    return owner(k, dp_world, num_workers)[1]


def _suffix(start: int, dp_rank: int, dp_world: int, num_workers: int, worker: int, stop: int | None = None):
    """Chunks >= start (and < stop) owned by (dp_rank, worker) (:func:`mixsql.topology.owned_chunks`)."""
    return owned_chunks(Topology(dp_rank, dp_world, worker, num_workers), start, stop)


def initial_state(dp_rank: int = 0, dp_world: int = 1, engine_state: dict | None = None) -> dict:
    return {"version": STATE_VERSION, "dp_rank": dp_rank, "dp_world": dp_world, "pending": [],
            "holes": [], "frontier": 0, "base": 0, "engine": engine_state, "end": None}


def _explicit_tasks(state: dict, num_workers: int, worker: int) -> list[dict]:
    """The pending entries and holes of ``state`` that ``worker`` (of ``num_workers``) redoes,
    sorted by chunk (carry-only entries first)."""
    D = state["dp_world"]
    tasks = []
    for i, p in enumerate(state["pending"]):
        c = p.get("chunk")
        w = (p.get("worker", i) % num_workers) if c is None else _owner_worker(c, D, num_workers)
        if w == worker:
            tasks.append({"chunk": c, "carry": p.get("carry") or {}, "drop": p.get("drop") or {}})
    for h in state["holes"]:
        if _owner_worker(h, D, num_workers) == worker:
            tasks.append({"chunk": h, "carry": {}, "drop": {}})
    tasks.sort(key=lambda t: -1 if t["chunk"] is None else t["chunk"])
    return tasks


def merge_rank_states(states: list[dict], dp_rank: int, dp_world: int) -> dict:
    """The state of new rank ``dp_rank`` of ``dp_world`` from every old rank's state.

    Old rank r (of D) has consumed its chunks ``k = r (mod D)`` below its frontier except its
    pending (partially consumed) chunks and holes (never started). The merged run continues from
    the largest old frontier F: the new rank redoes, as explicit tasks, the pending entries, holes
    and old ranks' unstarted chunks in ``[frontier_r, F)`` whose index it owns in the new topology
    (``k % dp_world == dp_rank``; leftover packed tokens without a chunk go to ``old rank %
    dp_world``), then streams its own chunks from F. With an unchanged world the rank's own state
    is returned as is (the remaining batches are identical to an uninterrupted run)."""
    by_rank: dict[int, dict] = {}
    for s in states:
        if s.get("version") != STATE_VERSION:
            raise ProgrammingError(f"unsupported mixsql state version {s.get('version')!r}")
        by_rank.setdefault(int(s["dp_rank"]), s)   # replicas of one dp rank hold the same state
    D = {int(s["dp_world"]) for s in by_rank.values()}
    if len(D) != 1:
        raise ProgrammingError(f"the states come from different world sizes {sorted(D)}; pass one run's states")
    D = D.pop()
    if sorted(by_rank) != list(range(D)):
        if len(by_rank) == 1 and D == dp_world and dp_rank in by_rank:
            return by_rank[dp_rank]
        missing = sorted(set(range(D)) - set(by_rank))
        raise ProgrammingError(f"states of data-parallel ranks {missing} (of {D}) are missing; pass every "
                               "old rank's loader.state_dict()")
    if D == dp_world:
        return by_rank[dp_rank]
    F = max(int(s["frontier"]) for s in by_rank.values())
    ends = [int(s["end"]) for s in by_rank.values() if s.get("end") is not None]
    end = min(ends) if ends else None
    pending, holes = [], set()
    for r, s in sorted(by_rank.items()):
        for p in s["pending"]:
            c = p.get("chunk")
            owner = (r if c is None else c) % dp_world
            if owner == dp_rank:
                pending.append({"chunk": c, "carry": p.get("carry") or {}, "drop": p.get("drop") or {},
                                "worker": len(pending)})
        holes.update(int(h) for h in s["holes"] if int(h) % dp_world == dp_rank)
        f = int(s["frontier"])
        k = f + ((r - f) % D)
        while k < F:
            if k % dp_world == dp_rank:
                holes.add(k)
            k += D
    if end is not None:
        holes = {h for h in holes if h < end}
    base = min(int(s["base"]) for s in by_rank.values())
    engine = next(s["engine"] for s in by_rank.values() if int(s["base"]) == base)
    return {"version": STATE_VERSION, "dp_rank": dp_rank, "dp_world": dp_world, "pending": pending,
            "holes": sorted(holes), "frontier": F, "base": base, "engine": engine, "end": end}


def _merge_carry(a: dict, b: dict) -> dict:
    """Carry ``a`` followed by carry ``b`` per key (values: int32 arrays or JSON lists)."""
    if not a:
        return dict(b)
    if not b:
        return dict(a)
    out = dict(a)
    for k, v in b.items():
        if k in out:
            out[k] = {f: np.concatenate([np.asarray(out[k][f], dtype=np.int32), np.asarray(v[f], dtype=np.int32)])
                      for f in ("ids", "groups")}
        else:
            out[k] = v
    return out


def _ledger_copy(state: dict) -> dict:
    """A rank state as the ledger keeps it in the topology history: without the engine state
    (O(groups); the ledger recomputes chunks) and packed carries (their tokens)."""
    pending = [{**p, "carry": {}} for p in state.get("pending", [])]
    return {**state, "engine": None, "pending": pending}


def _jsonable(v):
    return v.tolist() if isinstance(v, np.ndarray) else list(v)


class _Tracker:
    """Turns the resume tokens of consumed items into a canonical state (see "Exactly-once
    resume" in :mod:`mixsql.torch`)."""

    def __init__(self, state: dict, num_workers: int):
        self.start = state
        self.W = max(1, num_workers)
        self.cur: dict[int, dict] = {}     # worker -> {"t", "info", "n": {key: consumed}}
        self.next_worker = state.get("next_worker", 0) if state.get("workers") == self.W else 0

    def observe(self, tok) -> None:
        """One item's token ``(worker, task, key, tokens, info)``."""
        w, t, key, n, info = tok
        self.observe_counts(w, t, {key: n}, info)

    def observe_counts(self, w: int, t: int, counts: dict, info) -> None:
        """An aggregated token (one batch's rows of one task): same state as one ``observe`` per row."""
        cur = self.cur.get(w)
        if cur is None or cur["t"] != t:
            if info is None:  # cannot happen: the first item of a task carries its info
                raise InterfaceError("resume token stream out of order; consume items in DataLoader order")
            cur = self.cur[w] = {"t": t, "info": info, "n": {}}
        n = cur["n"]
        for key, k in counts.items():
            n[key] = n.get(key, 0) + k
        self.next_worker = (w + 1) % self.W

    def state(self) -> dict:
        s = self.start
        D, r = s["dp_world"], s["dp_rank"]
        K_old = s["frontier"]
        pending, holes = [], []
        suffix_next: dict[int, int | None] = {}   # worker -> first unstarted suffix chunk (None: ended)
        frontier = K_old
        engines = [(s["base"], s["engine"])]
        end = s.get("end")
        for w in range(self.W):
            tasks = _explicit_tasks(s, self.W, w)
            cur = self.cur.get(w)
            if cur is None:
                rest, nxt = tasks, K_old
            else:
                info, t = cur["info"], cur["t"]
                carry_in, drop = info["carry"], dict(info["drop"])
                carry = {}
                for key, v in carry_in.items():
                    k = cur["n"].get(key, 0)
                    if k < len(v["ids"]):
                        carry[key] = {"ids": _jsonable(v["ids"][k:]), "groups": _jsonable(v["groups"][k:])}
                for key, k in cur["n"].items():
                    extra = k - len(carry_in.get(key, {"ids": ()})["ids"])
                    if extra > 0:
                        drop[key] = drop.get(key, 0) + extra
                entry = {"chunk": info["chunk"], "carry": carry, "drop": drop, "worker": w}
                if entry["chunk"] is not None or carry:
                    pending.append(entry)
                if info.get("eng") is not None:
                    engines.append(tuple(info["eng"]))
                if info.get("end") is not None:
                    end = info["end"] if end is None else min(end, info["end"])
                rest = tasks[t + 1:] if t < len(tasks) else []
                if info["kind"] == "flush":
                    nxt = None
                    if info.get("end") is not None:   # every chunk below the end was handed out
                        frontier = max(frontier, info["end"])
                elif info["kind"] == "suffix":
                    nxt = info["chunk"] + 1
                    frontier = max(frontier, nxt)
                else:
                    nxt = K_old
            for task in rest:
                if task["carry"] or task["drop"] or task["chunk"] is None:
                    pending.append({**task, "worker": w})
                else:
                    holes.append(task["chunk"])
            suffix_next[w] = nxt
        for w, nxt in suffix_next.items():
            if nxt is not None:
                holes.extend(_suffix(nxt, r, D, self.W, w, stop=frontier))
        if end is not None:
            holes = [h for h in holes if h < end]
            pending = [p for p in pending if p["chunk"] is None or p["chunk"] < end or p["carry"]]
        needed = [p["chunk"] for p in pending if p["chunk"] is not None] + holes + [frontier]
        low = min(needed)
        base, eng = max((e for e in engines if e[0] <= low), key=lambda e: e[0])
        return {"version": STATE_VERSION, "dp_rank": r, "dp_world": D, "pending": pending,
                "holes": sorted(set(holes)), "frontier": frontier, "base": base, "engine": eng, "end": end,
                "workers": self.W, "next_worker": self.next_worker}
