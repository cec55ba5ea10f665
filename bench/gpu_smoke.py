"""GPU smoke run: a HF GPT-2 (built from a config, no download) trained from a MIX statement.

    STEPS=300 OUT=/tmp/out python bench/gpu_smoke.py      # needs transformers; CUDA when present

Writes a 48k-document .jsonl.zst corpus under /tmp/gpu_smoke, registers it, streams a
token-unit mixture through MixDataLoader (4 workers, batch 32 x 512, bf16 autocast on CUDA),
checkpoints the loader at step STEPS/2, resumes a fresh loader from that state and checks that
the resumed batches equal the uninterrupted run's, and that the loss falls. Reports tokens/s
and the share of wall time spent waiting for data in $OUT/gpu_smoke.json. Not part of
``bench all``: it is meant for a machine with a GPU (falls back to CPU, slowly).
"""
import hashlib, json, os, random, sys, time
from pathlib import Path

import torch
import zstandard

sys.path.insert(0, os.getcwd())
from mixsql.catalog import Catalog
from mixsql.registration import create_source
from mixsql.torch import MixDataLoader, MixDataset

OUT = Path(os.environ.get("OUT", "/tmp/out"))
work = Path("/tmp/gpu_smoke"); work.mkdir(parents=True, exist_ok=True)
cat = work / "catalog"; data = work / "data"; data.mkdir(exist_ok=True)
rng = random.Random(0)
vocab = {"prose": "the a cat dog sat ran on under quietly house river morning".split(),
         "code": "def return if else for in range print x y self import".split(),
         "math": "1 2 3 4 5 + - * = ( ) sum prime".split()}
t0 = time.time()
if not (cat / "catalog.duckdb").exists() and not cat.exists():
    for part in range(8):
        lines = []
        for i in range(6000):
            topic = rng.choice(list(vocab))
            text = " ".join(rng.choice(vocab[topic]) for _ in range(rng.randint(20, 400)))
            lines.append(json.dumps({"text": text, "topic": topic, "quality": round(rng.random(), 3)}))
        (data / f"part{part}.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(("\n".join(lines) + "\n").encode()))
    with Catalog(cat) as c:
        create_source(c, "tiny", str(data / "*.jsonl.zst"), options={"tokenizer": "byte"}, progress=False)
reg_s = time.time() - t0

SQL = """SELECT * FROM samples WHERE quality > 0.1
MIX BY topic WITH (prose 0.5, code 0.3, math 0.2)
SETTINGS (seed = 7, unit = 'tokens', on_exhausted = 'repeat', max_epochs = 50)"""
DEV = "cuda" if torch.cuda.is_available() else "cpu"
SEQ, B, STEPS, W = 512, 32, int(os.environ.get("STEPS", "200")), 4
from transformers import GPT2Config, GPT2LMHeadModel

def build():
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=258, n_positions=SEQ, n_embd=256, n_layer=4, n_head=4)
    return GPT2LMHeadModel(cfg).to(DEV)

def run(start_state=None, start_step=0, stop=STEPS, ckpt_at=None):
    ds = MixDataset(SQL, catalog=str(cat), seq_len=SEQ)
    loader = MixDataLoader(ds, batch_size=B, num_workers=W, pin_memory=DEV == "cuda")
    if start_state is not None:
        loader.load_state_dict(start_state)
    model = build()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4)
    hashes, ckpt, wait, step, losses = [], None, 0.0, start_step, []
    t_start = time.time(); t_last = time.time()
    it = iter(loader)
    while step < stop:
        batch = next(it)
        wait += time.time() - t_last
        ids = batch["input_ids"].to(DEV, non_blocking=True)
        hashes.append(hashlib.sha1(batch["input_ids"].numpy().tobytes()).hexdigest())
        with torch.autocast(DEV, dtype=torch.bfloat16, enabled=DEV == "cuda"):
            out = model(ids[:, :-1], labels=None)
            tok = torch.nn.functional.cross_entropy(out.logits.float().reshape(-1, 258), ids[:, 1:].reshape(-1), reduction="none")
        loss = tok.mean()
        opt.zero_grad(); loss.backward(); opt.step()
        losses.append(float(loss))
        step += 1
        if ckpt_at is not None and step == ckpt_at:
            ckpt = loader.state_dict()
        t_last = time.time()
    if DEV == "cuda":
        torch.cuda.synchronize()
    wall = time.time() - t_start
    return dict(hashes=hashes, ckpt=ckpt, wall=wall, wait=wait, losses=losses, tokens=len(hashes) * B * SEQ)

full = run(ckpt_at=STEPS // 2)
resumed = run(start_state=full["ckpt"], start_step=STEPS // 2)
res = {
    "gpu": torch.cuda.get_device_name(0) if DEV == "cuda" else "cpu", "torch": torch.__version__, "register_s": round(reg_s, 2),
    "steps": STEPS, "batch": B, "seq_len": SEQ, "workers": W,
    "tokens_per_s": round(full["tokens"] / full["wall"]), "data_wait_share": round(full["wait"] / full["wall"], 4),
    "loss_first": round(full["losses"][0], 3), "loss_last": round(full["losses"][-1], 3),
    "resume_equal": full["hashes"][STEPS // 2:] == resumed["hashes"],
    "n_compared": len(resumed["hashes"]),
}
print(json.dumps(res, indent=1))
OUT.mkdir(parents=True, exist_ok=True)
(OUT / "gpu_smoke.json").write_text(json.dumps(res, indent=1))
assert res["resume_equal"], "resumed stream differs"
assert res["loss_last"] < res["loss_first"], "loss did not fall"
