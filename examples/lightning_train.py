"""Train a tiny GPT with PyTorch Lightning, fed by a MIX statement; checkpoint and resume through
Lightning's own checkpoints. The model is built in code: nothing is downloaded.

    python examples/lightning_train.py --steps 20              # train, a checkpoint every 10 steps
    python examples/lightning_train.py --steps 40 --resume     # continue from the last checkpoint

The LightningModule's ``train_dataloader`` is a torchdata ``StatefulDataLoader`` over a
``MixDataset``: Lightning stores the loader's ``state_dict()`` (each worker's dataset state) in
every checkpoint and hands it back on ``fit(ckpt_path=...)``, so the resumed run continues with
exactly the batches an uninterrupted run would have seen (``tests/test_examples_lightning.py``
checks it). ``training_step`` takes the loader's iterator (``dataloader_iter``): with a plain
``training_step(batch, ...)`` Lightning fetches one batch ahead, the checkpointed loader state
counts that batch as consumed, and the resumed run would skip it. Outputs (catalog, checkpoints) go under ``examples/out/``, which git ignores.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from mixsql.torch import MixDataset, mix_collate  # noqa: E402
from train_tiny_gpt import TinyGPT, make_corpus  # noqa: E402

SQL = """
SELECT * FROM samples
WHERE quality > 0.2
MIX BY topic WITH (prose 0.5, code 0.3, math 0.2)
SETTINGS (seed = 7, chunk_size = 1024, unit = 'tokens', on_exhausted = 'repeat', max_epochs = 50)
"""
SEQ_LEN = 32
VOCAB = 258   # the byte-level tokenizer: 256 bytes, EOS, BOS


def _module(catalog: Path, num_workers: int, seen: list | None):
    import lightning as L
    from torchdata.stateful_dataloader import StatefulDataLoader

    class TinyLM(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = TinyGPT(VOCAB, SEQ_LEN, d_model=32, n_layers=2, n_heads=2)

        def training_step(self, dataloader_iter):
            # the loader's iterator itself: Lightning fetches no batch ahead, so the loader state a
            # checkpoint stores is exactly what the steps consumed (a prefetched batch would be
            # counted as consumed and skipped on resume)
            batch, _, _ = next(dataloader_iter)
            if seen is not None:
                seen.append(batch["input_ids"].tolist())
            ids, mask = batch["input_ids"], batch["mask"]
            logits = self.model(ids[:, :-1])
            labels = ids[:, 1:].masked_fill(~mask[:, 1:].bool(), -100)   # padding out of the loss
            return F.cross_entropy(logits.reshape(-1, VOCAB), labels.reshape(-1), ignore_index=-100)

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=3e-3)

        def train_dataloader(self):
            ds = MixDataset(SQL, catalog=str(catalog), seq_len=SEQ_LEN)
            return StatefulDataLoader(ds, batch_size=4, num_workers=num_workers, collate_fn=mix_collate)

    return TinyLM()


def train(out: Path, steps: int, resume: bool = False, save_every: int = 10, stop_at: int | None = None,
          num_workers: int = 2, seen: list | None = None):
    """Train to ``steps`` (stopping early after ``stop_at``, as a crash would), checkpointing every
    ``save_every`` steps under ``out/ckpt``; ``seen`` collects every training batch's input ids."""
    import lightning as L
    from lightning.pytorch.callbacks import Callback, ModelCheckpoint

    catalog = out / "lightning_catalog"
    if not catalog.exists():
        make_corpus(catalog)

    class StopAt(Callback):
        def on_train_batch_end(self, trainer, *args):
            if stop_at is not None and trainer.global_step >= stop_at:
                trainer.should_stop = True

    torch.manual_seed(0)
    model = _module(catalog, num_workers, seen)
    ckpt_dir = out / "ckpt"
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, use_distributed_sampler=False,
                        callbacks=[ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=save_every, save_top_k=-1,
                                                   filename="{step}"), StopAt()])
    last = max(ckpt_dir.glob("step=*.ckpt"), key=lambda p: int(p.stem.split("=")[1]), default=None)
    trainer.fit(model, ckpt_path=str(last) if resume and last else None)
    return trainer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--resume", action="store_true", help="continue from the last checkpoint in examples/out/")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "out" / "lightning"))
    a = ap.parse_args()
    train(Path(a.out), a.steps, resume=a.resume)


if __name__ == "__main__":
    main()
