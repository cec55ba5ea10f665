"""Train a tiny GPT on CPU from a MIX statement in a YAML config; per-group loss; checkpoint/resume.

    python examples/train_tiny_gpt.py --steps 40                # fresh run
    python examples/train_tiny_gpt.py --steps 80 --resume       # continue from the checkpoint

The data loader state goes into the checkpoint next to the model, so a resumed run continues
with exactly the batches an uninterrupted run would have seen (same num_workers) and never
repeats or skips data (any num_workers). Every ``log_every`` steps it prints the loss averaged
over those steps' tokens, overall and per group (the same window and weighting, so the overall
figure is the token-weighted mean of the per-group ones). Outputs (catalog, checkpoint) go under
``examples/out/``, which git ignores.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mixsql.catalog import Catalog  # noqa: E402
from mixsql.torch import MixDataLoader, MixDataset  # noqa: E402


def make_corpus(catalog_dir: Path) -> None:
    """A small synthetic corpus (3 topics) registered into ``catalog_dir``."""
    from mixsql.registration import create_source

    data = catalog_dir / "data"
    data.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    words = {"prose": "the a cat dog sat ran on under quietly house river morning".split(),
             "code": "def return if else for in range print x y self import".split(),
             "math": "1 2 3 4 5 + - * = ( ) sum prime".split()}
    for part in range(3):
        with open(data / f"part{part}.jsonl", "w") as f:
            for i in range(400):
                topic = rng.choice(list(words))
                text = " ".join(rng.choice(words[topic]) for _ in range(rng.randint(5, 60)))
                rec = {"text": text, "topic": topic, "quality": round(rng.random(), 3)}
                f.write(json.dumps(rec) + "\n")
    with Catalog(catalog_dir) as cat:   # n_tokens counted (and recorded) with the training tokenizer
        create_source(cat, "tiny", str(data / "*.jsonl"), options={"tokenizer": "byte"}, progress=False)


class TinyGPT(nn.Module):
    def __init__(self, vocab: int, seq_len: int, d_model: int, n_layers: int, n_heads: int):
        super().__init__()
        self.tok = nn.Embedding(vocab, d_model)
        self.pos = nn.Embedding(seq_len, d_model)
        layer = nn.TransformerEncoderLayer(d_model, n_heads, 4 * d_model, dropout=0.0, batch_first=True)
        self.blocks = nn.TransformerEncoder(layer, n_layers)
        self.head = nn.Linear(d_model, vocab)

    def forward(self, x):
        T = x.shape[1]
        mask = torch.triu(torch.full((T, T), float("-inf")), diagonal=1)
        h = self.tok(x) + self.pos(torch.arange(T))
        return self.head(self.blocks(h, mask=mask, is_causal=True))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(Path(__file__).with_name("train_config.yaml")))
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--loss-log", metavar="JSONL", help="append every step's loss here ({'step', 'loss'} per line)")
    args = ap.parse_args(argv)
    cfg = yaml.safe_load(open(args.config))
    cat_dir = Path(cfg["catalog"])
    if not (cat_dir / "snapshots").is_dir():
        make_corpus(cat_dir)
    seq_len = cfg["seq_len"]
    torch.manual_seed(0)  # model init only; data order comes from the statement's seed
    ds = MixDataset(cfg["data"], catalog=str(cat_dir), seq_len=seq_len)
    loader = MixDataLoader(ds, batch_size=cfg["batch_size"], num_workers=cfg["num_workers"])
    model = TinyGPT(258, seq_len, **cfg["model"])
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"])
    step = 0
    ckpt = Path(cfg["checkpoint"])
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    if args.resume and ckpt.exists():
        st = torch.load(ckpt, weights_only=False)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        loader.load_state_dict(st["data"])
        step = st["step"]
        print(f"resumed at step {step}")
    loss_log = open(args.loss_log, "a") if args.loss_log else None
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for batch in loader:
        if step >= args.steps:
            break
        ids, mask, gids = batch["input_ids"], batch["mask"], batch["group_ids"]
        logits = model(ids[:, :-1])
        tok_loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none")
        valid = mask[:, 1:].reshape(-1).float()
        loss = (tok_loss * valid).sum() / valid.sum().clamp(min=1)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if loss_log is not None:
            loss_log.write(json.dumps({"step": step, "loss": float(loss.detach())}) + "\n")
        step += 1
        for g, seq_loss, m in zip(batch["group"], tok_loss.detach().view(ids.shape[0], -1), mask[:, 1:]):
            sums[g] = sums.get(g, 0.0) + float(seq_loss[m].sum())
            counts[g] = counts.get(g, 0) + int(m.sum())
        if step % cfg["log_every"] == 0:
            mean = sum(sums.values()) / max(sum(counts.values()), 1)
            per = "  ".join(f"{g} {sums[g] / counts[g]:.3f}" for g in sorted(sums))
            print(f"steps {step - cfg['log_every'] + 1:4d}-{step:<4d}  mean loss {mean:.3f}  "
                  f"(ppl {math.exp(mean):.1f})  by group: {per}")
            sums.clear()
            counts.clear()
        if step % cfg["checkpoint_every"] == 0 or step == args.steps:
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(),
                        "data": loader.state_dict(), "step": step}, ckpt)
    if loss_log is not None:
        loss_log.close()
    print(f"done at step {step}; checkpoint {ckpt}")


if __name__ == "__main__":
    main()
