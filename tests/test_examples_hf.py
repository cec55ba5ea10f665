"""examples/hf_trainer.py: a few Trainer steps, a checkpoint, a resume; the resumed run's batches
equal the uninterrupted run's."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

import accelerate  # noqa: F401 (a test dependency: fail, never skip, when missing)
import transformers  # noqa: F401

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning",
                                        "ignore:This DataLoader will create")


def test_trainer_checkpoint_resume_sees_the_same_batches(tmp_path):
    from hf_trainer import train

    full: list = []
    train(tmp_path / "a", 6, save_every=3, seen=full)
    head: list = []
    train(tmp_path / "b", 6, save_every=3, stop_at=3, seen=head)     # "crashes" after the step-3 checkpoint
    assert (tmp_path / "b" / "run" / "checkpoint-3").is_dir()
    tail: list = []
    trainer = train(tmp_path / "b", 6, save_every=3, resume=True, seen=tail)
    assert trainer.state.global_step == 6
    assert len(full) == 6 and head == full[:3]
    assert head + tail == full
