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

    ``members``: pointer-table row indices of the group's samples in base order.
    ``tokens``: per-member token counts (same order) or ``None`` when not needed.
    ``shuffle=None`` means ordered (base order in every epoch).
    """

    def __init__(self, members: np.ndarray, seed: int, group_id: int, shuffle: Shuffle | None,
                 tokens: np.ndarray | None = None):
        self.members = members
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
        return self.members[self.positions(epoch, start, stop)]

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
