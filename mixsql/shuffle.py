"""Per-group consumption order: a locality-aware seeded permutation, or the ORDER BY order.

A group's samples, in base order (``(file_id, row)`` for the shuffle, the ORDER BY key for
ordered groups), are consumed epoch by epoch as a sequence of *windows*:

* **Shuffle(block=B, window=W)** (no ORDER BY). The base order is cut into blocks of ``B``
  consecutive samples (same file, neighbouring rows: one read covers a block). Per epoch the
  blocks are permuted uniformly (seed: ``(spec.seed, group id, epoch)``); consecutive runs of
  ``W`` permuted blocks form a window, and the ``<= B*W`` samples of a window are permuted
  uniformly again (seed: ``(spec.seed, group id, epoch, window index)``).

  Quality vs locality trade-off: within a window the order is uniform, and windows come from
  anywhere in the group, so any two samples end up close together with probability close to a
  uniform shuffle as soon as ``B*W`` is well above the chunk's share of the group; what is
  *not* uniform is correlation at the block scale: the ``B`` neighbours of a sample (same file,
  adjacent rows) always land in the same window, i.e. within ``B*W`` positions of it. A chunk
  that draws ``k`` samples from a group touches at most ``min(k, W + 1)`` blocks of that group,
  hence at most ``W + 1`` distinct (file, region) reads instead of ``k`` random seeks.
  ``block=1`` is a full uniform permutation (best quality, one random read per sample); large
  ``block`` and small ``window`` read almost sequentially (weakest mixing). Defaults 16 x 64:
  windows of 1024 samples, a 512-sample chunk touches <= 65 blocks. The setting is exposed as
  ``SETTINGS (shuffle_block = B, shuffle_window = W)``.

* **Ordered** (ORDER BY): the base order itself, identical in every epoch (a curriculum that
  repeats under ``on_exhausted = 'repeat'``).

Everything is computed lazily per (epoch, window) with numpy ``Generator(PCG64)`` streams seeded
from ``SeedSequence``; nothing touches global RNG state, and any position of any epoch is
reached in O(window) time without generating the positions before it (random access).
"""
from __future__ import annotations

import re

import numpy as np

from .spec import Shuffle

ORDERED_WINDOW = 4096  # window size used to walk ordered groups (no shuffling)
_BLOCK_PERM, _WINDOW_PERM = 0, 1


def pointer_order(group: np.ndarray, key: np.ndarray) -> np.ndarray | None:
    """Permutation sorting rows by (group, key) -- ``key`` unique per row -- or None when they
    already are. A stable sort by key (skipped when already sorted; DuckDB's output is made of
    sorted runs, so it is cheap anyway), then a stable radix split by group. The result depends
    only on the values, never on the order rows came in."""
    n = len(key)
    if n < 2:
        return None
    dg = np.diff(group)
    up = np.diff(key) > 0
    if not (dg < 0).any() and up[dg == 0].all():
        return None
    perm = None if up.all() else np.argsort(key, kind="stable")
    g = group if perm is None else group[perm]
    gmax = int(g.max())
    if gmax > 0:
        small = np.uint8 if gmax < 256 else np.uint16 if gmax < 65536 else np.int64
        split = np.argsort(g.astype(small, copy=False), kind="stable")
        perm = split if perm is None else perm[split]
    return perm


def _rng(*words: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([w % (1 << 64) for w in words])))


class GroupSequence:
    """Consumption order of one group.

    ``members``: pointer-table row indices of the group's samples in base order, or a
    ``range`` when they are contiguous (a selection stored in base order: no index array).
    ``tokens``: per-member token counts (same order) or ``None`` when not needed.
    ``shuffle=None`` means ordered (base order in every epoch).
    """

    def __init__(self, members: np.ndarray, seed: int, group_id: int, shuffle: Shuffle | None,
                 tokens: np.ndarray | None = None):
        self.members = members
        self._start = members.start if isinstance(members, range) else None
        self.n = int(len(members))
        self.seed = int(seed)
        self.group_id = int(group_id)
        self.shuffled = shuffle is not None
        if shuffle is not None:
            if shuffle.block < 1 or shuffle.window < 1:
                raise ValueError(f"shuffle block and window must be >= 1, got {shuffle}")
            self.block, self.window = int(shuffle.block), int(shuffle.window)
        else:
            self.block, self.window = ORDERED_WINDOW, 1
        self.nblocks = -(-self.n // self.block) if self.n else 0
        self.tokens = tokens
        self.total_tokens = int(tokens.sum()) if tokens is not None else None
        self._block_tokens = (
            np.add.reduceat(tokens, np.arange(0, self.n, self.block)) if tokens is not None and self.n else None
        )
        self._epochs: dict[int, tuple] = {}
        self._windows: dict[tuple[int, int], np.ndarray] = {}

    # --- per-epoch layout -------------------------------------------------------------
    def _layout(self, epoch: int):
        lay = self._epochs.get(epoch)
        if lay is None:
            nb, B, W = self.nblocks, self.block, self.window
            if self.shuffled:
                perm = _rng(self.seed, _BLOCK_PERM, self.group_id, epoch).permutation(nb)
            else:
                perm = np.arange(nb)
            lens = np.full(nb, B, dtype=np.int64)
            if nb:
                lens[-1] = self.n - (nb - 1) * B
            wstarts_blocks = np.arange(0, nb, W)
            wsize = np.add.reduceat(lens[perm], wstarts_blocks) if nb else np.zeros(0, np.int64)
            wstart = np.concatenate([[0], np.cumsum(wsize)])
            wtok = None
            if self._block_tokens is not None:
                wt = np.add.reduceat(self._block_tokens[perm], wstarts_blocks) if nb else np.zeros(0, np.int64)
                wtok = np.concatenate([[0], np.cumsum(wt)])
            lay = (perm, wstart, wtok)
            if len(self._epochs) >= 2:
                self._epochs.pop(next(iter(self._epochs)))
            self._epochs[epoch] = lay
        return lay

    def _window(self, epoch: int, w: int) -> np.ndarray:
        """Base-order positions of window ``w`` of ``epoch``, in consumption order."""
        key = (epoch, w)
        got = self._windows.get(key)
        if got is not None:
            return got
        perm, _, _ = self._layout(epoch)
        B, W = self.block, self.window
        blocks = perm[w * W:(w + 1) * W]
        if W == 1:
            b = int(blocks[0])
            pos = np.arange(b * B, min((b + 1) * B, self.n), dtype=np.int64)
        else:
            starts = blocks * B
            lens = np.minimum(B, self.n - starts)
            offs = np.cumsum(lens) - lens
            pos = np.repeat(starts - offs, lens) + np.arange(int(lens.sum()), dtype=np.int64)
        if self.shuffled and len(pos) > 1:
            pos = pos[_rng(self.seed, _WINDOW_PERM, self.group_id, epoch, w).permutation(len(pos))]
        if len(self._windows) >= 8:
            self._windows.pop(next(iter(self._windows)))
        self._windows[key] = pos
        return pos

    # --- public ----------------------------------------------------------------------------
    def positions(self, epoch: int, start: int, stop: int) -> np.ndarray:
        """Base-order positions of sequence positions ``[start, stop)`` of ``epoch``."""
        if stop <= start:
            return np.zeros(0, dtype=np.int64)
        _, wstart, _ = self._layout(epoch)
        w0 = int(wstart.searchsorted(start, side="right")) - 1
        lo0 = int(wstart[w0])
        if stop <= int(wstart[w0 + 1]):   # the common case: one window
            return self._window(epoch, w0)[start - lo0:stop - lo0]
        w1 = int(wstart.searchsorted(stop - 1, side="right")) - 1
        parts = []
        for w in range(w0, w1 + 1):
            win = self._window(epoch, w)
            lo = max(start, int(wstart[w])) - int(wstart[w])
            hi = min(stop, int(wstart[w + 1])) - int(wstart[w])
            parts.append(win[lo:hi])
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def indices(self, epoch: int, start: int, stop: int) -> np.ndarray:
        """Pointer-table row indices of sequence positions ``[start, stop)`` of ``epoch``."""
        pos = self.positions(epoch, start, stop)
        return pos + self._start if self._start is not None else self.members[pos]

    def token_prefix(self, epoch: int, pos: int) -> int:
        """Tokens of sequence positions ``[0, pos)`` of ``epoch``."""
        if pos <= 0:
            return 0
        if pos >= self.n:
            return self.total_tokens
        _, wstart, wtok = self._layout(epoch)
        w = int(np.searchsorted(wstart, pos, side="right")) - 1
        within = pos - int(wstart[w])
        return int(wtok[w]) + int(self.tokens[self._window(epoch, w)[:within]].sum())

    def find_tokens(self, epoch: int, target: int) -> int | None:
        """Smallest ``pos`` with ``token_prefix(epoch, pos) >= target`` (None if past the epoch)."""
        if target <= 0:
            return 0
        if target > self.total_tokens:
            return None
        _, wstart, wtok = self._layout(epoch)
        w = int(np.searchsorted(wtok, target, side="left")) - 1  # wtok[w] < target <= wtok[w+1]
        cum = np.cumsum(self.tokens[self._window(epoch, w)])
        j = int(np.searchsorted(cum, target - int(wtok[w]), side="left"))
        return int(wstart[w]) + j + 1


# --- ORDER BY ranking ----------------------------------------------------------------------------
# The planner returns each ORDER BY key as a column named ``__mix_order_<i>_<asc|desc>_<nf|nl>``
# (nf: NULLS FIRST, nl: NULLS LAST); rows are then ranked here, in numpy, by
# (group, key_0, ..., key_k, file_id, row) -- DuckDB's ORDER BY semantics: NaN is the largest
# float (above +inf), -0.0 == 0.0, strings/blobs compare bytewise (DuckDB's default binary
# collation), NULL placement as given (DuckDB's default is NULLS LAST for ASC and DESC).
ORDER_KEY_PREFIX = "__mix_order_"
_ORDER_KEY_RE = re.compile(r"^__mix_order_(\d+)_(asc|desc)_(nf|nl)$")


def order_key_name(i: int, descending: bool, nulls_first: bool) -> str:
    return f"{ORDER_KEY_PREFIX}{i}_{'desc' if descending else 'asc'}_{'nf' if nulls_first else 'nl'}"


def order_key_columns(names) -> list[tuple[str, bool, bool]]:
    """``(name, descending, nulls_first)`` of the ORDER BY key columns among ``names``, in key order."""
    found = []
    for n in names:
        m = _ORDER_KEY_RE.match(n)
        if m:
            found.append((int(m.group(1)), n, m.group(2) == "desc", m.group(3) == "nf"))
    return [(n, d, f) for _, n, d, f in sorted(found)]


def _bits(x: int) -> int:
    return max(1, int(x).bit_length())


def _dense_from_codes(codes: np.ndarray) -> tuple[np.ndarray, int]:
    """Dense ascending rank of an integer array (one sort unless the range is small)."""
    if not len(codes):
        return codes.astype(np.int64), 0
    lo, hi = int(codes.min()), int(codes.max())
    if hi - lo < (1 << 24) or hi - lo < 4 * len(codes):   # small range: the offset is already a rank
        return (codes - lo).astype(np.int64, copy=False), hi - lo + 1
    u, inv = np.unique(codes, return_inverse=True)
    return inv.astype(np.int64, copy=False).reshape(-1), len(u)


def _float_codes(x: np.ndarray) -> np.ndarray:
    """int64 codes with DuckDB's float order: -0.0 == 0.0, NaN above +inf (all NaNs equal)."""
    x = x.astype(np.float64, copy=False) + 0.0   # -0.0 -> 0.0
    x = np.where(np.isnan(x), np.float64("nan"), x)   # one canonical (positive) NaN
    b = x.view(np.int64)
    return np.where(b < 0, b ^ np.int64(0x7FFFFFFFFFFFFFFF), b)


def key_rank(col, descending: bool, nulls_first: bool) -> tuple[np.ndarray, int]:
    """Dense rank (int64, 0..d-1) of an ORDER BY key column, and d. Raises TypeError for types
    that cannot be ranked here (the planner sends those to DuckDB instead)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    t = col.type
    nulls = col.null_count > 0
    valid = None if not nulls else np.asarray(col.is_valid())
    if pa.types.is_floating(t):
        codes = _float_codes(col.to_numpy(zero_copy_only=False))
    elif pa.types.is_integer(t) or pa.types.is_boolean(t) or pa.types.is_temporal(t) and not pa.types.is_interval(t):
        if pa.types.is_unsigned_integer(t) and t.bit_width == 64:
            raise TypeError("UBIGINT keys are ranked by DuckDB")
        if pa.types.is_temporal(t):
            col = col.cast(pa.int64() if t.bit_width == 64 else pa.int32())
        elif pa.types.is_boolean(t):
            col = col.cast(pa.int8())
        codes = col.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64, copy=False) if nulls \
            else col.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    elif (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t)
          or pa.types.is_large_binary(t) or pa.types.is_string_view(t) or pa.types.is_binary_view(t)
          or pa.types.is_decimal(t) or pa.types.is_fixed_size_binary(t)):
        enc = pc.dictionary_encode(col, null_encoding="mask")
        d = enc.dictionary
        order = np.asarray(pc.sort_indices(d))
        rank_of = np.empty(len(d), np.int64)
        rank_of[order] = np.arange(len(d), dtype=np.int64)
        idx = enc.indices.fill_null(0).to_numpy(zero_copy_only=False) if nulls \
            else enc.indices.to_numpy(zero_copy_only=False)
        codes = rank_of[idx] if len(d) else np.zeros(len(col), np.int64)   # all NULL: no dictionary
    else:
        raise TypeError(f"ORDER BY keys of type {t} are ranked by DuckDB")
    if nulls:
        codes = np.where(valid, codes, codes[valid].min() if valid.any() else 0)
    rank, d = _dense_from_codes(codes)
    if descending:
        rank = (d - 1) - rank
    if nulls:
        if nulls_first:
            rank = np.where(valid, rank + 1, 0)
        else:
            rank = np.where(valid, rank, d)
        d += 1
    return rank, d


def ordered_permutation(group: np.ndarray, file_id: np.ndarray, row: np.ndarray, keys) -> np.ndarray:
    """Permutation sorting rows by (group, key ranks..., file_id, row); ``keys`` is a list of
    ``(column, descending, nulls_first)``. Ranks are packed into one unique int64 per row and
    sorted once; the result depends only on the values."""
    n = len(group)
    if n == 0:
        return np.zeros(0, np.int64)
    tie = (file_id.astype(np.int64) << 40) | row.astype(np.int64)
    dt = np.diff(tie)
    if (dt > 0).all():
        tie_rank, tie_bits = np.arange(n, dtype=np.int64), _bits(n - 1)
    else:
        tie_rank = np.empty(n, np.int64)
        tie_rank[np.argsort(tie, kind="stable")] = np.arange(n, dtype=np.int64)
        tie_bits = _bits(n - 1)
    acc = group.astype(np.int64)
    acc_max = int(acc.max())
    for col, desc, nf in keys:
        r, d = key_rank(col, desc, nf)
        if _bits(acc_max) + _bits(d - 1) > 62:
            acc, acc_max = _dense_from_codes(acc)
            acc_max -= 1
        acc = (acc << _bits(d - 1)) | r
        acc_max = (acc_max << _bits(d - 1)) | ((1 << _bits(d - 1)) - 1)
    if _bits(acc_max) + tie_bits > 63:
        acc, acc_max = _dense_from_codes(acc)
        acc_max -= 1
    full = (acc << tie_bits) | tie_rank
    return np.argsort(full)   # unique keys: any sort gives this permutation
