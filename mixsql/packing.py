"""Pack tokenized documents into fixed ``seq_len + 1`` training sequences.

Each document becomes ``[bos] + ids + [eos]`` and is appended to a buffer; every time a
buffer holds ``seq_len + 1`` tokens a sequence is emitted. With ``by_group=True`` (mixtures
with ``unit = 'tokens'``) each group has its own buffer, so every sequence holds one group's
tokens; otherwise one buffer holds all groups and each sequence carries per-token group ids.

Leftover tokens are never dropped: they stay in the carry buffers, which move on to the next
chunk and are small and JSON-serialisable (:meth:`Packer.carry`). At the end of a stream
:meth:`Packer.flush` delivers each non-empty buffer as one final *short* sequence, padded to
``seq_len + 1`` with ``pad_id`` and marked by ``length`` < ``seq_len + 1`` (mask positions
``>= length`` out of the loss).

Resume support: ``drop`` (per buffer key) skips the first tokens *fed* through :meth:`add`,
which is how a reader resumes in the middle of a chunk without re-emitting consumed sequences.
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
        parts = []
        if self.bos_id is not None:
            parts.append(np.array([self.bos_id], dtype=np.int32))
        parts.append(np.asarray(ids, dtype=np.int32))
        parts.append(np.array([self.eos_id], dtype=np.int32))
        doc = np.concatenate(parts)
        key = self.key(group)
        d = self.drop.get(key)
        if d:
            if d >= len(doc):
                self.drop[key] = d - len(doc)
                return []
            doc = doc[d:]
            del self.drop[key]
        return self._push(key, doc, np.full(len(doc), group, dtype=np.int32))

    def load_carry(self, carry: dict) -> list[Packed]:
        """Append a carry (from :meth:`carry`) ahead of further input; returns full sequences.

        Carry is not subject to ``drop``."""
        out: list[Packed] = []
        for key in sorted(carry):
            ids = np.asarray(carry[key]["ids"], dtype=np.int32)
            if len(ids) == 0:
                continue
            grp = np.asarray(carry[key]["groups"], dtype=np.int32)
            out.extend(self._push(key, ids, grp))
        return out

    def _push(self, key: str, ids: np.ndarray, grp: np.ndarray) -> list[Packed]:
        self._ids.setdefault(key, []).append(ids)
        self._grp.setdefault(key, []).append(grp)
        n = self._n.get(key, 0) + len(ids)
        self._n[key] = n
        if n < self.L:
            return []
        cat = np.concatenate(self._ids[key]) if len(self._ids[key]) > 1 else self._ids[key][0]
        gcat = np.concatenate(self._grp[key]) if len(self._grp[key]) > 1 else self._grp[key][0]
        full = n // self.L
        out = [Packed(key, cat[i * self.L:(i + 1) * self.L], gcat[i * self.L:(i + 1) * self.L], self.L)
               for i in range(full)]
        rest = full * self.L
        self._ids[key] = [cat[rest:]] if rest < n else []
        self._grp[key] = [gcat[rest:]] if rest < n else []
        self._n[key] = n - rest
        return out

    # -- state -----------------------------------------------------------------------------
    def carry(self) -> dict:
        """Leftover tokens per buffer key: ``{key: {"ids": [...], "groups": [...]}}`` (JSON-able)."""
        out = {}
        for key in sorted(self._n):
            if self._n[key]:
                ids = np.concatenate(self._ids[key])
                grp = np.concatenate(self._grp[key])
                out[key] = {"ids": ids.tolist(), "groups": grp.tolist()}
        return out

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


def carry_tokens(carry: dict) -> int:
    return sum(len(v["ids"]) for v in carry.values())


__all__ = ["Packer", "Packed", "MIXED", "carry_tokens"]
