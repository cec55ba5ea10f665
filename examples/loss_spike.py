"""A loss-spike investigation end to end on the tiny GPT example: find the worst step, list the
documents it trained on with their catalog properties -- from the checkpoint alone.

    python examples/loss_spike.py            # trains 40 steps first when there is no checkpoint

Every step's loss is logged by ``train_tiny_gpt.py --loss-log``; nothing about the data is
logged: the checkpoint's loader state (``loader.state_dict()``) is enough for
``mix_ledger('ckpt')`` to recompute which documents each step consumed.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import mixsql  # noqa: E402


def main() -> None:
    cfg = yaml.safe_load(open(HERE / "train_config.yaml"))
    ckpt, losses = Path(cfg["checkpoint"]), Path(cfg["checkpoint"]).with_name("losses.jsonl")
    if not ckpt.exists() or not losses.exists():
        from train_tiny_gpt import main as train

        losses.unlink(missing_ok=True)
        train(["--steps", "40", "--loss-log", str(losses)])
    log = [json.loads(x) for x in losses.read_text().splitlines()]
    worst = max(log, key=lambda x: x["loss"] if x["step"] >= 5 else float("-inf"))   # past the warm-up
    print(f"worst step {worst['step']}: loss {worst['loss']:.3f} (median {sorted(x['loss'] for x in log)[len(log) // 2]:.3f})")
    con = mixsql.connect(cfg["catalog"], read_only=True)
    cur = con.cursor()
    # the documents of that step: which sequence, where in it, and their properties from the catalog
    cur.execute(f"""
        SELECT l.sequence, l."offset", l.tokens, l."group", s.topic, s.quality, l.row,
               regexp_extract(l.file, '[^/]+$') AS file
        FROM mix_ledger('{ckpt}') l JOIN samples s USING (file, row)
        WHERE l.step = {worst['step']}
        ORDER BY l.sequence, l."offset"
    """)
    cols = [d[0] for d in cur.description]
    print(" ".join(f"{c:>9}" for c in cols))
    for r in cur.fetchall():
        print(" ".join(f"{str(v):>9}" for v in r))
    # the step's mixture, and where its most-seen document was also trained
    cur.execute(f"""SELECT "group", sum(tokens) AS tokens FROM mix_ledger('{ckpt}')
                    WHERE step = {worst['step']} GROUP BY ALL ORDER BY tokens DESC""")
    print("tokens by group:", cur.fetchall())
    f, row = cur.execute(f"""SELECT file, row FROM mix_ledger('{ckpt}') WHERE step = {worst['step']}
                             ORDER BY tokens DESC LIMIT 1""").fetchone()
    cur.execute(f"SELECT step, epoch, sequence FROM mix_ledger('{ckpt}') WHERE file = '{f}' AND row = {row} ORDER BY step")
    print(f"{Path(f).name} row {row} is trained at (step, epoch, sequence):", cur.fetchall()[:12])
    con.close()


if __name__ == "__main__":
    main()
