"""Persistence of a job: its job file, written atomically, and its journal of append-only lists.

Persistence
    ``<catalog>/jobs/<job>.json`` is rewritten atomically (temp file + ``os.replace``) after
    every change of the dynamic state (registration, feedback, restore, checkpoint) and every
    ``SAVE_EVERY`` chunks served to ranks; per-rank consumption is saved with those writes. After ``kill -9`` the job
    reloads from that file: feedback already acknowledged is never lost (clients resend
    unacknowledged feedback; a step at or below the last one is ignored as a duplicate).
    The algorithm's append-only lists (ADO's per-step loss history, see
    ``MixingAlgorithm.append_only``) and the job's whole weight history (every ``[at_chunk,
    weights]`` change since chunk 0, which the engine and the data ledger re-apply; the job
    file's weight log keeps only the newest ``LOG_KEEP`` changes with their reasons) live in ``<job>.journal`` instead: each save appends only the new
    items, then the job file records how many are committed, so a feedback call writes
    O(groups) bytes however long training has run. Journal lines beyond the committed counts
    (a crash between the two writes) are ignored and cleaned up on reload.
"""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import orjson

from ..errors import OperationalError


def _dumps(obj: Any) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)


def _private(path: Path, flags: int):
    """Open ``path`` for writing, created readable by the owner only (0600)."""
    return os.fdopen(os.open(path, flags | os.O_WRONLY | os.O_CREAT, 0o600), "wb")


def atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with _private(tmp, os.O_TRUNC) as f:
        f.write(data)
    os.replace(tmp, path)


class Journal:
    """The append-only lists of a job's algorithm state: ``<job>.journal``, one JSON line
    ``[key, [items...]]`` per save and key. Which items count is recorded in the job file."""

    def __init__(self, path: Path):
        self.path = path
        self.committed: dict[str, int] = {}
        self.clean = False   # the file holds exactly the committed items (else: rewrite on save)

    def load(self, lengths: dict) -> dict[str, list]:
        """The first ``lengths[key]`` items of every key; OperationalError when some are missing."""
        want = {str(k): int(n) for k, n in lengths.items()}
        got: dict[str, list] = {k: [] for k in want}
        extra = False
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            data = b""
        for line in data.split(b"\n"):
            if not line:
                continue
            try:
                key, items = json.loads(line)
            except (ValueError, TypeError):   # a torn last line: never committed
                extra = True
                break
            if key not in got or not isinstance(items, list):
                extra = True
                continue
            room = want[key] - len(got[key])
            extra = extra or len(items) > room
            got[key].extend(items[:max(room, 0)])
        short = [f"{k}: {len(v)} of {want[k]}" for k, v in got.items() if len(v) < want[k]]
        if short:
            raise OperationalError(
                f"job journal {self.path} is missing committed entries ({'; '.join(short)}); "
                "restore the job from a checkpoint (MixClient.restore) or register it again"
            )
        self.committed = want
        self.clean = not extra
        return got

    def persist(self, state: dict, keys) -> dict[str, int]:
        """Write the items of ``state[key]`` not yet in the file (all of them when the file is
        not clean or a list shrank); returns the counts the job file must now record."""
        rewrite = not self.clean or any(len(state.get(k) or ()) < self.committed.get(k, 0) for k in keys)
        payload = b""
        for k in keys:
            items = state.get(k) or []
            start = 0 if rewrite else self.committed.get(k, 0)
            if len(items) > start:
                payload += _dumps([k, items[start:]]) + b"\n"
        if rewrite:
            atomic_write(self.path, payload)
            self.clean = True
        elif payload:
            with _private(self.path, os.O_APPEND) as f:
                f.write(payload)
        self.committed = {k: len(state.get(k) or ()) for k in keys}
        return dict(self.committed)
