"""Per-group consumption order: a seeded permutation with a bounded working set, or ORDER BY.

A group's samples, in base order (``(file_id, row)`` for the shuffle, the ORDER BY key for
ordered groups), are consumed epoch by epoch:

* **Shuffle(block=B, window=W, shards=S)** (no ORDER BY). A *shard* is one file's run of the
  group's samples. Per epoch the shards are put in a seeded order (a hash of
  ``(spec.seed, epoch, file_id)``: the same file order for every group, so groups that share
  files read the same files at the same time) and cut into *shard windows* of ``S`` consecutive
  shards; the group consumes one shard window after the other. Inside a shard window each shard
  is cut into blocks of ``B`` consecutive samples (same file, neighbouring rows: one read covers
  a block), the window's blocks are permuted uniformly (seed: ``(spec.seed, group id, epoch,
  shard window)``), runs of ``W`` permuted blocks form *sub-windows*, and the ``<= B*W`` samples of
  a sub-window are permuted uniformly again (seed: ``(..., sub-window)``). ``S = 0`` makes one
  shard window of every shard (the whole group: blocks come from anywhere).

  Working set: while a group is inside a shard window it reads from at most ``S`` files, so a
  chunk drawing from that group touches at most ``S`` files of it (``2 S`` when it crosses into
  the next shard window) however many files the collection has, and the window's files are
  rotated out as they are consumed. Decompressed shards are reused by every chunk of the window.

  Quality vs locality: within a shard window the order is uniform at the block scale and
  uniform within sub-windows; samples of different shard windows never mix within an epoch
  (the window boundaries move every epoch). Measured by ``python -m bench storage`` (distance in
  the stream between samples that were neighbours in their file, files touched per chunk, both
  against a uniform permutation). ``block=1, shards=0`` is a full uniform permutation within
  sub-windows of ``W`` samples over the whole group. Defaults 16 x 64 x 4:
  ``SETTINGS (shuffle_block = B, shuffle_window = W, shuffle_shards = S)``.

* **Ordered** (ORDER BY): the base order itself, identical in every epoch (a curriculum that
  repeats under ``on_exhausted = 'repeat'``).

Every permutation is a sort by keys ``splitmix64(index ^ salt)`` (a bijection of the index, so
keys never tie), the salt a splitmix64 chain over ``(seed, kind, group id, epoch, shard window
[, sub-window])``: no generator objects, no global RNG state, and the same keys whether one
window or a whole epoch is computed. Large groups are computed lazily per (epoch, shard window,
sub-window): any position of any epoch is reached in O(shards + shard window / B + B*W) time
without generating the positions before it (random access). Groups of at most ``SMALL_GROUP``
samples compute their whole epoch in one vectorised pass on first use (int32, one epoch kept),
so a mixture of thousands of small groups pays a few numpy calls per group, not per window.
"""
from __future__ import annotations

import hashlib
import re

import numpy as np

from .spec import Shuffle

ORDERED_WINDOW = 4096  # window size used to walk ordered groups (no shuffling)
SMALL_GROUP = 4096     # shuffled groups up to this size keep their whole epoch order (int32) once drawn
_BLOCK_PERM, _WINDOW_PERM, _SHARD_ORDER = 0, 1, 2
_RUN_STEP = 1 << 24    # file-run detection works on pieces of this many samples (bounded temporaries)


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


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on a uint64 array (a bijection; wraps modulo 2**64: array arithmetic
    never warns on overflow)."""
    x = (x ^ (x >> _S30)) * _K1
    x = (x ^ (x >> _S27)) * _K2
    return x ^ (x >> _S31)


_M64 = (1 << 64) - 1
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)
_K1, _K2, _GOLDEN = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB), np.uint64(0x9E3779B97F4A7C15)


def _mix_int(x: int) -> int:
    """:func:`_mix64` on one Python int (same values, no numpy call)."""
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def _salt(*words: int) -> int:
    """A 64-bit key for a permutation, chained through :func:`_mix_int` over ``words``."""
    h = 0x9E3779B97F4A7C15
    for w in words:
        h = _mix_int((h ^ (int(w) & _M64)) + 0x9E3779B97F4A7C15 & _M64)
    return h


def _salts(prefix: np.ndarray | int, words: np.ndarray) -> np.ndarray:
    """``_salt(*prefix_words, w)`` for every ``w`` in ``words`` (``prefix = _salt(*prefix_words)``,
    one per word or one for all), vectorised: the last link of the chain over an array."""
    return _mix64((np.asarray(prefix, dtype=np.uint64) ^ words.astype(np.uint64)) + _GOLDEN)


def _hash_keys(salt: np.ndarray | int, index: np.ndarray) -> np.ndarray:
    """Sort keys that put ``index`` (distinct per salt) in a seeded order: a bijection of
    ``index ^ salt``, so keys never tie within one salt."""
    return _mix64(index.astype(np.uint64) ^ np.asarray(salt, dtype=np.uint64))


def _permutation(salt: int, n: int) -> np.ndarray:
    """Seeded uniform-looking permutation of ``range(n)``: ``argsort`` of :func:`_hash_keys`."""
    return np.argsort(_hash_keys(salt, np.arange(n, dtype=np.uint64)), kind="stable")


def shard_order(seed: int, epoch: int, files: np.ndarray) -> np.ndarray:
    """Seeded order of shards (indices into ``files``, their file ids) for ``epoch``: sorted by a
    hash of ``(seed, epoch, file_id)``, so every group ranks a given file the same way."""
    salt = np.random.SeedSequence([seed % (1 << 64), _SHARD_ORDER, epoch]).generate_state(1, np.uint64)[0]
    return _argsort_u64(_mix64(files.astype(np.uint64) ^ salt))


def _argsort_u64(keys: np.ndarray) -> np.ndarray:
    """``np.argsort(keys, kind="stable")`` of uint64 keys. Long arrays go through stable passes
    over 16-bit digits (NumPy radix-sorts 16-bit keys), least significant first: the top 32 bits
    alone when they already tell every key apart (then they order the keys as the whole keys
    do), all four digits otherwise."""
    if len(keys) < 4096:
        return np.argsort(keys, kind="stable")
    digits = np.ascontiguousarray(keys, dtype="<u8").view("<u2").reshape(-1, 4)   # column 0: low digit

    def passes(cols):
        idx = np.argsort(digits[:, cols[0]], kind="stable")
        for c in cols[1:]:
            idx = idx[np.argsort(digits[idx, c], kind="stable")]
        return idx

    idx = passes((2, 3))
    top = keys[idx] >> np.uint64(32)
    return idx if (top[1:] != top[:-1]).all() else passes((0, 1, 2, 3))


def _run_starts(values: np.ndarray) -> np.ndarray:
    """Positions where a run of equal values starts (0 included), in bounded pieces."""
    n = len(values)
    parts = [np.zeros(1 if n else 0, np.int64)]
    for lo in range(1, n, _RUN_STEP):
        hi = min(n, lo + _RUN_STEP)
        parts.append(np.flatnonzero(values[lo:hi] != values[lo - 1:hi - 1]).astype(np.int64) + lo)
    return np.concatenate(parts)


class _Cache(dict):
    """A dict that keeps its ``size`` newest entries."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def put(self, key, value):
        if len(self) >= self.size:
            self.pop(next(iter(self)))
        self[key] = value
        return value


class ShardOrders:
    """:func:`shard_order` remembered for the last few (seed, epoch, shard files): an engine's
    groups that read the same files get the same order without sorting again."""

    def __init__(self, size: int = 16):
        self._cache = _Cache(size)

    def get(self, seed: int, epoch: int, files: np.ndarray) -> np.ndarray:
        key = (seed, epoch, len(files), hashlib.blake2b(files.tobytes(), digest_size=16).digest())
        got = self._cache.get(key)
        return got if got is not None else self._cache.put(key, shard_order(seed, epoch, files))


class GroupSequence:
    """Consumption order of one group.

    ``members``: pointer-table row indices of the group's samples in base order, or a
    ``range`` when they are contiguous (a selection stored in base order: no index array).
    ``tokens``: per-member token counts (same order) or ``None`` when not needed; each member
    counts ``token_extra`` more (the EOS a packed document gets), so a mapped column serves as is.
    ``files``: per-member file ids (same order; shards are their runs) or ``None`` (one shard).
    ``runs``: ``(first positions, file ids)`` of the runs ``files`` would have, when known
    without a per-member array (a packed selection).
    ``shared_orders``: a :class:`ShardOrders` the engine's groups share: groups over the same
    files (nested groups under one source) sort their epoch's shard order once.
    ``shuffle=None`` means ordered (base order in every epoch).
    """

    def __init__(self, members: np.ndarray, seed: int, group_id: int, shuffle: Shuffle | None,
                 tokens: np.ndarray | None = None, files: np.ndarray | None = None,
                 runs: tuple[np.ndarray, np.ndarray] | None = None, shared_orders: "ShardOrders | None" = None,
                 token_extra: int = 0):
        self.members = members
        self._start = members.start if isinstance(members, range) else None
        self.n = n = int(len(members))
        self.seed = int(seed)
        self.group_id = int(group_id)
        self.shuffled = shuffle is not None
        if shuffle is not None:
            if shuffle.block < 1 or shuffle.window < 1 or shuffle.shards < 0:
                raise ValueError(f"shuffle block and window must be >= 1 and shards >= 0, got {shuffle}")
            self.block, self.window, self.shards = int(shuffle.block), int(shuffle.window), int(shuffle.shards)
        else:
            self.block, self.window, self.shards = ORDERED_WINDOW, 1, 0
        if runs is not None and self.shuffled and n:
            lo, self._shard_file = np.asarray(runs[0], np.int64), np.asarray(runs[1], np.int64)
        elif files is not None and self.shuffled and n:
            lo = _run_starts(np.asarray(files))
            self._shard_file = np.asarray(files)[lo].astype(np.int64)
        else:
            lo = np.zeros(1 if n else 0, np.int64)
            self._shard_file = np.zeros(len(lo), np.int64)
        self._shard_lo = lo
        self._shard_len = np.diff(np.append(lo, n))
        self.n_shards = len(lo)
        self._per_window = self.shards if 0 < self.shards < self.n_shards else max(1, self.n_shards)
        self.tokens, self._extra = tokens, int(token_extra)
        self.total_tokens = int(tokens.sum(dtype=np.int64)) + n * self._extra if tokens is not None else None
        self._shard_tok = (np.add.reduceat(tokens, lo, dtype=np.int64) + self._shard_len * self._extra
                           if tokens is not None and n else None)
        self._epochs, self._inner, self._windows = _Cache(2), _Cache(4), _Cache(8)
        self._orders = shared_orders if shared_orders is not None else ShardOrders()
        self._whole = _Cache(1)
        self._small = self.shuffled and 0 < n <= SMALL_GROUP

    # --- per-epoch layout: shard windows ------------------------------------------------------
    def _layout(self, epoch: int):
        """``(shard order, window starts, window token starts)`` of ``epoch``."""
        lay = self._epochs.get(epoch)
        if lay is None:
            S = self._per_window
            if self.shuffled and self.n_shards > S:
                order = self._orders.get(self.seed, epoch, self._shard_file)
            else:
                order = np.arange(self.n_shards)
            cuts = np.arange(0, self.n_shards, S)
            wsize = np.add.reduceat(self._shard_len[order], cuts) if self.n_shards else np.zeros(0, np.int64)
            wstart = np.concatenate([[0], np.cumsum(wsize)])
            wtok = None
            if self._shard_tok is not None:
                wt = np.add.reduceat(self._shard_tok[order], cuts) if self.n_shards else np.zeros(0, np.int64)
                wtok = np.concatenate([[0], np.cumsum(wt)])
            lay = self._epochs.put(epoch, (order, wstart, wtok))
        return lay

    def _blocks(self, epoch: int, j: int):
        """Shard window ``j`` of ``epoch``: its blocks in consumption order (base-order starts,
        lengths) and sub-window starts (samples, tokens) relative to the window."""
        key = (epoch, j)
        got = self._inner.get(key)
        if got is not None:
            return got
        order, _, _ = self._layout(epoch)
        B, W, S = self.block, self.window, self._per_window
        shards = order[j * S:(j + 1) * S]
        lo, ln = self._shard_lo[shards], self._shard_len[shards]
        nb = -(-ln // B)
        first = np.repeat(np.cumsum(nb) - nb, nb)
        k = np.arange(int(nb.sum()), dtype=np.int64) - first          # block index within its shard
        which = np.repeat(np.arange(len(shards)), nb)
        bstart = lo[which] + k * B
        blen = np.minimum(B, ln[which] - k * B)
        btok = None
        if self.tokens is not None and len(bstart):   # the window's tokens, its blocks in order: O(window)
            local = np.concatenate([self.tokens[a:a + m] for a, m in zip(lo.tolist(), ln.tolist())]
                                   ).astype(np.int64) + self._extra
            btok = np.add.reduceat(local, np.cumsum(blen) - blen)
        if self.shuffled and len(bstart) > 1:
            p = _permutation(_salt(self.seed, _BLOCK_PERM, self.group_id, epoch, j), len(bstart))
            bstart, blen = bstart[p], blen[p]
            btok = btok[p] if btok is not None else None
        cuts = np.arange(0, len(bstart), W)
        sstart = np.concatenate([[0], np.cumsum(np.add.reduceat(blen, cuts))]) if len(cuts) else np.zeros(1, np.int64)
        stok = np.concatenate([[0], np.cumsum(np.add.reduceat(btok, cuts))]) if btok is not None else None
        return self._inner.put(key, (bstart, blen, sstart, stok))

    def _window(self, epoch: int, j: int, w: int) -> np.ndarray:
        """Base-order positions of sub-window ``w`` of shard window ``j``, in consumption order."""
        key = (epoch, j, w)
        got = self._windows.get(key)
        if got is not None:
            return got
        bstart, blen, _, _ = self._blocks(epoch, j)
        W = self.window
        starts, lens = bstart[w * W:(w + 1) * W], blen[w * W:(w + 1) * W]
        offs = np.cumsum(lens) - lens
        pos = np.repeat(starts - offs, lens) + np.arange(int(lens.sum()), dtype=np.int64)
        if self.shuffled and len(pos) > 1:
            pos = pos[_permutation(_salt(self.seed, _WINDOW_PERM, self.group_id, epoch, j, w), len(pos))]
        return self._windows.put(key, pos)

    def _epoch_order(self, epoch: int) -> np.ndarray:
        """The whole consumption order of ``epoch`` (int32 base-order positions) in one vectorised
        pass: the same blocks, keys and sorts as :meth:`_blocks` and :meth:`_window` apply window by
        window, so a small group costs a few numpy calls per epoch rather than a few per window."""
        got = self._whole.get(epoch)
        if got is not None:
            return got
        order, _, _ = self._layout(epoch)
        B, W, S = self.block, self.window, self._per_window
        lo, ln = self._shard_lo[order], self._shard_len[order]
        nb = -(-ln // B)
        which = np.repeat(np.arange(len(order)), nb)                       # shard (in epoch order) of each block
        k = np.arange(int(nb.sum()), dtype=np.int64) - np.repeat(np.cumsum(nb) - nb, nb)
        bstart, blen = lo[which] + k * B, np.minimum(B, ln[which] - k * B)
        bwin = which // S                                                  # shard window of each block
        wfirst = np.searchsorted(bwin, np.arange(int(bwin[-1]) + 1))       # first block of each window
        bidx = np.arange(len(bwin)) - wfirst[bwin]                         # block's index in its window
        bkey = _hash_keys(_salts(_salt(self.seed, _BLOCK_PERM, self.group_id, epoch), bwin), bidx)
        p = np.lexsort((bkey, bwin))
        bstart, blen, bwin = bstart[p], blen[p], bwin[p]
        bsub = (np.arange(len(bwin)) - wfirst[bwin]) // W                  # sub-window: rank after the sort // W
        offs = np.cumsum(blen) - blen
        pos = np.repeat(bstart - offs, blen) + np.arange(int(blen.sum()), dtype=np.int64)
        swin, ssub = np.repeat(bwin, blen), np.repeat(bsub, blen)
        sub_id = np.concatenate([[0], np.cumsum((np.diff(swin) != 0) | (np.diff(ssub) != 0))])
        sfirst = np.searchsorted(sub_id, np.arange(int(sub_id[-1]) + 1))
        sidx = np.arange(len(pos)) - sfirst[sub_id]                        # sample's index in its sub-window
        wsalt = _salts(_salts(_salt(self.seed, _WINDOW_PERM, self.group_id, epoch), swin), ssub)
        pos = pos[np.lexsort((_hash_keys(wsalt, sidx), sub_id))]
        return self._whole.put(epoch, pos.astype(np.int32))

    def _locate(self, epoch: int, pos: int) -> tuple[int, int, int]:
        """``(shard window, sub-window, sequence position where the sub-window starts)`` of ``pos``."""
        _, wstart, _ = self._layout(epoch)
        j = int(wstart.searchsorted(pos, side="right")) - 1
        sstart = self._blocks(epoch, j)[2]
        w = int(sstart.searchsorted(pos - int(wstart[j]), side="right")) - 1
        return j, w, int(wstart[j]) + int(sstart[w])

    # --- public ----------------------------------------------------------------------------
    def positions(self, epoch: int, start: int, stop: int) -> np.ndarray:
        """Base-order positions of sequence positions ``[start, stop)`` of ``epoch``."""
        if self._small:
            if stop > self.n:
                raise IndexError(f"positions [{start}, {stop}) run past the group's {self.n} samples")
            return self._epoch_order(epoch)[start:stop].astype(np.int64)
        return self._windowed_positions(epoch, start, stop)

    def _windowed_positions(self, epoch: int, start: int, stop: int) -> np.ndarray:
        """:meth:`positions` from the shard windows and sub-windows that hold them (random access)."""
        parts, pos = [], start
        while pos < stop:
            j, w, lo = self._locate(epoch, pos)
            win = self._window(epoch, j, w)
            parts.append(win[pos - lo:stop - lo])
            if not len(parts[-1]):
                raise IndexError(f"positions [{start}, {stop}) run past the group's {self.n} samples")
            pos += len(parts[-1])
        if not parts:
            return np.zeros(0, dtype=np.int64)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def indices(self, epoch: int, start: int, stop: int) -> np.ndarray:
        """Pointer-table row indices of sequence positions ``[start, stop)`` of ``epoch``."""
        pos = self.positions(epoch, start, stop)
        return pos + self._start if self._start is not None else self.members[pos]

    def sequence_position(self, epoch: int, base: int) -> int:
        """Inverse of :meth:`positions`: the sequence position of base-order position ``base`` in
        ``epoch`` (its shard's window, its block's sub-window; never the epoch's other windows)."""
        if not 0 <= base < self.n:
            raise IndexError(f"base position {base} outside the group's {self.n} samples")
        order, wstart, _ = self._layout(epoch)
        shard = int(self._shard_lo.searchsorted(base, side="right")) - 1
        j = int(np.flatnonzero(order == shard)[0]) // self._per_window
        bstart, blen, sstart, _ = self._blocks(epoch, j)
        w = int(np.flatnonzero((bstart <= base) & (base < bstart + blen))[0]) // self.window
        win = self._window(epoch, j, w)
        return int(wstart[j]) + int(sstart[w]) + int(np.flatnonzero(win == base)[0])

    def base_position(self, index: int) -> int:
        """Base-order position of pointer-table row ``index`` (a member of this group)."""
        if self._start is not None:
            pos = int(index) - self._start
            if not 0 <= pos < self.n:
                raise IndexError(f"pointer row {index} is not in group {self.group_id}")
            return pos
        hit = np.flatnonzero(np.asarray(self.members) == int(index))
        if not len(hit):
            raise IndexError(f"pointer row {index} is not in group {self.group_id}")
        return int(hit[0])

    def token_prefix(self, epoch: int, pos: int) -> int:
        """Tokens of sequence positions ``[0, pos)`` of ``epoch``."""
        if pos <= 0:
            return 0
        if pos >= self.n:
            return self.total_tokens
        j, w, lo = self._locate(epoch, pos)
        _, _, wtok = self._layout(epoch)
        stok = self._blocks(epoch, j)[3]
        part = self._window(epoch, j, w)[:pos - lo]
        return int(wtok[j]) + int(stok[w]) + int(self.tokens[part].sum(dtype=np.int64)) + len(part) * self._extra

    def find_tokens(self, epoch: int, target: int) -> int | None:
        """Smallest ``pos`` with ``token_prefix(epoch, pos) >= target`` (None if past the epoch)."""
        if target <= 0:
            return 0
        if target > self.total_tokens:
            return None
        _, wstart, wtok = self._layout(epoch)
        j = int(np.searchsorted(wtok, target, side="left")) - 1    # wtok[j] < target <= wtok[j+1]
        _, _, sstart, stok = self._blocks(epoch, j)
        rest = target - int(wtok[j])
        w = int(np.searchsorted(stok, rest, side="left")) - 1
        cum = np.cumsum(self.tokens[self._window(epoch, j, w)].astype(np.int64) + self._extra)
        k = int(np.searchsorted(cum, rest - int(stok[w]), side="left"))
        return int(wstart[j]) + int(sstart[w]) + k + 1


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
