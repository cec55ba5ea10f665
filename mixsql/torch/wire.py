"""Batches: ``mix_collate``, document boundaries, and the wire format from workers to the loader.

``mix_collate`` stacks items into a batch (``mask`` from ``length``); ``add_boundaries`` adds
``position_ids`` / ``cu_seqlens`` / ``max_seqlen``. Between DataLoader workers and the main
process a packed batch travels as one flat integer buffer: built by ``_Batcher`` (the fast path:
the dataset cuts whole batches) or ``_wire_collate`` (the per-item path), sent in bundles
(``_bundled``), put back in DataLoader's per-batch order (``_interleave``) and restored to
``mix_collate``'s batch by ``_unwire``.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from ..packing import PackedBatch, cu_seqlens, document_positions


def add_boundaries(batch: dict, eos_id: int) -> dict:
    """Add document boundaries to a packed batch (``input_ids`` [B, L], ``length``):
    ``position_ids`` [B, L] restarting at 0 at every document (HF flattening convention),
    ``cu_seqlens`` (int32) and ``max_seqlen`` for flash-attention's varlen kernels over the model
    inputs ``input_ids[:, :-1][mask[:, :-1]]`` (see :mod:`mixsql.packing`)."""
    ids, lengths = batch["input_ids"].numpy(), batch["length"].numpy()
    pos = batch.get("position_ids")
    pos = document_positions(ids, lengths, eos_id) if pos is None else pos.numpy()
    cu = cu_seqlens(pos, lengths)
    batch["position_ids"] = torch.from_numpy(pos)
    batch["cu_seqlens"] = torch.from_numpy(cu)
    batch["max_seqlen"] = int(np.diff(cu).max()) if len(cu) > 1 else 0
    return batch


class _Batcher:
    """Cuts one worker's packed rows into ready batches of ``B`` rows, vectorised (the fast path
    of ``MixDataLoader`` with ``mix_collate``): exactly the batches the per-item path builds (the
    worker's rows in order, ``B`` at a time, the last one short or dropped with ``drop_last``).

    A batch is a ``_wire_collate``-style dict: one flat int32 buffer (ids, group ids, lengths), the
    group names, and one aggregated resume token ``(worker, task, {key: tokens}, info)`` per task
    the batch touches (``info`` only where the batch holds the task's first row)."""

    def __init__(self, w: int, B: int, drop_last: bool, shared: bool):
        self.w, self.B, self.drop_last, self.shared = w, int(B), bool(drop_last), shared
        self.pend: list = []   # (PackedBatch, names, task, info or None, first row, end row)
        self.have = 0

    def add(self, pb: PackedBatch, gnames: list, t: int, info: dict) -> Iterator[dict]:
        n, i, B = len(pb), 0, self.B
        while i < n:
            take = min(B - self.have, n - i)
            self.pend.append((pb, gnames, t, info if i == 0 else None, i, i + take))
            self.have += take
            i += take
            if self.have == B:
                yield self._build()

    def finish(self) -> Iterator[dict]:
        if self.have and not self.drop_last:
            yield self._build()
        self.pend, self.have = [], 0

    def _build(self) -> dict:
        pend, B = self.pend, self.have
        self.pend, self.have = [], 0
        L = pend[0][0].ids.shape[1]
        buf = np.empty(2 * B * L + B, dtype=np.int32)   # half the bytes to pickle; int64 in _unwire
        ids, grp, lens = buf[:B * L].reshape(B, L), buf[B * L:2 * B * L].reshape(B, L), buf[2 * B * L:]
        o, names, toks = 0, [], []
        for pb, gn, t, info, a, b in pend:
            m = b - a
            ids[o:o + m] = pb.ids[a:b]
            grp[o:o + m] = pb.groups[a:b]
            ln = pb.lengths[a:b]
            lens[o:o + m] = ln
            o += m
            names += gn[a:b]
            counts: dict = {}
            for k, n in zip(pb.keys[a:b], ln.tolist()):
                counts[k] = counts.get(k, 0) + n
            toks.append((self.w, t, counts, info))
        if self.shared:   # to a worker's queue: bytes pickle at half the cost of an ndarray
            wire = torch.from_numpy(buf) if buf.nbytes > _WIRE_TENSOR_BYTES else buf.tobytes()
        else:
            wire = buf
        return {"_wire": wire, "_wire_shape": (B, L), "_wire_full": bool((lens == L).all()), "group": names,
                "_mix": toks}


_BUNDLE_BYTES = 256 << 10   # a worker sends its batches in bundles of up to this many bytes ...
_BUNDLE_MAX = 16            # ... and this many batches (the first bundle holds one batch)


def _bundled(batches: Iterator[dict], w: int) -> Iterator[tuple]:
    """A worker's batches as ``(worker, [batch, ...], last)`` messages: one DataLoader message
    (index request, pickling, pipe hand-off, main-process bookkeeping) per bundle instead of per
    batch. Bundles grow 1, 2, 4, ... up to ``_BUNDLE_BYTES`` / ``_BUNDLE_MAX``; the worker's final
    message (possibly empty) has ``last=True`` so the main process knows the worker is done."""
    buf: list = []
    k, kmax = 1, _BUNDLE_MAX
    for b in batches:
        if len(buf) >= k:   # only sent once more is known to follow (the last one is flagged)
            yield (w, buf, False)
            buf, k = [], min(2 * k, kmax)
        if isinstance(b["_wire"], torch.Tensor):
            kmax = k = 1    # shared-memory batches travel one by one
        elif kmax == _BUNDLE_MAX:
            kmax = max(1, min(_BUNDLE_MAX, _BUNDLE_BYTES // max(1, len(b["_wire"]))))
            k = min(k, kmax)
        buf.append(b)
    yield (w, buf, True)


def _interleave(messages: Iterator[tuple], W: int, start: int) -> Iterator[dict]:
    """Batches from workers' bundles in the order DataLoader delivers per-batch messages: round
    robin over the workers (physical worker ``i`` is data worker ``(start + i) % W``), a worker
    leaving the rotation when it has no batch left."""
    import collections

    queues = [collections.deque() for _ in range(W)]
    ended = [False] * W
    rot = collections.deque((start + i) % W for i in range(W))
    while rot:
        w = rot[0]
        q = queues[w]
        while not q and not ended[w]:
            msg = next(messages, None)
            if msg is None:   # the DataLoader finished: every worker is done
                ended = [True] * W
                break
            mw, batches, last = msg
            queues[mw].extend(batches)
            ended[mw] = ended[mw] or last
        if q:
            yield q.popleft()
            rot.rotate(-1)
        else:
            rot.popleft()


def _one_item(item: dict) -> dict:
    """``mix_collate``'s stand-in with ``batch_size=None``: the item itself, its token in a list."""
    return {**item, "_mix": [item["_mix"]]}


def _pass(batch):
    """Collate of the fast path: the dataset already yields whole batches (or bundles of them)."""
    return batch


def mix_collate(items: list[dict]) -> dict:
    """Batch MixDataset items: tensors are stacked once (``mask`` from ``length``), the rest become
    lists.

    Resume tokens travel under ``"_mix"``; MixDataLoader removes them."""
    out: dict = {}
    if not items:
        return out
    first = items[0]
    if "input_ids" in first:
        out["input_ids"] = torch.stack([it["input_ids"] for it in items])
        out["group_ids"] = torch.stack([it["group_ids"] for it in items])
        if "position_ids" in first:
            out["position_ids"] = torch.stack([it["position_ids"] for it in items])
        lengths = [it["length"] for it in items]
        L = out["input_ids"].shape[1]
        out["length"] = torch.tensor(lengths, dtype=torch.long)
        if min(lengths) == L:
            out["mask"] = torch.ones((len(items), L), dtype=torch.bool)
        else:
            out["mask"] = torch.arange(L).unsqueeze(0) < out["length"].unsqueeze(1)
    for key in first:
        if key not in out:
            out[key] = [it[key] for it in items]
    return out


_WIRE_TENSOR_BYTES = 1 << 20   # batches above this travel as one shared-memory tensor, below as bytes


def _wire_collate(items: list[dict]) -> dict:
    """``mix_collate`` for DataLoader workers: the tensors of a packed batch travel as ONE flat
    int64 buffer (ids, group ids, lengths), pickled in-band when small (no shared-memory file
    descriptor round trip per tensor); :func:`_unwire` restores ``mix_collate``'s batch."""
    if not items or "input_ids" not in items[0]:
        return mix_collate(items)
    B, L = len(items), int(items[0]["input_ids"].shape[0])
    buf = torch.empty(2 * B * L + B, dtype=torch.long)
    torch.stack([it["input_ids"] for it in items], out=buf[:B * L].view(B, L))
    torch.stack([it["group_ids"] for it in items], out=buf[B * L:2 * B * L].view(B, L))
    buf[2 * B * L:] = torch.tensor([it["length"] for it in items], dtype=torch.long)
    out: dict = {"_wire": buf.numpy() if buf.numel() * 8 <= _WIRE_TENSOR_BYTES else buf, "_wire_shape": (B, L)}
    for key in items[0]:
        if key not in ("input_ids", "group_ids", "length"):
            out[key] = [it[key] for it in items]
    return out


def _unwire(batch: dict, pin: bool = False) -> dict:
    buf = batch.pop("_wire", None)
    if buf is None:
        return batch
    B, L = batch.pop("_wire_shape")
    full = batch.pop("_wire_full", None)
    if isinstance(buf, bytes):   # the fast path ships int32 bytes
        buf = np.frombuffer(buf, dtype=np.int32)
    if isinstance(buf, np.ndarray):
        buf = torch.from_numpy(buf.astype(np.int64, copy=False))
    elif buf.dtype != torch.long:
        buf = buf.long()
    if pin and not buf.is_pinned():
        buf = buf.pin_memory()
    ids, grp, length = buf.split((B * L, B * L, B))
    out = {"input_ids": ids.view(B, L), "group_ids": grp.view(B, L), "length": length}
    if full if full is not None else int(length.min()) == L:
        out["mask"] = torch.ones((B, L), dtype=torch.bool)
    else:
        out["mask"] = torch.arange(L).unsqueeze(0) < length.unsqueeze(1)
    out.update(batch)
    return out
