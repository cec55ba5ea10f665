"""The mixture engine: a pointer table + a MixSpec -> a deterministic, resumable chunk stream.

Input: the planner's pointer table (``spec.MIX_COLUMNS``, when ordered either ``__mix_order``
(int64 rank) or the raw ORDER BY key columns ``__mix_order_<i>_<asc|desc>_<nf|nl>`` ranked here
with :func:`mixsql.shuffle.ordered_permutation`, user columns) and a :class:`~mixsql.spec.MixSpec`. Output: chunks, Arrow tables with the columns of
``CHUNK_COLUMNS`` (user columns inserted after ``row``). A node's cached selection
(:func:`mixsql.selection.compact`) comes in base order with per-group and per-file facts in its
metadata: the engine then reads no column at construction (O(groups + files)) and gathers only
each chunk's rows from the mapped file, in their stored (narrow) types.

Composition (``unit = 'samples'``), random access. Let ``a_g(T)`` be group g's *target* after
``T`` samples: ``weight_g * T`` for static weights (restarting from what was delivered at every
weight change and, under ``redistribute``, when a group runs dry; the targets always sum to
``T``). The number of samples each group has delivered after chunk k is computed *directly*
(:mod:`mixsql.composition`): the segment of weights in force, then a nested proportional split
of the segment's seats (``SplitTree``), O(groups) array work and a binary search for exhaustion
points, never by composing the chunks before k. Counts are house-monotone (chunk k is the
difference of two prefix counts, every chunk holds exactly ``chunk_size`` samples) and within
``share_bound`` of the target for every group after every chunk: under one sample for two or
three groups and balanced mixtures, up to ~1.3 for skewed mixtures of many groups (the bound is
reported by ``MixEngine.share_bound``).

Composition (``unit = 'tokens'``). A sample's tokens are ``n_tokens + spec.EOS_TOKENS`` (the EOS
the packer appends: what it occupies in packed sequences), here and in ``LIMIT ... TOKENS`` and
the forecasts. ``T`` counts nominal tokens (``chunk_size`` per chunk);
each group draws whole samples, in its order, while its delivered tokens are below
``a_g(T')`` (its delivered tokens are a direct function of the target). So ``0 <= delivered_g -
a_g < tokens of g's last sample``: within one sample's tokens; overshoot is carried into the next
chunk's targets (a chunk holds ``chunk_size`` nominal tokens up to that carry; a chunk whose
targets no group's next sample reaches is empty, so chunk k keeps covering nominal tokens
``[k C, (k+1) C)``).

Inside a chunk, rows are interleaved (group g's i-th of d samples sits at ``(i + .5) / d``),
so any prefix of a chunk is mixed too.

Exhaustion (a group *runs dry* when it cannot supply its next sample):

* ``stop``: the stream ends. The chunk in which it happens is delivered truncated to the
  largest prefix (house size) whose composition the remaining samples can honour; nothing
  drawn is lost. A group that has delivered its last sample at a chunk boundary ends the stream
  there (so 50/30/20 samples at .4/.4/.2, chunk 10 give exactly 5 chunks).
* ``redistribute``: the dry group gives what it has left, its target freezes at its total, and
  its weight is shared among the remaining groups proportionally from that point on (inside
  the same chunk). Every selected sample of a positive-weight group is delivered exactly once;
  the last chunk may be partial.
* ``repeat``: the group starts epoch ``e + 1`` with a fresh permutation (seed includes the
  epoch; ORDER BY groups replay their order). ``max_epochs`` bounds the passes; a group that
  has used them all behaves as under ``stop``. Within one epoch no sample appears twice.

Budgets ``LIMIT n SAMPLES|TOKENS|CHUNKS`` cap the stream; the last chunk is truncated (a
budget in samples or chunks under ``unit = 'samples'`` shrinks the house size, keeping the bound;
a budget in samples under ``unit = 'tokens'`` and any ``LIMIT n TOKENS`` cut the interleaved
rows, including the sample that reaches a token budget, so a token budget is overshot by less
than one sample's tokens however many groups draw from the last chunk).

Determinism: chunk k is a pure function of (pointer table, spec, weight changes recorded for
chunks <= k): ``MixEngine.chunk(k)`` computes it directly, ``seek(k)`` positions the stream there.
All randomness is hash-keyed sorting (splitmix64 over ``(spec.seed, group, epoch[, window])``,
see :mod:`mixsql.shuffle`). ``state_dict()`` holds the position, the weight segment in force (counts, tokens and
targets at its start, dry flags, weights) and the *pending* weight changes: O(groups) numbers,
restored in O(groups), never replayed.

Schedules: ``SCHEDULE (AT STEP s ...)`` maps to chunks with :func:`schedule_chunk`: with
``batch_size`` B (samples, or tokens when ``unit = 'tokens'``, per global step) and chunk size
C, step s's weights take effect at chunk ``ceil(s * B / C)``, the first chunk that starts at
or after the first sample of step s.

Why one module of this size: ``MixEngine``'s state (position, weight segment, dry groups,
pending weight changes, epochs) is read and advanced by every path above (direct ``chunk(k)``,
``seek``, sequential ``next_chunk``, exhaustion forecasts, ``state_dict``), and those paths must
agree sample for sample; the arithmetic they share lives apart already (:mod:`mixsql.composition`,
:mod:`mixsql.shuffle`, :mod:`mixsql.gather`, :mod:`mixsql.topology`), and what remains is the one
state machine, kept in one place so its invariants can be read together.
"""
from __future__ import annotations

import hashlib
import json
import math
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa

from .composition import Composer
from .gather import LazySequences, RunCache
from .gctools import without_gc
from .packed import PackedSelection
from .errors import ProgrammingError
from .selection import COMPACT_DERIVED, COMPACT_KEY, SORTED_KEY
from .shuffle import ORDER_KEY_PREFIX, GroupSequence, ShardOrders, order_key_columns, ordered_permutation, pointer_order
from .spec import EOS_TOKENS, MIX_COLUMNS, ORDER_COLUMN, MixSpec


FORECAST_MAX_CHUNKS = 250_000   # longer streams fall back to the fluid approximation


def forecast(spec: MixSpec, group_samples: list[int], group_tokens: list[int | None],
             pointers: pa.Table | None = None, *, batch_size: int | None = None,
             max_chunks: int = FORECAST_MAX_CHUNKS) -> list[dict]:
    """What the statement will consume, per group (for EXPLAIN MIX): exactly what
    :class:`MixEngine` delivers when no feedback changes the weights.

    The forecast *runs the engine's own composition* (``skip_chunk``: O(groups) per chunk, no
    rows): for ``unit = 'samples'`` without a token budget it needs only the group sizes; with
    tokens (unit or budget) it needs ``pointers`` (the planner's table: token counts in
    consumption order) and builds a real engine. ``samples_needed`` is the samples the stream
    delivers from the group, ``epochs_needed`` that over the group's size (passes, a float),
    ``dry_at_chunk`` the index of the chunk whose composition first wanted a sample the group
    no longer had (``None`` if none did), ``tokens_needed`` exact when the engine tracks tokens,
    else ``samples_needed`` x the group's mean tokens per sample. Schedules apply when
    ``batch_size`` (or ``spec.batch_size``) maps them onto chunks, as in the engine.

    Falls back to :func:`fluid_forecast` (within one sample per group, one chunk for
    ``dry_at_chunk``) when the stream is unbounded (``repeat`` without ``max_epochs`` and
    without LIMIT: amounts are ``None``), longer than ``max_chunks`` chunks, or needs tokens
    and no ``pointers`` were given.
    """
    n = len(spec.groups)
    if len(group_samples) != n or len(group_tokens) != n:
        raise ValueError(f"forecast: expected {n} group sizes, got {len(group_samples)} / {len(group_tokens)}")
    needs_tokens = spec.counts_tokens
    unbounded = spec.budget is None and spec.on_exhausted == "repeat" and spec.max_epochs is None
    if unbounded or (needs_tokens and pointers is None):
        return fluid_forecast(spec, group_samples, group_tokens)
    if needs_tokens:
        eng = MixEngine(pointers, spec, batch_size=batch_size)
    else:
        eng = MixEngine._counting(spec, group_samples, batch_size)
    comp = eng._comp
    comp.resolve(max_chunks)
    if comp.end is None or comp.end > max_chunks:
        return fluid_forecast(spec, group_samples, group_tokens)
    end = comp.end
    counts, toks = comp.after(end - 1)
    if end > 0 and comp.cut_chunk == end - 1:   # a budget cuts the interleaved rows of the last chunk
        last = eng.chunk(end - 1)
        before, tok_before = comp.after(end - 2)
        gids = last.column("group_id").to_numpy()
        counts = before + np.bincount(gids, minlength=n)
        toks = tok_before + np.bincount(gids, weights=last.column("n_tokens").to_numpy() + EOS_TOKENS,
                                        minlength=n).astype(np.int64)
    dry_at = {g: k for g, k in comp.dry_at.items() if k <= end}
    weights = list(spec.schedule[0].weights) if spec.schedule and spec.schedule[0].step == 0 else list(spec.weights())
    out = []
    for i, g in enumerate(spec.groups):
        cnt, size, tot = int(counts[i]), int(group_samples[i]), group_tokens[i]
        if needs_tokens:
            t_need = int(toks[i])
        else:
            t_need = None if tot is None else (int(round(cnt * tot / size)) if size else 0)
        out.append({
            "group": g.path,
            "weight": weights[i],
            "samples": size,
            "tokens": None if tot is None else int(tot),
            "samples_needed": cnt,
            "tokens_needed": t_need,
            "epochs_needed": cnt / size if size else 0.0,
            "dry_at_chunk": dry_at.get(i),
        })
    return out


def fluid_forecast(spec: MixSpec, group_samples: list[int], group_tokens: list[int | None]) -> list[dict]:
    """Approximate per-group consumption without running the engine's composition.

    A continuous (fluid) simulation of the engine's policy under the spec's initial weights:
    groups draw at rate ``weight`` of the stream (measured in ``spec.unit``); a group runs dry
    after ``max_epochs`` (``repeat``) or one (``stop``/``redistribute``) pass over its data;
    ``stop`` ends the stream at the first dry group, ``redistribute`` shares the dry group's
    weight among the rest proportionally. The budget (``LIMIT``) caps the stream; without a
    budget, ``repeat`` with ``max_epochs=None`` is unbounded (amounts are then ``None``).

    Returns one dict per group (in ``spec.groups`` order): ``group``, ``weight``,
    ``samples``, ``tokens`` (available), ``samples_needed``, ``tokens_needed`` (``None`` when
    token counts are unknown), ``epochs_needed`` (float: passes over the group's data),
    ``dry_at_chunk`` (0-based index of the first chunk that needs data the group no longer
    has, ``None`` when that does not happen within the stream). Figures are exact up to the
    engine's rounding (within one sample / one sample's tokens per group, one chunk for
    dry_at_chunk).
    """
    n = len(spec.groups)
    if len(group_samples) != n or len(group_tokens) != n:
        raise ValueError(f"forecast: expected {n} group sizes, got {len(group_samples)} / {len(group_tokens)}")
    tokens_unit = spec.unit == "tokens"
    weights = list(spec.schedule[0].weights) if spec.schedule and spec.schedule[0].step == 0 else list(spec.weights())
    avg_tok = [
        (t / s if (t is not None and s) else None) for s, t in zip(group_samples, group_tokens)
    ]
    # supply of each group, in the stream's unit
    if tokens_unit:
        per_pass = [float(t or 0) for t in group_tokens]
    else:
        per_pass = [float(s) for s in group_samples]
    passes = spec.max_epochs if spec.on_exhausted == "repeat" else 1
    supply = [p * passes if passes is not None else math.inf for p in per_pass]

    # budget, converted to the stream's unit (approximately, via average tokens per sample)
    total_avg = (sum(t for t in group_tokens if t is not None) / max(1, sum(group_samples))
                 if any(t is not None for t in group_tokens) else None)
    limit = math.inf
    b = spec.budget
    if b is not None:
        if b.kind == "chunks":
            limit = float(b.amount) * spec.chunk_size
        elif (b.kind == "tokens") == tokens_unit:
            limit = float(b.amount)
        elif b.kind == "tokens":  # token budget, sample stream
            limit = b.amount / total_avg if total_avg else math.inf
        else:  # sample budget, token stream
            limit = b.amount * total_avg if total_avg else math.inf

    # fluid simulation: piecewise-constant rates between dry events
    used = [0.0] * n
    dry_at: list[float | None] = [None] * n
    t = 0.0
    active = [i for i in range(n) if weights[i] > 0 and supply[i] > 0]
    for i in range(n):
        if weights[i] > 0 and supply[i] <= 0:
            dry_at[i] = 0.0
    ended = spec.on_exhausted != "redistribute" and any(d is not None for d in dry_at)
    while active and not ended and t < limit:
        wsum = sum(weights[i] for i in active)
        rate = {i: weights[i] / wsum for i in active}
        dt_dry = min((supply[i] - used[i]) / rate[i] for i in active)
        dt = min(dt_dry, limit - t)
        if math.isinf(dt):
            break
        for i in active:
            used[i] += rate[i] * dt
        t += dt
        if t >= limit:
            break
        newly = [i for i in active if used[i] >= supply[i] - 1e-9 * max(1.0, supply[i])]
        for i in newly:
            dry_at[i] = t
        active = [i for i in active if i not in newly]
        if spec.on_exhausted != "redistribute":
            ended = True
    unbounded = math.isinf(t) or (t == 0 and math.isinf(limit) and active and not ended)
    out = []
    for i, g in enumerate(spec.groups):
        if unbounded and i in active:
            amount = None
        else:
            amount = used[i]
        if amount is None:
            s_need = t_need = ep = None
        elif tokens_unit:
            t_need = int(math.ceil(amount - 1e-9))
            s_need = int(math.ceil(amount / avg_tok[i] - 1e-9)) if avg_tok[i] else (0 if amount == 0 else None)
            ep = (amount / per_pass[i]) if per_pass[i] else 0.0
        else:
            s_need = int(math.ceil(amount - 1e-9))
            t_need = int(round(s_need * avg_tok[i])) if avg_tok[i] is not None else None
            ep = (amount / per_pass[i]) if per_pass[i] else 0.0
        d = dry_at[i]
        out.append({
            "group": g.path,
            "weight": weights[i],
            "samples": int(group_samples[i]),
            "tokens": None if group_tokens[i] is None else int(group_tokens[i]),
            "samples_needed": s_need,
            "tokens_needed": t_need,
            "epochs_needed": ep,
            "dry_at_chunk": None if d is None else int(d // spec.chunk_size),
        })
    return out


# ----------------------------------------------------------------------------------------------
# the engine

CHUNK_HEAD = ("chunk", "position", "group", "source", "file", "row")
CHUNK_TAIL = ("group_id", "file_id", "loc_offset", "loc_length", "n_bytes", "n_tokens", "epoch")
CHUNK_COLUMNS = CHUNK_HEAD + CHUNK_TAIL   # user columns go between the two
_EPS = 1e-7
_INF = 1 << 62
STATE_VERSION = 2


def end_message(spec: MixSpec, chunks: int, counts, tokens, dry_at: dict) -> str | None:
    """Why a stream of ``chunks`` chunks (per-group ``counts`` samples and ``tokens``) ended,
    when that is not its budget being met: a group ran dry under ``stop`` while others still had
    samples, or the data ran out short of the LIMIT. ``None`` when the ending is the expected one
    (including every group running dry at once: the whole selection was delivered)."""
    names = [g.path for g in spec.groups]
    counts = [int(x) for x in counts]
    per_group = ", ".join(f"{n} {c}" for n, c in zip(names, counts))
    dry = ", ".join(repr(names[g]) for g in sorted(dry_at, key=lambda g: (dry_at[g], g)))
    b = spec.budget
    if b is not None:
        got = chunks if b.kind == "chunks" else int(np.sum(tokens)) if b.kind == "tokens" else sum(counts)
        if got >= b.amount:
            return None
        why = (f"group {dry} ran dry under on_exhausted = '{spec.on_exhausted}'" if dry and spec.on_exhausted == "stop"
               else "the selected data ran out")
        return (f"the mixed stream ended short of its LIMIT {b.amount:g} {b.kind.upper()}: {got} delivered in "
                f"{chunks} chunks ({why}; samples per group: {per_group}); EXPLAIN MIX shows each group's epochs")
    if spec.on_exhausted == "stop" and dry and len(dry_at) < len(names):   # all dry together: a whole epoch
        return (f"group {dry} ran dry under on_exhausted = 'stop': the mixed stream ended after {sum(counts)} "
                f"samples in {chunks} chunks (samples per group: {per_group}); use on_exhausted = "
                "'redistribute' or 'repeat' to go on with the other groups")
    return None


def schedule_chunk(step: int, batch_size: int, chunk_size: int) -> int:
    """Chunk index at which weights declared ``AT STEP step`` take effect.

    ``batch_size`` is what one global training step consumes (samples, or tokens when the
    stream's unit is tokens); the change applies from the first chunk starting at or after the
    first sample of that step: ``ceil(step * batch_size / chunk_size)``.
    """
    if batch_size <= 0 or chunk_size <= 0:
        raise ValueError("batch_size and chunk_size must be positive")
    return -(-int(step) * int(batch_size) // int(chunk_size))


def quota_counts(count: np.ndarray, target: np.ndarray, weight: np.ndarray, house: int) -> np.ndarray:
    """New cumulative counts for one chunk (see the module docstring: EDF / quota rule).

    ``count``: counts before the chunk; ``target``: targets after it; ``weight``: effective
    weights (0 = takes nothing); ``house``: seats to give. Returns counts summing to
    ``count.sum() + house`` with ``floor(target) <= new <= ceil(target)`` for positive weights.
    """
    pos = weight > 0
    lo = np.where(pos, np.maximum(count, np.floor(target + _EPS).astype(np.int64)), count)
    hi = np.where(pos, np.maximum(lo, np.ceil(target - _EPS).astype(np.int64)), lo)
    r = int(house - (lo - count).sum())
    safe_w = np.where(pos, weight, 1.0)
    due = (lo + 1 - target) / safe_w
    if r < 0:  # cannot happen for a feasible target path; degrade gracefully (latest due first)
        extra = lo - count
        order = np.argsort(-(target - lo), kind="stable")
        for g in order:
            take = min(int(extra[g]), -r)
            lo[g] -= take
            r += take
            if r == 0:
                break
        return lo
    elig = np.flatnonzero(hi > lo)
    if r <= len(elig):
        if r:
            pick = elig[np.argsort(due[elig], kind="stable")[:r]]
            lo[pick] += 1
        return lo
    # more seats than the upper quota allows (only with all positive groups at their ceiling)
    lo = hi.copy()
    r = int(house - (lo - count).sum())
    cand = np.flatnonzero(pos)
    if len(cand) == 0:
        return lo
    order = cand[np.argsort(due[cand], kind="stable")]
    for i in range(r):
        lo[order[i % len(order)]] += 1
    return lo


def _normalise(weights: Sequence[float], n: int) -> np.ndarray:
    w = np.asarray([float(x) for x in weights], dtype=np.float64)
    if len(w) != n:
        raise ValueError(f"expected {n} weights (one per leaf group), got {len(w)}")
    if not np.all(np.isfinite(w)) or (w < 0).any():
        raise ValueError(f"weights must be finite and non-negative, got {list(weights)}")
    s = w.sum()
    if s <= 0:
        raise ValueError("at least one weight must be positive")
    return w / s


def _to_numpy(col: pa.ChunkedArray | pa.Array, dtype) -> np.ndarray:
    """Zero-copy numpy view of a null-free column (``dtype=None``: as stored; else cast if needed)."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    x = col.to_numpy(zero_copy_only=False)
    return x if dtype is None else x.astype(dtype, copy=False)


def _arr(x: np.ndarray, typ: pa.DataType) -> pa.Array:
    """Zero-copy Arrow array over a contiguous numpy array of ``typ`` (no nulls, no inference)."""
    x = np.ascontiguousarray(x)
    return pa.Array.from_buffers(typ, len(x), [None, pa.py_buffer(x)])


def _combine(col):
    if isinstance(col, pa.ChunkedArray):
        return col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    return col


def _file_dictionaries(pointers: pa.Table, N: int, compact: dict | None = None):
    """(per-row file code, file paths by code, source code by file code, source names).

    A compact stored selection (:func:`mixsql.selection.compact`) has them in its metadata (no
    column is read). Otherwise uses the planner's dictionary-encoded ``__mix_file`` /
    ``__mix_source`` directly; plain string columns are coded by file_id (O(N), no sort)."""
    if compact is not None:
        fcol = _combine(pointers.column("__mix_file"))
        return (fcol.indices.to_numpy(zero_copy_only=False), fcol.dictionary.cast(pa.string()),
                np.asarray(compact["file_source"], np.int32), pa.array(compact["sources"], pa.string()))
    fcol, scol = _combine(pointers.column("__mix_file")), _combine(pointers.column("__mix_source"))
    if N and pa.types.is_dictionary(fcol.type) and pa.types.is_dictionary(scol.type) \
            and fcol.null_count == 0 and scol.null_count == 0:
        codes = fcol.indices.to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
        paths = fcol.dictionary.cast(pa.string())
        file_source = np.zeros(len(paths), np.int32)
        file_source[codes] = scol.indices.to_numpy(zero_copy_only=False)
        return codes, paths, file_source, scol.dictionary.cast(pa.string())
    if not N:
        return np.zeros(0, np.int32), pa.array([], pa.string()), np.zeros(0, np.int32), pa.array([], pa.string())
    ids, codes = dense_codes(_to_numpy(pointers.column("__mix_file_id"), np.int64))
    first = np.zeros(len(ids), np.int64)
    first[codes[::-1]] = np.arange(N - 1, -1, -1)   # first row of each file
    first_rows = pa.array(first, pa.int64())
    paths = fcol.take(first_rows).cast(pa.string())
    src = scol.take(first_rows).cast(pa.string()).dictionary_encode()
    return codes, paths, src.indices.to_numpy(zero_copy_only=False).astype(np.int32), src.dictionary


def dense_codes(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(distinct, codes)`` of non-empty integer ``values`` (e.g. file ids) without a sort:
    ``distinct`` ascending, ``values == distinct[codes]``; O(N + max - min)."""
    lo = int(values.min())
    seen = np.zeros(int(values.max()) - lo + 1, bool)
    seen[values - lo] = True
    ids = np.flatnonzero(seen)
    lut = np.zeros(len(seen), np.int32)
    lut[ids] = np.arange(len(ids), dtype=np.int32)
    return ids + lo, lut[values - lo]


def _no_token_counts(count: int) -> ProgrammingError:
    return ProgrammingError(f"unit = 'tokens' (or LIMIT ... TOKENS) needs token counts, but {count} selected "
                            "samples have none: register the source with a tokenizer (WITH (tokenizer = ...)) "
                            "or use unit = 'samples'")


def _member(seq: GroupSequence, index: int) -> bool:
    try:
        seq.base_position(index)
    except IndexError:
        return False
    return True


class MixEngine:
    """Chunk stream of one planned MIX statement (see the module docstring for semantics).

    ``batch_size`` (samples or tokens per global training step) maps ``spec.schedule`` onto
    chunk indices at construction (:func:`schedule_chunk`); without it the caller drives the
    schedule with :meth:`apply_schedule_for_step`.
    """

    def __init__(self, pointers: pa.Table | PackedSelection, spec: MixSpec, state: dict | None = None, *,
                 batch_size: int | None = None):
        if spec.chunk_size <= 0:
            raise ProgrammingError(f"SETTINGS chunk_size must be positive, got {spec.chunk_size}")
        if spec.on_exhausted not in ("stop", "redistribute", "repeat"):
            raise ProgrammingError(f"unknown on_exhausted {spec.on_exhausted!r}: use stop, redistribute or repeat")
        self.spec = spec
        self.n_groups = len(spec.groups)
        self._paths = pa.array([g.path for g in spec.groups], pa.string())
        self._packed = pointers if isinstance(pointers, PackedSelection) else None
        if self._packed is not None:
            counts = self._init_packed(self._packed)
        else:
            counts = self._init_table(pointers)
        self._shard_orders = ShardOrders()   # groups over the same files share an epoch's shard order
        self._seq = LazySequences(self.n_groups, self._sequence)
        self._runs = RunCache(self._n)
        self._passes = 1 if spec.on_exhausted != "repeat" else spec.max_epochs  # None = unbounded
        self._names = [*CHUNK_HEAD, *self.user_columns, *CHUNK_TAIL]
        self._chunk_schema = None
        self._inter_cache: dict = {}
        self._positions = np.arange(max(1, spec.chunk_size if spec.unit == "samples" else 1024), dtype=np.int32)
        self._fingerprint_of = (self.n_rows, counts)
        self._fingerprint_memo = None
        self._reset(batch_size or spec.batch_size)
        if state is not None:
            self.load_state_dict(state)

    def _init_packed(self, sel: PackedSelection) -> np.ndarray:
        """Fields of an engine over a packed selection (:mod:`mixsql.packed`): nothing per sample."""
        if len(sel.group_sizes) != self.n_groups:
            raise ProgrammingError(f"the packed selection has {len(sel.group_sizes)} groups, the spec {self.n_groups}")
        self.n_rows = sel.num_rows
        self._n, self._bounds, self._order = sel.group_sizes.copy(), sel.bounds, None
        spec = self.spec
        self._tokens_needed = spec.counts_tokens
        if self._tokens_needed and sel.tokens is None:
            raise ProgrammingError(f"the packed selection {sel.directory} has no token counts: remove it and "
                                   "open the statement again")
        if self._tokens_needed and sel.token_nulls:
            raise _no_token_counts(sel.token_nulls)
        self._group_tokens = sel.tokens if self._tokens_needed else None   # mapped, base order
        self._np = {"__mix_n_tokens": self._group_tokens}
        self._group_files = None
        self.user_columns, self._user = [], None
        self._file_paths_py = sel.rows.paths
        self._file_source, self._sources = sel.rows.file_source, sel.rows.sources
        self._file_id_by_code = sel.rows.file_ids
        return sel.group_sizes

    def _init_table(self, pointers: pa.Table) -> np.ndarray:
        """Fields of an engine over a pointer table (planned here, or a cached selection's)."""
        spec = self.spec
        meta = pointers.schema.metadata or {}
        stored = meta.get(SORTED_KEY) == b"1"   # a cached selection: rows already in base order
        compact = json.loads(meta[COMPACT_KEY]) if stored and COMPACT_KEY in meta else None
        missing = [c for c in MIX_COLUMNS if c not in pointers.column_names
                   and not (compact is not None and c in COMPACT_DERIVED)]
        if spec.ordered and not stored and ORDER_COLUMN not in pointers.column_names and \
                not order_key_columns(pointers.column_names):
            missing.append(f"{ORDER_COLUMN} (or {ORDER_KEY_PREFIX}<i>_<asc|desc>_<nf|nl> key columns)")
        if missing:
            raise ProgrammingError(f"pointer table lacks the planner columns {missing}")
        G = self.n_groups
        self.n_rows = N = pointers.num_rows
        if compact is not None:   # group sizes from the metadata: no column is read
            gid, counts = None, np.asarray(compact["group_sizes"], np.int64)
            if len(counts) != G or int(counts.sum()) != N:
                raise ProgrammingError(f"the stored selection's group sizes do not match its {N} rows and {G} groups")
        else:
            gid = _to_numpy(pointers.column("__mix_group"), np.int32) if N else np.zeros(0, np.int32)
            if N and (gid.min() < 0 or gid.max() >= G):
                raise ProgrammingError(f"__mix_group values must lie in 0..{G - 1}")
            counts = np.bincount(gid, minlength=G) if N else np.zeros(G, np.int64)
        self._tokens_needed = spec.counts_tokens
        tokens = None
        if self._tokens_needed:
            col = pointers.column("__mix_n_tokens")
            if col.null_count:
                raise _no_token_counts(col.null_count)
            tokens = _to_numpy(col, np.int64)
        order = None if stored else self._base_order(pointers, gid)
        bounds = np.concatenate([[0], np.cumsum(counts)])
        self._n = counts.astype(np.int64)
        self._bounds = bounds.astype(np.int64)
        self._order = order         # base order of the rows (None: the table is in it already)
        self._group_tokens = tokens  # n_tokens by row, when composition needs them (+ EOS_TOKENS when drawn)
        # file of every row: the shuffle's shard windows (ORDER BY groups read in their order)
        self._group_files = (_to_numpy(pointers.column("__mix_file_id"), np.int32)
                             if N and not spec.ordered else None)
        # output projection: numpy pointer columns + per-file dictionaries; user columns via take
        user = [c for c in pointers.column_names
                if not c.startswith("__mix_") and c not in CHUNK_COLUMNS]
        self.user_columns = user
        self._user = pointers.select(user).combine_chunks() if user else None
        # pointer columns as stored (a mapped selection keeps its narrow types: gathers cast per chunk)
        self._np = {c: _to_numpy(pointers.column(c), None if compact is not None else dt) if N else np.zeros(0, dt)
                    for c, dt in (("__mix_row", np.int64), ("__mix_file_id", np.int32),
                                  ("__mix_offset", np.int64), ("__mix_length", np.int32),
                                  ("__mix_n_bytes", np.int64)) if c in pointers.column_names}
        ntok = pointers.column("__mix_n_tokens")
        self._ntok_nulls = ntok.null_count > 0
        self._ntok_col = _combine(ntok) if self._ntok_nulls else None
        self._np["__mix_n_tokens"] = (tokens if tokens is not None else
                                      (_to_numpy(ntok, np.int64) if not self._ntok_nulls and N else np.zeros(N, np.int64)))
        self._file_code, file_paths, self._file_source, self._sources = _file_dictionaries(pointers, N, compact)
        self._file_paths_py = file_paths.to_pylist()
        self._file_id_by_code = None if compact is None else np.asarray(compact["file_ids"], np.int32)
        return counts

    # --- construction helpers ---------------------------------------------------------------
    @staticmethod
    def _base_order(pointers: pa.Table, gid: np.ndarray) -> np.ndarray:
        """Row indices sorted by group, then ORDER BY keys (if any), then (file_id, row): a
        function of the values only (the table may come in any row order)."""
        N = len(gid)
        if N == 0:
            return np.zeros(0, np.int64)
        keys = order_key_columns(pointers.column_names)
        if keys and ORDER_COLUMN not in pointers.column_names:
            return ordered_permutation(gid, _to_numpy(pointers.column("__mix_file_id"), np.int64),
                                       _to_numpy(pointers.column("__mix_row"), np.int64),
                                       [(pointers.column(n), d, f) for n, d, f in keys])
        if ORDER_COLUMN in pointers.column_names:
            key = _to_numpy(pointers.column(ORDER_COLUMN), np.int64)
        else:
            key = (_to_numpy(pointers.column("__mix_file_id"), np.int64) << 40) | \
                _to_numpy(pointers.column("__mix_row"), np.int64)
        perm = pointer_order(gid, key)
        return np.arange(N, dtype=np.int64) if perm is None else perm

    @classmethod
    def _counting(cls, spec: MixSpec, group_samples: Sequence[int], batch_size: int | None = None) -> "MixEngine":
        """Composition-only engine from group sizes (``unit = 'samples'``, no token budget):
        ``skip_chunk`` works, rows cannot be materialised. Used by :func:`forecast`."""
        self = cls.__new__(cls)
        self.spec = spec
        self.n_groups = len(spec.groups)
        self.n_rows = int(sum(group_samples))
        self._n = np.asarray(group_samples, np.int64).reshape(self.n_groups)
        self._passes = 1 if spec.on_exhausted != "repeat" else spec.max_epochs
        self._tokens_needed = False
        self._seq = None
        self._fingerprint_of = None
        self._fingerprint_memo = None
        self._reset(batch_size or spec.batch_size)
        return self

    def _initial_weights(self) -> np.ndarray:
        sch = self.spec.schedule
        if sch and sch[0].step == 0:
            return _normalise(sch[0].weights, self.n_groups)
        return _normalise(self.spec.weights(), self.n_groups)

    def _sequence(self, g: int) -> GroupSequence:
        """Group g's consumption order (built on the group's first draw: :class:`LazySequences`)."""
        lo, hi = int(self._bounds[g]), int(self._bounds[g + 1])
        order, tokens, fids = self._order, self._group_tokens, self._group_files
        members = range(lo, hi) if order is None else order[lo:hi]
        # a sample occupies its text's tokens plus the EOS the packer appends (spec.EOS_TOKENS,
        # added by GroupSequence: a stored selection's mapped column is used without a copy)
        tok = None if tokens is None else (tokens[lo:hi] if order is None else tokens[members])
        files = None if fids is None else (fids[lo:hi] if order is None else fids[members])
        shuffle = None if self.spec.ordered else self.spec.shuffle
        runs = self._packed.shard_runs(g) if self._packed is not None else None
        return GroupSequence(members, self.spec.seed, g, shuffle, tok, files, runs, self._shard_orders,
                             EOS_TOKENS)

    @property
    def _fingerprint(self) -> str | None:
        """Hash of (spec, rows, group sizes) that a state must match (computed on first use:
        with many groups the spec's JSON is the slow part of building an engine)."""
        if self._fingerprint_memo is None and self._fingerprint_of is not None:
            N, counts = self._fingerprint_of
            text = f"{self.spec.to_json()}|{N}|{counts.tolist()}"
            self._fingerprint_memo = hashlib.sha1(text.encode()).hexdigest()[:16]
        return self._fingerprint_memo

    def _after(self, j: int):
        """``Composer.after(j)`` remembered for the last few ``j`` (a chunk needs the counts
        after it and after the chunk before; consecutive chunks share one)."""
        hit = self._after_memo.get(j)
        if hit is None:
            hit = self._comp.after(j)
            if len(self._after_memo) >= 4:
                self._after_memo.pop(next(iter(self._after_memo)))
            self._after_memo[j] = hit
        return hit

    @without_gc   # the composer's split tree: a tuple per node, thousands with many groups
    def _reset(self, batch_size: int | None) -> None:
        self._k = 0
        self._ended = False
        self._after_memo: dict = {}
        self._comp = Composer(self.spec, self._n, self._seq, self._initial_weights())
        if self.spec.schedule and batch_size:
            for st in self.spec.schedule:
                if st.step > 0:
                    self.set_weights(st.weights, schedule_chunk(st.step, batch_size, self.spec.chunk_size))

    # --- weights ------------------------------------------------------------------------------
    def set_weights(self, weights: Sequence[float], at_chunk: int | None = None) -> int:
        """Record new target weights (one per leaf group) from chunk ``at_chunk`` on
        (default: the next chunk). Returns the chunk index. Changes are part of the state."""
        at = self._k if at_chunk is None else int(at_chunk)
        if at < self._k:
            raise ValueError(f"cannot change weights at chunk {at}: the stream is at chunk {self._k}")
        self._comp.set_weights(_normalise(weights, self.n_groups), at)
        self._after_memo.clear()
        return at

    def apply_schedule_for_step(self, step: int) -> int | None:
        """Put the schedule's weights for training step ``step`` in force from the next chunk;
        returns that chunk index, or None when nothing changes."""
        chosen = None
        for st in self.spec.schedule:
            if st.step <= step:
                chosen = st
        if chosen is None:
            return None
        w = _normalise(chosen.weights, self.n_groups)
        if np.allclose(self._weights_at(self._k), w, rtol=0, atol=1e-15):
            return None
        return self.set_weights(w, None)

    def _weights_at(self, k: int) -> np.ndarray:
        """Weights in force for chunk k (pending changes included)."""
        comp = self._comp
        pending = [w for a, w in comp.log if a <= k]
        if pending:
            seg = comp.segs[-1]
            last_at = max(a for a, _ in comp.log if a <= k)
            if last_at > seg.k:
                return np.asarray(pending[-1], np.float64)
        comp.resolve(max(0, k - 1))
        seg = comp.segment_for(k)
        newer = [w for a, w in comp.log if seg.k < a <= k]
        return np.asarray(newer[-1], np.float64) if newer else seg.weights

    @property
    def dry_at_chunk(self) -> dict[int, int]:
        """Group -> chunk whose composition first wanted a sample the group no longer had
        (diagnostic; resolved as far as the stream was read)."""
        return {g: k for g, k in self._comp.dry_at.items() if k <= self._k}


    # --- rows -----------------------------------------------------------------------------------
    def _rows(self, count: np.ndarray, draws: np.ndarray):
        """(pointer row indices, group ids, epochs) of a chunk, interleaved across groups."""
        gs, d, idx, epochs = self._runs.rows(self._seq, count, draws)
        if len(idx) == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros(0, np.int32)
        if len(gs) > 1:
            perm, gids = self._interleave(gs, d)
            idx, epochs = idx[perm], epochs[perm]
        else:
            gids = np.full(len(idx), gs[0], np.int32)
        return idx, gids, epochs

    def _interleave(self, gs: np.ndarray, d: np.ndarray):
        """(permutation, group ids) spreading each group's draws evenly over the chunk; cached
        per composition (consecutive chunks mostly repeat a few)."""
        ck = (gs.tobytes(), d.tobytes())
        hit = self._inter_cache.get(ck)
        if hit is None:
            total = int(d.sum())
            first = np.repeat(np.cumsum(d) - d, d)
            key = (np.arange(total) - first + 0.5) / np.repeat(d, d)
            perm = np.argsort(key, kind="stable")
            hit = (perm, np.repeat(gs.astype(np.int32), d)[perm])
            if len(self._inter_cache) >= 64:
                self._inter_cache.pop(next(iter(self._inter_cache)))
            self._inter_cache[ck] = hit
        return hit

    def _cut_to_budget(self, k: int, idx: np.ndarray, gids: np.ndarray, epochs: np.ndarray):
        """A budget cutting rows (see the module docstring): keep the interleaved prefix of
        chunk k that reaches it."""
        b = self.spec.budget
        c, tok = self._after(k - 1)
        if b.kind == "samples":
            keep = max(0, b.amount - int(c.sum()))
        else:
            left = b.amount - int(tok.sum())
            cum = np.cumsum(self._token_array()[idx] + EOS_TOKENS) if len(idx) else np.zeros(0)
            keep = int(np.searchsorted(cum, left, side="left")) + 1
        if keep < len(idx):
            idx, gids, epochs = idx[:keep], gids[:keep], epochs[:keep]
            got = c + np.bincount(gids, minlength=self.n_groups)
            for g, at in list(self._comp.dry_at.items()):   # the budget ended the stream first
                if at == k and got[g] < self._comp.sup[g]:
                    del self._comp.dry_at[g]
        return idx, gids, epochs

    def _token_array(self) -> np.ndarray:
        return self._np["__mix_n_tokens"]

    # --- public ---------------------------------------------------------------------------------
    @property
    def next_index(self) -> int:
        """Index of the chunk the next ``next_chunk()`` returns."""
        return self._k

    @property
    def total(self) -> int:
        """Nominal amount composed so far (samples, or tokens when unit = 'tokens')."""
        return self._comp.end_total(self._k - 1) if self._k else 0

    @property
    def ended(self) -> bool:
        return self._ended or not self._comp.exists(self._k)

    def seek(self, k: int) -> None:
        """Position the stream at chunk ``k`` directly (O(groups x log), no replay)."""
        self._k = int(k)
        self._ended = False

    def skip_chunk(self) -> bool:
        """Advance past the next chunk without materialising it; False when the stream ended."""
        if not self._comp.exists(self._k):
            self._ended = True
            self._warn_end()
            return False
        self._k += 1
        return True

    def next_chunk(self) -> pa.Table | None:
        """The next chunk (an Arrow table, see CHUNK_COLUMNS), or None when the stream ended."""
        t = self.chunk(self._k)
        if t is None:
            self._ended = True
            self._warn_end()
            return None
        self._k += 1
        return t

    def _warn_end(self) -> None:
        """An :class:`~mixsql.errors.ExhaustedWarning` (once per engine) when the stream ended
        short of its LIMIT or because a group ran dry under ``stop``: never a silent short stream."""
        if getattr(self, "_end_warned", False):
            return
        self._end_warned = True
        msg = end_message(self.spec, self._k, *self._comp.after(self._k - 1), self._comp.dry_at)
        if msg:
            import warnings

            from .errors import ExhaustedWarning

            warnings.warn(msg, ExhaustedWarning, stacklevel=3)

    def draws(self, k: int) -> np.ndarray | None:
        """Samples each group gives to chunk k (None when chunk k is not part of the stream)."""
        if not self._comp.exists(k):
            return None
        return self._after(k)[0] - self._after(k - 1)[0]

    def chunk(self, k: int) -> pa.Table | None:
        """Chunk ``k`` computed directly (a pure function of k, the spec and recorded weight
        changes), or None when the stream has fewer chunks."""
        comp = self._comp
        if not comp.exists(k):
            return None
        start = self._after(k - 1)[0]
        end = self._after(k)[0]
        idx, gids, epochs = self._rows(start, end - start)
        if comp.cut_chunk == k:
            idx, gids, epochs = self._cut_to_budget(k, idx, gids, epochs)
        return self._table(k, idx, gids, epochs)


    def __iter__(self) -> Iterator[pa.Table]:
        while True:
            t = self.next_chunk()
            if t is None:
                return
            yield t

    def _table(self, k: int, idx: np.ndarray, gids: np.ndarray, epochs: np.ndarray) -> pa.Table:
        """One chunk table: a gather per pointer column, dictionaries compacted to the chunk's
        files and sources (sorted by code: deterministic); no type inference, no Python loops."""
        n = len(idx)
        cols = self._gather(idx)
        code = cols["code"]
        srt = np.sort(code)
        ucode = srt[np.concatenate(([True], srt[1:] != srt[:-1]))] if n else srt
        inv = np.searchsorted(ucode, code).astype(np.int32)
        fp = self._file_paths_py
        files = pa.DictionaryArray.from_arrays(inv, pa.array([fp[c] for c in ucode.tolist()], pa.string()))
        fsrc = self._file_source[ucode]
        if len(self._sources) == 1:
            source = pa.DictionaryArray.from_arrays(np.zeros(n, np.int32), self._sources)
        else:
            usrc = np.unique(fsrc)
            sinv = np.searchsorted(usrc, fsrc).astype(np.int32)
            source = pa.DictionaryArray.from_arrays(sinv[inv], self._sources.take(usrc))
        user = self._user.take(idx).columns if self._user is not None else []
        gid32 = gids.astype(np.int32, copy=False)
        if len(self._positions) < n:
            self._positions = np.arange(max(n, 2 * len(self._positions)), dtype=np.int32)
        arrays = [
            _arr(np.full(n, k, np.int64), pa.int64()),
            _arr(self._positions[:n], pa.int32()),
            pa.DictionaryArray.from_arrays(gid32, self._paths),
            source,
            files,
            _arr(cols["row"].astype(np.int64, copy=False), pa.int64()),
            *user,
            _arr(gid32, pa.int32()),
            _arr(cols["file_id"].astype(np.int32, copy=False), pa.int32()),
            _arr(cols["offset"].astype(np.int64, copy=False), pa.int64()),
            _arr(cols["length"].astype(np.int32, copy=False), pa.int32()),
            _arr(cols["n_bytes"].astype(np.int64, copy=False), pa.int64()),
            cols["n_tokens"],
            _arr(epochs.astype(np.int32, copy=False), pa.int32()),
        ]
        return pa.Table.from_arrays(arrays, schema=self._schema(arrays))

    def _gather(self, idx: np.ndarray) -> dict:
        """Pointer columns of base-order rows ``idx`` (numpy; ``n_tokens`` an Arrow array)."""
        if self._packed is not None:
            c = self._packed.take(idx)
            tok = c["n_tokens"].astype(np.int64)
            c["n_tokens"] = pa.array(tok, pa.int64(), mask=tok < 0) if (tok < 0).any() else _arr(tok, pa.int64())
            c["file_id"] = self._file_id_by_code[c["code"]]
            return c
        P = self._np
        code = self._file_code[idx]
        fid = self._file_id_by_code[code] if self._file_id_by_code is not None else P["__mix_file_id"][idx]
        ntok = self._ntok_col.take(idx) if self._ntok_nulls else _arr(P["__mix_n_tokens"][idx], pa.int64())
        return {"code": code, "row": P["__mix_row"][idx], "file_id": fid, "offset": P["__mix_offset"][idx],
                "length": P["__mix_length"][idx], "n_bytes": P["__mix_n_bytes"][idx], "n_tokens": ntok}

    def _schema(self, arrays) -> pa.Schema:
        if self._chunk_schema is None:
            self._chunk_schema = pa.schema([pa.field(nm, a.type) for nm, a in zip(self._names, arrays)])
        return self._chunk_schema

    # --- sizes ---------------------------------------------------------------------------------
    def stream_end(self) -> int | None:
        """Number of chunks in the stream, or None when it never ends (O(groups x log))."""
        comp = self._comp
        comp.resolve(comp.scanned + (1 << 40))
        return comp.end

    def chunk_rows(self, k: int) -> int:
        """Rows (samples) of chunk ``k``, 0 beyond the end; O(groups) (a budget-cut chunk is built)."""
        d = self.draws(k)
        if d is None:
            return 0
        return self.chunk(k).num_rows if self._comp.cut_chunk == k else int(d.sum())

    # --- inverse: where a sample is consumed ---------------------------------------------------
    def locate(self, file: str, row: int, file_id: int | None = None) -> int | None:
        """Pointer-table index of sample ``(file, row)``, or None when the statement did not select
        it. With ``file_id`` (the catalog's id of ``file``) and groups stored in (file, row) order
        (a cached selection without ORDER BY) it is a binary search per group, else one scan."""
        codes = getattr(self, "_file_codes_by_path", None)
        if codes is None:
            codes = self._file_codes_by_path = {p: i for i, p in enumerate(self._file_paths_py)}
        code = codes.get(file)
        if code is None:
            return None
        last = getattr(self, "_located", None)
        if last is not None and last[0] == (file, int(row)):
            return last[1]
        if self._packed is not None:
            fid = int(self._file_id_by_code[code])
            if not 0 <= int(row) < int(self._packed.rows.starts[code + 1] - self._packed.rows.starts[code]):
                return None
            found = self._packed.position_of(int(self._packed.rows.gidx(np.array([fid]), np.array([int(row)]))[0]))
            self._located = ((file, int(row)), found)
            return found
        rows = self._np["__mix_row"]
        if file_id is not None and not self.spec.ordered and all(isinstance(q.members, range) for q in self._seq):
            fids, found = self._np["__mix_file_id"], None
            file_id, row = fids.dtype.type(file_id), rows.dtype.type(row)   # same dtypes: no copy of the arrays
            for q in self._seq:
                lo, hi = q.members.start, q.members.stop
                a = lo + int(np.searchsorted(fids[lo:hi], file_id, side="left"))
                b = lo + int(np.searchsorted(fids[lo:hi], file_id, side="right"))
                i = a + int(np.searchsorted(rows[a:b], row))
                if i < b and rows[i] == row and self._file_code[i] == code:
                    found = i
                    break
        else:
            hits = np.flatnonzero(rows == int(row))
            hits = hits[self._file_code[hits] == code]
            found = int(hits[0]) if len(hits) else None
        self._located = ((file, int(row)), found)
        return found

    def occurrences(self, file: str, row: int, file_id: int | None = None) -> Iterator[tuple[int, int, int]]:
        """Every ``(epoch, chunk, position)`` at which sample ``(file, row)`` is consumed, in order,
        computed by inverting the group's permutation (:meth:`GroupSequence.sequence_position`)
        and the composition (:meth:`Composer.chunk_of`), never by composing the chunks before it.
        With unbounded repeats the iterator does not end: stop consuming it."""
        idx = self.locate(file, row, file_id)
        if idx is None:
            return
        for g, seq in enumerate(self._seq):
            try:
                base = seq.base_position(idx)
            except IndexError:
                continue
            break
        else:
            return
        n, e = int(self._n[g]), 0
        while self._passes is None or e < self._passes:
            count = e * n + seq.sequence_position(e, base)
            k = self._comp.chunk_of(g, count)
            if k is None:
                return
            p = self._position_in_chunk(k, g, count, file, row, e)
            if p is None:   # a budget cut the chunk before it: the stream ends there
                return
            yield e, k, p
            e += 1

    def _position_in_chunk(self, k: int, g: int, count: int, file: str, row: int, epoch: int) -> int | None:
        """Position in chunk ``k`` of group ``g``'s draw number ``count``: where the chunk's
        interleaving puts it (O(chunk size), no rows materialised); None when a budget cut it."""
        if self._comp.cut_chunk == k:
            t = self.chunk(k)
            at = np.flatnonzero((t.column("row").to_numpy() == int(row)) & (t.column("epoch").to_numpy() == epoch)
                                & (t.column("group_id").to_numpy() == g))
            at = [int(p) for p in at if t.column("file")[int(p)].as_py() == file]
            return at[0] if at else None
        start = self._comp.after(k - 1)[0]
        d = self._comp.after(k)[0] - start
        gs = np.flatnonzero(d > 0)
        src = int(d[gs[gs < g]].sum()) + count - int(start[g])   # index among the chunk's draws in group order
        if len(gs) == 1:
            return src
        perm, _ = self._interleave(gs, d[gs])
        return int(np.flatnonzero(perm == src)[0])

    def pointer(self, index: int) -> dict:
        """Group, source, file, row and token count of pointer-table row ``index``."""
        c = self._gather(np.array([index], np.int64))
        code = int(c["code"][0])
        group = next(gi for gi, seq in enumerate(self._seq) if _member(seq, index))
        return {"group": self._paths[group].as_py(), "source": self._sources[int(self._file_source[code])].as_py(),
                "file": self._file_paths_py[code], "row": int(c["row"][0]), "n_tokens": c["n_tokens"][0].as_py()}

    # --- state -------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything needed to continue the stream exactly here; JSON-able, O(groups): the
        weights segment in force, the pending weight changes and the position."""
        return {"version": STATE_VERSION, "fingerprint": self._fingerprint, "next_index": self._k,
                **self._comp.state(self._k)}

    def load_state_dict(self, d: dict) -> None:
        """Continue from ``state_dict()`` output, O(groups): no replay."""
        if d.get("version") != STATE_VERSION:
            raise ValueError(f"unsupported engine state version {d.get('version')!r}")
        if d.get("fingerprint") != self._fingerprint:
            raise ValueError(
                "engine state belongs to a different stream (statement, settings or catalog snapshot "
                "changed); restore it with the same MIX statement over the same catalog"
            )
        self._comp.load(d)
        self._after_memo.clear()
        self._k = int(d["next_index"])
        self._ended = False

    # --- introspection --------------------------------------------------------------------------
    def targets(self) -> np.ndarray:
        """Cumulative targets per group after the last chunk read (samples or tokens)."""
        return self._comp.targets_after(self._k - 1)

    def delivered(self) -> np.ndarray:
        """Cumulative delivered amount per group in the stream's unit after the last chunk read."""
        c, tok = self._after(self._k - 1)
        return (tok if self.spec.unit == "tokens" else c).copy()

    def totals(self, k: int) -> tuple[np.ndarray, np.ndarray | None]:
        """(samples, tokens or None) per group delivered by chunks [0, k), computed directly."""
        c, tok = self._after(k - 1)
        return c.copy(), None if tok is None else tok.copy()

    @property
    def share_bound(self) -> float:
        """Largest |delivered - target| of any group the current weights allow (see composition)."""
        return self._comp.segment_for(max(0, self._k - 1)).tree.share_bound
