"""examples/lightning_train.py: a few Lightning steps, a checkpoint, a resume; the resumed run's
batches equal the uninterrupted run's."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

import lightning  # noqa: F401 (a test dependency: fail, never skip, when missing)
import torchdata  # noqa: F401

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning",
                                        "ignore::UserWarning")


def test_lightning_checkpoint_resume_sees_the_same_batches(tmp_path):
    from lightning_train import train

    full: list = []
    train(tmp_path / "a", 6, save_every=3, seen=full)
    head: list = []
    train(tmp_path / "b", 6, save_every=3, stop_at=3, seen=head)     # "crashes" after the step-3 checkpoint
    assert (tmp_path / "b" / "ckpt" / "step=3.ckpt").is_file()
    tail: list = []
    trainer = train(tmp_path / "b", 6, save_every=3, resume=True, seen=tail)
    assert trainer.global_step == 6
    assert len(full) == 6 and head == full[:3]
    assert head + tail == full
