"""A feedback-driven training loop for the ledger tests: logs each step's samples, checkpoints
every ``--every`` steps (torch.save, atomically replaced), resumes from the checkpoint.

    python tests/ledger_train.py CATALOG OUT_DIR --steps N [--resume]
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys

import torch

SQL = ("SELECT * FROM samples MIX BY language WITH (JavaScript 0.4, HTML 0.3, Python 0.3) "
       "USING ADO (update_every = 4, fit_skip = 0, subsample = 1, smooth_window = 3, fit_lag = 1) "
       "SETTINGS (chunk_size = 5, on_exhausted = 'repeat', seed = 4)")
GROUPS = ("JavaScript", "HTML", "Python")


def main(argv=None) -> None:
    from mixsql.torch import MixDataLoader, MixDataset

    ap = argparse.ArgumentParser()
    ap.add_argument("catalog")
    ap.add_argument("out")
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--every", type=int, default=5)
    ap.add_argument("--resume", action="store_true")
    a = ap.parse_args(argv)
    ckpt = os.path.join(a.out, "ckpt.pt")
    ds = MixDataset(SQL, catalog=a.catalog, columns=("file", "row"))
    dl = MixDataLoader(ds, batch_size=6, num_workers=0)
    step = 0
    if a.resume:
        st = torch.load(ckpt, weights_only=True)
        dl.load_state_dict(st["data"])
        step = st["step"]
    log = open(os.path.join(a.out, f"log-{'resumed' if a.resume else 'first'}.jsonl"), "a")
    for batch in dl:
        if step >= a.steps:
            break
        log.write(json.dumps({"step": step, "samples": [[f, r] for f, r in zip(batch["file"], batch["row"])]}) + "\n")
        log.flush()
        counts = collections.Counter(batch["group"])
        n = step + 1
        losses = {"JavaScript": 2 + 5 * n ** -0.8, "HTML": 2 + 0.5 * n ** -0.1, "Python": 2.2}
        ds.feedback(step, [losses[g] * counts[g] for g in GROUPS], [float(counts[g]) for g in GROUPS])
        step += 1
        if step % a.every == 0 or step == a.steps:
            torch.save({"data": dl.state_dict(), "step": step}, ckpt + ".tmp")
            os.replace(ckpt + ".tmp", ckpt)
    log.close()


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main()
