"""``MixDataLoader``: a ``DataLoader`` whose ``state_dict()`` records exactly the batches handed out.

It picks the path (fast: the dataset cuts whole batches; per item: ``_wire_collate``), starts
workers from a fork server when gRPC is live (``_worker_context``), records every batch's resume
tokens in a ``_Tracker``, agrees on even endings across ranks (:mod:`.even_end`) and hands
persistent workers each epoch's start state.
"""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from ..errors import InterfaceError
from .dataset import MixDataset
from .even_end import _EvenEnd
from .tracker import _Tracker
from .wire import _interleave, _one_item, _pass, _unwire, _wire_collate, add_boundaries, mix_collate


def _worker_context():
    """The start method for DataLoader workers when the caller names none.

    PyTorch's default (``fork`` on Linux) unless gRPC (Arrow Flight, the server mode) is live in
    this process: forking a process with gRPC threads can crash the child, so then workers start
    from a fork server that preloaded torch and mixsql. (A fork server, like spawn, needs the
    ``if __name__ == "__main__":`` guard in the training script.)"""
    import multiprocessing
    import sys

    if "pyarrow._flight" not in sys.modules or "forkserver" not in multiprocessing.get_all_start_methods():
        return None
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "mixsql.torch"])
    return ctx


class MixDataLoader(DataLoader):
    """A ``DataLoader`` over a :class:`MixDataset` whose ``state_dict()`` records exactly the batches
    handed to the training loop (see :mod:`mixsql.torch` for the resume guarantee)."""

    def __init__(self, dataset: MixDataset, batch_size: int | None = 1, num_workers: int = 0,
                 collate_fn=mix_collate, **kwargs):
        if num_workers > 0 and "multiprocessing_context" not in kwargs:
            kwargs["multiprocessing_context"] = _worker_context()
        # packed + mix_collate: the dataset yields whole batches (_Batcher), the DataLoader only
        # passes them on; otherwise workers ship packed batches as one buffer (_wire_collate).
        # Both are unpacked in __iter__.
        self._fast = (collate_fn is mix_collate and batch_size is not None
                      and getattr(dataset, "seq_len", None) is not None)
        self._wire = collate_fn is mix_collate and num_workers > 0 and batch_size is not None
        if collate_fn is mix_collate and batch_size is None:
            collate_fn = _one_item   # DataLoader hands single items to the collate then
        drop_last = bool(kwargs.pop("drop_last", False))
        if self._fast:
            super().__init__(dataset, batch_size=None, num_workers=num_workers, collate_fn=_pass, **kwargs)
            # the user's batching, as DataLoader would show it (iteration never reads these:
            # batch_sampler stays None, so DataLoader does no batching of its own)
            object.__setattr__(self, "batch_size", batch_size)
            object.__setattr__(self, "drop_last", drop_last)
        else:
            super().__init__(dataset, batch_size=batch_size, num_workers=num_workers, drop_last=drop_last,
                             collate_fn=_wire_collate if self._wire else collate_fn, **kwargs)
        self._tracker: _Tracker | None = None
        if getattr(dataset, "batch_size", 0) is None and batch_size is not None:
            dataset.batch_size = int(batch_size)   # SCHEDULE steps follow the batches consumed

    def __iter__(self):
        if self._tracker is not None:  # re-iterating continues after what was consumed
            self.dataset.load_state_dict({"mixsql": self._tracker.state()})
        if self.persistent_workers and self.num_workers > 0:
            self._send_epoch_state()
        self._tracker = _Tracker(self.dataset._state, max(1, self.num_workers))
        tracker = self._tracker
        self.dataset._emit_tokens = True
        self.dataset._batching = (self.batch_size, self.drop_last) if self._fast else None
        try:
            it = super().__iter__()
        finally:
            self.dataset._emit_tokens = False
            self.dataset._batching = None
        fast = self._fast
        if fast and self.num_workers > 0:   # workers send bundles of batches
            it = _interleave(iter(it), self.num_workers, tracker.next_worker)
        wire, pin = self._wire or fast, bool(self.pin_memory) and torch.cuda.is_available()
        observe, observe_counts = tracker.observe, tracker.observe_counts
        ends = _EvenEnd.of(self)
        eos = self.dataset.eos if self.dataset.boundaries else None
        for batch in it:
            if ends is not None and not ends.others_have_one():
                ends.warn_drop()
                return   # 'drop': another rank ran out; this batch (and the rest) stay in the state
            if wire and isinstance(batch, dict):
                batch = _unwire(batch, pin)
            toks = batch.pop("_mix", None) if isinstance(batch, dict) else None
            if toks is None:
                raise InterfaceError("MixDataLoader needs mix_collate (or a collate keeping the '_mix' tokens)")
            if fast:
                for seg in toks:
                    observe_counts(*seg)
            else:
                for tok in toks:
                    observe(tok)
            self.dataset._steps += 1
            if eos is not None and "input_ids" in batch:
                batch = add_boundaries(batch, eos)
            if ends is not None:
                ends.shape = batch
            yield batch
        if ends is not None:
            for pad in ends.pads():   # a padded step is a training step too
                self.dataset._steps += 1
                yield pad

    def _send_epoch_state(self) -> None:
        """Persistent workers keep their dataset copies (and the planned selection they opened)
        across epochs: each epoch's start state reaches them through a queue, one message per
        worker, taken when DataLoader restarts their iteration (it waits for every worker)."""
        ds = self.dataset
        if getattr(self, "_iterator", None) is None:   # workers start now, with a copy of ds
            import multiprocessing

            ctx = self.multiprocessing_context or multiprocessing.get_context()
            ds._epoch_states = ctx.Queue()
            ds._epoch = 0
            return
        for _ in range(self.num_workers):
            ds._epoch_states.put(ds._state)

    def state_dict(self) -> dict:
        st = self._tracker.state() if self._tracker else self.dataset._state
        ds = self.dataset
        return {"mixsql": st, "statement": ds._fingerprint(), "snapshot": ds.snapshot, **ds._dynamic_state(),
                "run": ds._run_record(ds._steps, self.num_workers, self.batch_size, self.drop_last, state=st)}

    def load_state_dict(self, state: dict) -> None:
        self.dataset.load_state_dict(state)
        self._tracker = None
