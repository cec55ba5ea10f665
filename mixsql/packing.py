"""Pack tokenized documents into fixed ``seq_len + 1`` training sequences.

Each document becomes ``[bos] + ids + [eos]`` and is appended to a buffer; every time a
buffer holds ``seq_len + 1`` tokens a sequence is emitted. With ``by_group=True`` (mixtures
with ``unit = 'tokens'``) each group has its own buffer, so every sequence holds one group's
tokens; otherwise one buffer holds all groups and each sequence carries per-token group ids.

:meth:`Packer.add_chunk` packs a whole chunk at once, vectorised (one flat token array plus
per-document lengths and groups; no Python loop over documents or tokens) and returns a
:class:`PackedBatch` of 2-D arrays, in exactly the order repeated :meth:`Packer.add` calls
would emit the sequences (a sequence is emitted when its last token is fed).

Leftover tokens are never dropped: they stay in the carry buffers, which move on to the next
chunk and are small (:meth:`Packer.carry`, JSON-able; :meth:`Packer.carry_arrays`, numpy, for
in-process hand-over). At the end of a stream :meth:`Packer.flush` delivers each non-empty
buffer as one final *short* sequence, padded to ``seq_len + 1`` with ``pad_id`` and marked by
``length`` < ``seq_len + 1`` (mask positions ``>= length`` out of the loss).

Resume support: ``drop`` (per buffer key) skips the first tokens *fed* through :meth:`add` /
:meth:`add_chunk`, which is how a reader resumes in the middle of a chunk without re-emitting
consumed sequences.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MIXED = "*"


@dataclass
class Packed:
    """One emitted sequence: ``ids`` and per-token ``groups`` (int32, length seq_len+1)."""

    key: str          # buffer key: str(group id) with by_group, else "*"
    ids: np.ndarray
    groups: np.ndarray
    length: int       # real tokens; < len(ids) only for the final flushed sequence


@dataclass
class PackedBatch:
    """Sequences as 2-D arrays: ``ids``/``groups`` int32 [n, seq_len+1], ``lengths`` int64 [n],
    ``keys`` (buffer key per row)."""

    keys: list
    ids: np.ndarray
    groups: np.ndarray
    lengths: np.ndarray

    def __len__(self) -> int:
        return len(self.keys)

    @staticmethod
    def empty(L: int) -> "PackedBatch":
        return _empty(L)

    @staticmethod
    def of(seqs: list[Packed], L: int) -> "PackedBatch":
        if not seqs:
            return _empty(L)
        return PackedBatch([s.key for s in seqs], np.stack([s.ids for s in seqs]),
                           np.stack([s.groups for s in seqs]), np.array([s.length for s in seqs], np.int64))

    def rows(self) -> list[Packed]:
        return [Packed(k, self.ids[i], self.groups[i], int(self.lengths[i])) for i, k in enumerate(self.keys)]

    @staticmethod
    def concat(parts: list["PackedBatch"], L: int) -> "PackedBatch":
        parts = [p for p in parts if len(p)]
        if not parts:
            return _empty(L)
        if len(parts) == 1:
            return parts[0]
        return PackedBatch([k for p in parts for k in p.keys], np.concatenate([p.ids for p in parts]),
                           np.concatenate([p.groups for p in parts]), np.concatenate([p.lengths for p in parts]))


_EMPTY: dict = {}


def _empty(L: int) -> PackedBatch:
    """The (shared, read-only) empty batch for sequence length ``L``."""
    e = _EMPTY.get(L)
    if e is None:
        e = _EMPTY[L] = PackedBatch((), np.empty((0, L), np.int32), np.empty((0, L), np.int32),
                                    np.empty(0, np.int64))
    return e


def frame_documents(values: np.ndarray, lengths: np.ndarray, eos_id: int, bos_id: int | None):
    """``[bos] + doc + [eos]`` for every document of a flat token array, vectorised.

    Returns ``(ids, doc_lengths)``: the framed flat int32 stream and each framed document's length."""
    lengths = np.asarray(lengths, dtype=np.int64)
    extra = 1 if bos_id is None else 2
    framed = lengths + extra
    ends = np.cumsum(framed)
    total = int(ends[-1]) if len(ends) else 0
    if total and len(lengths) * _SLICE_DOC_TOKENS <= total:
        # few long documents: one slice copy each (a boolean mask over every token costs more)
        out = np.empty(total, dtype=np.int32)
        first = ends - framed + (extra - 1)
        src = 0
        for o, n in zip(first.tolist(), lengths.tolist()):
            out[o:o + n] = values[src:src + n]
            src += n
        out[ends - 1] = eos_id
        if bos_id is not None:
            out[ends - framed] = bos_id
        return out, framed
    out = np.full(total, eos_id, dtype=np.int32)
    if total:
        keep = np.ones(total, dtype=bool)
        keep[ends - 1] = False
        if bos_id is not None:
            starts = ends - framed
            out[starts] = bos_id
            keep[starts] = False
        out[keep] = values
    return out, framed


_SLICE_DOC_TOKENS = 64   # documents this long on average are framed / grouped slice by slice


class Packer:
    def __init__(self, seq_len: int, eos_id: int, bos_id: int | None = None, by_group: bool = False,
                 pad_id: int | None = None, drop: dict[str, int] | None = None):
        if seq_len is None or int(seq_len) < 1:
            raise ValueError(f"seq_len must be a positive integer, got {seq_len!r}")
        self.seq_len = int(seq_len)
        self.L = self.seq_len + 1
        self.eos_id = int(eos_id)
        self.bos_id = None if bos_id is None else int(bos_id)
        self.by_group = by_group
        self.pad_id = self.eos_id if pad_id is None else int(pad_id)
        self.drop = {k: int(v) for k, v in (drop or {}).items() if int(v) > 0}
        self._ids: dict[str, list[np.ndarray]] = {}
        self._grp: dict[str, list[np.ndarray]] = {}
        self._n: dict[str, int] = {}

    # -- feeding ---------------------------------------------------------------------------
    def key(self, group: int) -> str:
        return str(int(group)) if self.by_group else MIXED

    def add(self, ids, group: int) -> list[Packed]:
        """Append one document of ``group``; return the sequences that became full."""
        ids = np.asarray(ids, dtype=np.int32).reshape(-1)
        return self.add_chunk(ids, np.array([len(ids)]), np.array([group], dtype=np.int32)).rows()

    def add_chunk(self, values, lengths, groups) -> PackedBatch:
        """Append many documents at once: ``values`` (flat int32 ids of all documents, in order),
        ``lengths`` (ids per document) and ``groups`` (group id per document). Returns the
        sequences that became full, in the order :meth:`add` would have emitted them."""
        values = np.asarray(values, dtype=np.int32).reshape(-1)
        groups = np.asarray(groups, dtype=np.int32).reshape(-1)
        if len(groups) == 0:
            return _empty(self.L)
        ids, framed = frame_documents(values, lengths, self.eos_id, self.bos_id)
        if not self.by_group:
            tok_grp = np.repeat(groups, framed)
            return self._emit([(MIXED, [ids], tok_grp, None)])
        first = groups[0]
        if (groups == first).all():
            return self._emit([(self.key(first), [ids], None, None)], const={self.key(first): int(first)})
        feeds, const = [], {}
        if len(groups) * _SLICE_DOC_TOKENS <= len(ids):
            # few long documents: each group's feed is a list of slices (runs of its documents)
            ends = np.cumsum(framed)
            starts = ends - framed
            order = np.argsort(groups, kind="stable")
            for sel in np.split(order, np.flatnonzero(np.diff(groups[order])) + 1):
                brk = np.flatnonzero(np.diff(sel) != 1) + 1
                a = starts[sel[np.r_[0, brk]]]
                b = ends[sel[np.r_[brk - 1, len(sel) - 1]]]
                k = self.key(groups[sel[0]])
                const[k] = int(groups[sel[0]])
                seg = np.cumsum(b - a) - (b - a)          # where each run starts in the feed
                feeds.append((k, [ids[x:y] for x, y in zip(a.tolist(), b.tolist())], None, (seg, a)))
            return self._emit(feeds, const=const)
        tok_grp = np.repeat(groups, framed)
        for g in np.unique(groups):
            sel = np.flatnonzero(tok_grp == g)
            k = self.key(g)
            const[k] = int(g)
            feeds.append((k, [ids[sel]], None, sel))
        return self._emit(feeds, const=const)

    def _emit(self, feeds, const=None) -> PackedBatch:
        """Push each ``(key, [ids pieces], groups or None, stream positions)`` feed; collect full
        sequences ordered by the stream position of their last token. Positions: None (the feed
        is the stream), an array (per feed token), or ``(run starts in the feed, run starts in
        the stream)``."""
        L = self.L
        blocks = []   # (key, ids [full, L], groups [full, L], stream positions of last tokens)
        for key, pieces, grp, pos in feeds:
            n_in = sum(len(x) for x in pieces)
            d = self.drop.get(key)
            off = 0
            if d:
                if d >= n_in:
                    self.drop[key] = d - n_in
                    continue
                ids = pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
                pieces = [ids[d:]]
                grp = None if grp is None else grp[d:]
                off, n_in = d, n_in - d
                del self.drop[key]
            if grp is None:
                grp = np.full(n_in, const[key], dtype=np.int32)
            n0 = self._n.get(key, 0)
            n = n0 + n_in
            full = n // L
            if full == 0:
                self._ids.setdefault(key, []).extend(pieces)
                self._grp.setdefault(key, []).append(grp)
                self._n[key] = n
                continue
            if n0:
                cat = np.concatenate(self._ids[key] + pieces)
                gcat = np.concatenate(self._grp[key] + [grp])
            else:
                cat = pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
                gcat = grp
            rest = full * L
            last = np.arange(1, full + 1, dtype=np.int64) * L - 1 - n0 + off   # index into the feed
            if last[0] < off:   # the buffer alone already held a full sequence (carry >= L)
                last = np.maximum(last, off)
            if pos is None:
                p = last
            elif isinstance(pos, tuple):
                seg, start = pos
                r = np.searchsorted(seg, last, side="right") - 1
                p = start[r] + (last - seg[r])
            else:
                p = pos[last]
            blocks.append((key, cat[:rest].reshape(full, L), gcat[:rest].reshape(full, L), p))
            if rest < n:
                self._ids[key] = [cat[rest:]]
                self._grp[key] = [gcat[rest:]]
            else:
                self._ids[key] = []
                self._grp[key] = []
            self._n[key] = n - rest
        if not blocks:
            return _empty(L)
        if len(blocks) == 1:
            key, ids, grp, _ = blocks[0]
            return PackedBatch([key] * len(ids), ids, grp, np.full(len(ids), L, dtype=np.int64))
        # rows in the order of their last token: each block is written once, straight to its rows
        order = np.argsort(np.concatenate([b[3] for b in blocks]), kind="stable")
        N = len(order)
        dest = np.empty(N, dtype=np.int64)
        dest[order] = np.arange(N)
        out_ids = np.empty((N, L), dtype=np.int32)
        out_grp = np.empty((N, L), dtype=np.int32)
        keys = [None] * N
        o = 0
        for key, ids, grp, _ in blocks:
            rows = dest[o:o + len(ids)]
            out_ids[rows] = ids
            out_grp[rows] = grp
            for i in rows.tolist():
                keys[i] = key
            o += len(ids)
        return PackedBatch(keys, out_ids, out_grp, np.full(N, L, dtype=np.int64))

    def load_carry(self, carry: dict) -> list[Packed]:
        """Append a carry (from :meth:`carry` or :meth:`carry_arrays`) ahead of further input;
        returns full sequences. Carry is not subject to ``drop``."""
        return self.load_carry_batch(carry).rows()

    def load_carry_batch(self, carry: dict) -> PackedBatch:
        if not carry:
            return _empty(self.L)
        parts = []
        for key in sorted(carry):
            ids = np.asarray(carry[key]["ids"], dtype=np.int32)
            if len(ids) == 0:
                continue
            grp = np.asarray(carry[key]["groups"], dtype=np.int32)
            saved, self.drop = self.drop, {}
            try:
                parts.append(self._emit([(key, [ids], grp, None)]))
            finally:
                self.drop = saved
        return PackedBatch.concat(parts, self.L)

    # -- state -----------------------------------------------------------------------------
    def carry_arrays(self) -> dict:
        """Leftover tokens per buffer key as int32 numpy arrays ``{key: {"ids", "groups"}}``."""
        out = {}
        for key in sorted(self._n):
            if self._n[key]:
                ids = self._ids[key]
                grp = self._grp[key]
                out[key] = {"ids": ids[0] if len(ids) == 1 else np.concatenate(ids),
                            "groups": grp[0] if len(grp) == 1 else np.concatenate(grp)}
        return out

    def carry(self) -> dict:
        """Leftover tokens per buffer key: ``{key: {"ids": [...], "groups": [...]}}`` (JSON-able)."""
        return {k: {"ids": v["ids"].tolist(), "groups": v["groups"].tolist()} for k, v in self.carry_arrays().items()}

    def flush_batch(self) -> PackedBatch:
        """Every non-empty buffer as one final sequence padded to seq_len+1 (``lengths`` real)."""
        return PackedBatch.of(self.flush(), self.L)

    def flush(self) -> list[Packed]:
        """Emit every non-empty buffer as one final sequence padded to seq_len+1 (``length`` real)."""
        out = []
        for key in sorted(self._n):
            n = self._n[key]
            if not n:
                continue
            ids = np.full(self.L, self.pad_id, dtype=np.int32)
            grp = np.full(self.L, -1, dtype=np.int32)
            ids[:n] = np.concatenate(self._ids[key])
            grp[:n] = np.concatenate(self._grp[key])
            out.append(Packed(key, ids, grp, n))
        self._ids.clear()
        self._grp.clear()
        self._n.clear()
        return out


def document_positions(ids: np.ndarray, lengths: np.ndarray, eos_id: int) -> np.ndarray:
    """Position ids ``[n, L]`` of packed rows: 0 at the start of every row and after every EOS
    (each framed document ``[bos] doc [eos]`` restarts at 0; a document continued from the
    previous row restarts too, rows are independent), counting up inside a document; 0 past a
    row's ``length`` (padding). HF's flattening convention and flash-attention's varlen kernels
    derive document boundaries from exactly these. A document's own EOS-id tokens also end a
    segment (attention is then split there, never joined across documents)."""
    ids = np.asarray(ids)
    n, L = ids.shape
    col = np.arange(L, dtype=np.int64)
    start = np.zeros((n, L), dtype=bool)
    start[:, 0] = True
    start[:, 1:] = ids[:, :-1] == eos_id
    seg = np.maximum.accumulate(np.where(start, col, 0), axis=1)
    pos = col - seg
    pos[col[None, :] >= np.asarray(lengths, dtype=np.int64)[:, None]] = 0
    return pos


def cu_seqlens(positions: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """flash-attention varlen ``cu_seqlens`` (int32, cumulative, starting at 0) of the model inputs
    of packed rows: the first ``L - 1`` tokens of each row (``input_ids[:, :-1]``; the last one is
    only a label), real tokens only (``< length``), flattened row by row. A segment starts where
    ``positions`` is 0."""
    pos = np.asarray(positions)[:, :-1]
    real = np.arange(pos.shape[1])[None, :] < np.asarray(lengths)[:, None]
    flat = pos[real]
    starts = np.flatnonzero(flat == 0)
    return np.append(starts, len(flat)).astype(np.int32)


def carry_tokens(carry: dict) -> int:
    return sum(len(v["ids"]) for v in carry.values())


__all__ = ["Packer", "Packed", "PackedBatch", "MIXED", "carry_tokens", "cu_seqlens", "document_positions",
           "frame_documents"]
