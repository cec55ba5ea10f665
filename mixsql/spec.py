"""Typed mixture specification: what the planner hands the mixture engine.

A MIX statement is planned into (a) one DuckDB query that returns one row per selected
sample with mixsql's ``__mix_*`` columns and (b) a :class:`MixSpec`. Everything here is a
frozen dataclass that round-trips through JSON (``to_json`` / ``from_json``), so the spec can
travel to DataLoader workers, other ranks and the Flight server without pickle.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Literal

Unit = Literal["samples", "tokens"]
OnExhausted = Literal["stop", "redistribute", "repeat"]
BudgetKind = Literal["samples", "tokens", "chunks"]
Weighting = Literal["static", "natural", "schedule", "algorithm"]

# Columns the planned query returns besides the user's own projection.
MIX_COLUMNS = (
    "__mix_group",     # INTEGER: leaf group id, 0..len(groups)-1
    "__mix_source",    # VARCHAR: source name
    "__mix_file_id",   # INTEGER: files.file_id
    "__mix_file",      # VARCHAR: files.path
    "__mix_row",       # BIGINT: sample's row number inside its file (0-based)
    "__mix_offset",    # BIGINT: format-specific location, see catalog.SAMPLE_INDEX_DOC
    "__mix_length",    # INTEGER: format-specific location, see catalog.SAMPLE_INDEX_DOC
    "__mix_n_bytes",   # BIGINT: UTF-8 bytes of the sample's text
    "__mix_n_tokens",  # BIGINT (nullable): tokens of the sample's text, when registered
)
# Tokens the packer adds to every document (the EOS after it). Every token measure of a mixture
# (unit = 'tokens' shares and chunk sizes, LIMIT ... TOKENS, NATURAL token weights, EXPLAIN MIX
# tokens) counts a sample as n_tokens + EOS_TOKENS: the tokens it occupies in packed sequences,
# so the shares are those the packer delivers. n_tokens itself stays the text's own count.
EOS_TOKENS = 1
# With ORDER BY, the pointer table carries either the raw key columns
# ``__mix_order_<i>_<asc|desc>_<nf|nl>`` (training path; ranked in numpy by shuffle.ordered_permutation)
# or, after execute_plan(canonical=True), ``__mix_order``: the row's int64 rank inside its group.
ORDER_COLUMN = "__mix_order"


@dataclass(frozen=True)
class Group:
    """A leaf of the mixture tree: the unit the engine draws from."""

    id: int                 # dense 0..n-1, equals the __mix_group value
    path: str               # display path, e.g. "web,c4" or "code/python" or "OTHER"
    weight: float           # absolute target share (product down the tree), leaves sum to 1
    values: tuple = ()      # literal values this leaf matches at its own level (() for OTHER)


@dataclass(frozen=True)
class Budget:
    amount: int
    kind: BudgetKind


@dataclass(frozen=True)
class ScheduleStep:
    step: int                         # training step at which these weights start (not a chunk index)
    weights: tuple[float, ...]        # absolute leaf weights, indexed by Group.id, sum 1


@dataclass(frozen=True)
class Algorithm:
    name: str                         # e.g. "ado", "loss_average" (lower case)
    args: tuple[tuple[str, Any], ...] = ()

    def kwargs(self) -> dict[str, Any]:
        return dict(self.args)


@dataclass(frozen=True)
class Shuffle:
    """Locality-aware seeded permutation inside each group (used when there is no ORDER BY).

    A group reads ``shards`` files at a time (a shard window; 0: all of them); inside a shard
    window its samples are cut, in (file, row) order, into blocks of ``block`` samples, the
    blocks are permuted, then samples are shuffled inside sub-windows of ``window`` consecutive
    blocks (:mod:`mixsql.shuffle`). Larger blocks and fewer shards read fewer files per chunk.
    """

    block: int = 16
    window: int = 64
    shards: int = 4


@dataclass(frozen=True)
class MixSpec:
    groups: tuple[Group, ...]
    weighting: Weighting = "static"
    unit: Unit = "samples"
    chunk_size: int = 512                   # samples per chunk, or tokens per chunk (unit=tokens)
    seed: int = 0
    on_exhausted: OnExhausted = "stop"
    max_epochs: int | None = None           # bound for on_exhausted='repeat' (None: unbounded)
    budget: Budget | None = None
    ordered: bool = False                   # True when ORDER BY is given (order columns present)
    shuffle: Shuffle = field(default_factory=Shuffle)
    schedule: tuple[ScheduleStep, ...] = ()
    algorithm: Algorithm | None = None
    # Samples (unit samples) or tokens (unit tokens) one global training step consumes. When set,
    # SCHEDULE steps map onto chunk indices deterministically (engine.schedule_chunk); otherwise
    # the server refuses a SCHEDULE and MixDataset maps steps itself (see the planner docstring).
    batch_size: int | None = None

    @property
    def counts_tokens(self) -> bool:
        """Whether composition reads token counts: ``unit = 'tokens'`` or a ``LIMIT ... TOKENS``."""
        return self.unit == "tokens" or (self.budget is not None and self.budget.kind == "tokens")

    def weights(self) -> tuple[float, ...]:
        return tuple(g.weight for g in self.groups)

    def to_json(self) -> str:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["groups"] = [{"id": g.id, "path": g.path, "weight": g.weight, "values": g.values} for g in self.groups]
        d["schedule"] = [{"step": s.step, "weights": s.weights} for s in self.schedule]
        for name in ("budget", "shuffle", "algorithm"):
            d[name] = dataclasses.asdict(d[name]) if d[name] is not None else None
        # discovered group values of other types (dates, decimals, ...) travel as their text
        return json.dumps(d, sort_keys=True, default=str)

    @classmethod
    def from_json(cls, text: str) -> "MixSpec":
        d = json.loads(text)
        return cls(
            groups=tuple(Group(g["id"], g["path"], g["weight"], tuple(g["values"])) for g in d["groups"]),
            weighting=d["weighting"],
            unit=d["unit"],
            chunk_size=d["chunk_size"],
            seed=d["seed"],
            on_exhausted=d["on_exhausted"],
            max_epochs=d["max_epochs"],
            budget=Budget(**d["budget"]) if d["budget"] else None,
            ordered=d["ordered"],
            shuffle=Shuffle(**d["shuffle"]),
            schedule=tuple(ScheduleStep(s["step"], tuple(s["weights"])) for s in d["schedule"]),
            algorithm=(
                Algorithm(d["algorithm"]["name"], tuple((k, v) for k, v in d["algorithm"]["args"]))
                if d["algorithm"] else None
            ),
            batch_size=d.get("batch_size"),
        )
