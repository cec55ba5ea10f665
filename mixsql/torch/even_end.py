"""Even endings (``even_end``): every data-parallel rank hands out the same number of batches."""
from __future__ import annotations

from typing import Iterator

import torch

EVEN_ENDS = ("drop", "pad", "off")


class _EvenEnd:
    """Equal batch counts on every data-parallel rank of a finite stream (``even_end``).

    Before handing out each batch, the ranks agree over torch.distributed (one 1-element
    all-reduce per batch on a gloo group) whether every rank still has one: under ``'drop'``
    (the default) all ranks stop at the first batch some rank lacks, the batches not handed out
    staying in ``state_dict()`` as unconsumed; under ``'pad'`` the ranks that ran out hand out
    fully masked packed batches (``mask`` False, ``length`` 0, ``group`` '') until every rank
    has ended. Off for ``'off'`` and without an initialised process group of more than one rank
    (a stream that never ends pays the one small all-reduce per batch all the same).""" 

    def __init__(self, loader, group):
        ds = loader.dataset
        self.mode, self.group, self.rank = ds.even_end, group, ds.dp_rank
        self.B = loader.batch_size or 1
        self.L = ds.seq_len + 1 if ds.seq_len is not None else None
        self.pad_id = ds.pad_id if ds.pad_id is not None else 0
        self.shape: dict | None = None

    @classmethod
    def of(cls, loader) -> "_EvenEnd | None":
        import torch.distributed as dist

        ds = loader.dataset
        if ds.even_end == "off" or not (dist.is_available() and dist.is_initialized()):
            return None
        if dist.get_world_size() < 2:
            return None
        group = getattr(loader, "_even_group", None)
        if group is None:   # one gloo group per loader (an NCCL default group cannot reduce CPU tensors)
            group = dist.group.WORLD if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
            loader._even_group = group
        return cls(loader, group)

    def _all(self, have: bool, op) -> int:
        import torch.distributed as dist

        t = torch.tensor([1 if have else 0], dtype=torch.int32)
        dist.all_reduce(t, op=op, group=self.group)
        return int(t.item())

    def others_have_one(self) -> bool:
        import torch.distributed as dist

        return bool(self._all(True, dist.ReduceOp.MIN if self.mode == "drop" else dist.ReduceOp.MAX))

    def warn_drop(self) -> None:
        import warnings

        from ..errors import ExhaustedWarning

        warnings.warn(f"even_end='drop': data-parallel rank {self.rank} stops with batches left because another "
                      "rank ran out (every rank hands out the same number); the rest stays in loader.state_dict() "
                      "(even_end='pad' pads instead)", ExhaustedWarning, stacklevel=3)

    def pads(self) -> Iterator[dict]:
        """This rank ran out: agree once more (drop) or pad until every rank ran out (pad)."""
        import torch.distributed as dist

        op = dist.ReduceOp.MIN if self.mode == "drop" else dist.ReduceOp.MAX
        while self._all(False, op):
            yield self._pad_batch()

    def _pad_batch(self) -> dict:
        ref = self.shape
        B = len(ref["group"]) if ref is not None else self.B
        L = ref["input_ids"].shape[1] if ref is not None else self.L
        out = {"input_ids": torch.full((B, L), self.pad_id, dtype=torch.long),
               "group_ids": torch.full((B, L), -1, dtype=torch.long),
               "length": torch.zeros(B, dtype=torch.long), "mask": torch.zeros((B, L), dtype=torch.bool)}
        if ref is not None and "position_ids" in ref:
            out["position_ids"] = torch.zeros((B, L), dtype=torch.long)
        out["group"] = [""] * B
        return out
