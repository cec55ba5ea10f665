"""Train a tiny GPT-2 with the Hugging Face ``Trainer``, fed by a MIX statement; checkpoint and
resume through the Trainer's own mechanism. The model is built from a config: nothing is downloaded.

    python examples/hf_trainer.py --steps 20              # train, a checkpoint every 10 steps
    python examples/hf_trainer.py --steps 40 --resume     # continue from the last checkpoint

The Trainer builds its own DataLoader over the ``MixDataset``. On ``resume_from_checkpoint`` it
restores the model, optimizer and step and skips the batches the checkpointed run consumed; the
stream is a pure function of the statement, so the resumed run sees exactly the batches an
uninterrupted run would have seen (``tests/test_examples_hf.py`` checks it). Outputs (catalog,
checkpoints) go under ``examples/out/``, which git ignores.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from mixsql.torch import MixDataset  # noqa: E402
from train_tiny_gpt import make_corpus  # noqa: E402

SQL = """
SELECT * FROM samples
WHERE quality > 0.2
MIX BY topic WITH (prose 0.5, code 0.3, math 0.2)
SETTINGS (seed = 7, chunk_size = 1024, unit = 'tokens', on_exhausted = 'repeat', max_epochs = 50)
"""
SEQ_LEN = 32
VOCAB = 257   # the byte-level tokenizer: 256 bytes + EOS


def collate(items: list[dict]) -> dict:
    """MixDataset's packed items -> what a causal LM takes (labels: padding masked out)."""
    ids = torch.stack([it["input_ids"] for it in items])
    length = torch.tensor([it["length"] for it in items])
    mask = torch.arange(ids.shape[1])[None, :] < length[:, None]
    return {"input_ids": ids, "attention_mask": mask.long(), "labels": ids.masked_fill(~mask, -100)}


def train(out: Path, steps: int, resume: bool = False, save_every: int = 10, stop_at: int | None = None,
          num_workers: int = 2, seen: list | None = None):
    """Train to ``steps`` (stopping early after ``stop_at``, as a crash would), checkpointing every
    ``save_every`` steps under ``out/run``; ``seen`` collects every training batch's input ids."""
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments

    catalog = out / "hf_catalog"
    if not catalog.exists():
        make_corpus(catalog)

    class Recording(Trainer):
        def compute_loss(self, model, inputs, *args, **kwargs):
            if seen is not None:
                seen.append(inputs["input_ids"].tolist())
            return super().compute_loss(model, inputs, *args, **kwargs)

    class StopAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if stop_at is not None and state.global_step >= stop_at:
                control.should_training_stop = True

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_positions=SEQ_LEN + 1, n_embd=32, n_layer=2,
                                       n_head=2, bos_token_id=VOCAB - 1, eos_token_id=VOCAB - 1))
    args = TrainingArguments(output_dir=str(out / "run"), max_steps=steps, per_device_train_batch_size=4,
                             learning_rate=3e-3, save_strategy="steps", save_steps=save_every,
                             logging_steps=max(1, save_every), report_to=[], use_cpu=True, seed=0,
                             dataloader_num_workers=num_workers, disable_tqdm=True,
                             remove_unused_columns=False)   # the collate needs "length"
    trainer = Recording(model=model, args=args, data_collator=collate, callbacks=[StopAt()],
                        train_dataset=MixDataset(SQL, catalog=str(catalog), seq_len=SEQ_LEN))
    trainer.train(resume_from_checkpoint=True if resume else None)
    return trainer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--resume", action="store_true", help="continue from the last checkpoint in examples/out/")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "out" / "hf_trainer"))
    a = ap.parse_args()
    train(Path(a.out), a.steps, resume=a.resume)


if __name__ == "__main__":
    main()
