"""A tiny GPT trained on CPU from a mixsql server with ``USING ADO``; prints the weights as they move.

Three synthetic domains: ``easy`` (a short repeated phrase: its loss falls fast), ``medium``
(English-like words) and ``noise`` (random letters: its loss cannot fall much). ADO should
shift weight towards the domains whose loss still falls fastest.

    python examples/ado_gpt.py [--steps 150]

What it shows: a Flight server (in this process, on 127.0.0.1) executes the statement; the
training loop pulls chunks by index with ``MixClient``, reads the samples with
``mixsql.readers.ChunkReader``, trains one step per chunk and reports per-group loss sums and
token counts with ``client.feedback`` (rank 0 only, after an all-reduce in a real run).
"""
from __future__ import annotations

import argparse
import json
import random
import tempfile
import threading
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from mixsql.catalog import Catalog
from mixsql.client import MixClient
from mixsql.readers import ChunkReader
from mixsql.registration import create_source
from mixsql.server import MixServer

SQL = """
SELECT * FROM samples
MIX BY domain WITH (easy 0.34, medium 0.33, noise 0.33)
USING ADO (update_every = 25, fit_skip = 0, subsample = 1, smooth_window = 7, fit_lag = 2)
SETTINGS (chunk_size = 16, batch_size = 16, on_exhausted = 'repeat', seed = 1)
"""
SEQ = 48


def make_corpus(root: Path) -> Path:
    rng = random.Random(0)
    words = "the of and to in is was for on that with as by at from data model mix train token".split()
    data = root / "data"
    data.mkdir(parents=True)
    with open(data / "corpus.jsonl", "w") as f:
        for i in range(600):
            f.write(json.dumps({"domain": "easy", "text": "abcabc hello world " * 4}) + "\n")
            f.write(json.dumps({"domain": "medium", "text": " ".join(rng.choice(words) for _ in range(12))}) + "\n")
            f.write(json.dumps({"domain": "noise", "text": "".join(rng.choice("abcdefghijklmnopqrstuvwxyz ")
                                                                 for _ in range(60))}) + "\n")
    cat = Catalog(root / "catalog")
    try:
        create_source(cat, "toy", str(data / "*.jsonl"), options={"domain": "domain"}, progress=False)
    finally:
        cat.close()
    return root / "catalog"


class TinyGPT(nn.Module):
    def __init__(self, vocab=256, d=64, layers=2, heads=4, seq=SEQ):
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(seq, d)
        layer = nn.TransformerEncoderLayer(d, heads, 4 * d, dropout=0.0, batch_first=True, norm_first=True)
        self.body = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d, vocab)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(seq))

    def forward(self, x):
        h = self.tok(x) + self.pos(torch.arange(x.shape[1]))
        return self.head(self.body(h, mask=self.mask[: x.shape[1], : x.shape[1]], is_causal=True))


def batch_from(table, groups):
    ids, gids = [], []
    for text, g in zip(table.column("text").to_pylist(), table.column("group").to_pylist()):
        b = list(text.encode()[: SEQ + 1])
        b += [0] * (SEQ + 1 - len(b))
        ids.append(b)
        gids.append(groups.index(g))
    return torch.tensor(ids), torch.tensor(gids)


def main(steps: int = 150) -> None:
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        cat = make_corpus(Path(tmp))
        server = MixServer(cat, "127.0.0.1", 0)
        threading.Thread(target=server.serve, daemon=True).start()
        try:
            client = MixClient(server.location)
            info = client.register(SQL)
            job, groups = info["job"], info["groups"]
            reader = ChunkReader(client.files(job))      # the server sends what a reader needs
            model = TinyGPT()
            opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
            print(f"job {job}; groups {groups}; prior {np.round(info['weights'], 3).tolist()}")
            for step in range(steps):
                chunk = client.get_chunk(job, step)
                x, g = batch_from(reader.read(chunk), groups)
                logits = model(x[:, :-1])
                tok_loss = nn.functional.cross_entropy(logits.reshape(-1, 256), x[:, 1:].reshape(-1),
                                                       reduction="none").view(x.shape[0], -1).sum(1)
                loss = tok_loss.sum() / (x.shape[0] * SEQ)
                opt.zero_grad()
                loss.backward()
                opt.step()
                sums = torch.zeros(len(groups)).index_add_(0, g, tok_loss.detach())
                counts = torch.bincount(g, minlength=len(groups)).float() * SEQ
                r = client.feedback(job, step, sums.tolist(), counts.tolist())
                if step % 10 == 0 or (r.get("at_chunk") is not None and step % 5 == 0):
                    mean = (sums / counts.clamp(min=1)).tolist()
                    comp = {n: int((g == i).sum()) for i, n in enumerate(groups)}
                    print(f"step {step:4d} loss/token {dict(zip(groups, np.round(mean, 2).tolist()))} "
                          f"chunk {comp} weights {dict(zip(groups, np.round(r['weights'], 3).tolist()))}")
            log = client.job_info(job)["weight_log"]
            print(f"{len(log)} weight changes recorded; first at chunk {log[0][0] if log else None}")
        finally:
            server.shutdown()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=150)
    main(ap.parse_args().steps)
