"""Shared fixtures: small real catalogs built from real JSONL files on disk."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from mixsql.catalog import Catalog, quote_ident


@pytest.fixture(autouse=True, scope="session")
def _node_cache_dir(tmp_path_factory):
    """The node cache of every test process lives under the session's temporary directory."""
    os.environ["MIXSQL_CACHE_DIR"] = str(tmp_path_factory.mktemp("mixsql-cache"))
    yield


def write_jsonl_catalog(
    catalog_dir: Path,
    records: list[dict],
    *,
    source: str = "corpus",
    properties: dict[str, str] | None = None,
    rows_per_file: int = 1000,
    n_tokens: bool = True,
) -> Path:
    """Write ``records`` (dicts with 'text' and flat properties) as JSONL files under
    ``catalog_dir/data/<source>`` and index them directly into the catalog schema.

    This is the low-level path the registration module also ends in; it lets tests of the
    planner and engine build exact catalogs without depending on registration options.
    Token counts are the UTF-8 byte length (the byte-level tokenizer's count).
    """
    properties = properties or {}
    data_dir = Path(catalog_dir) / "data" / source
    data_dir.mkdir(parents=True, exist_ok=True)
    cat = Catalog(catalog_dir)
    with cat.write(f"test corpus {source}") as w:
        _write_jsonl_source(w, data_dir, records, source, properties, rows_per_file, n_tokens)
    cat.close()
    return Path(catalog_dir)


def _write_jsonl_source(w, data_dir, records, source, properties, rows_per_file, n_tokens) -> None:
    source_id = w.next_source_id()
    next_file = w.reserve_file_ids(-(-len(records) // rows_per_file))
    seg = w.segment(list(properties.items()))
    con = seg.con
    cols: dict[str, list] = {c: [] for c in ("file_id", "row", "loc_offset", "loc_length", "n_bytes", "n_tokens")}
    cols.update({p: [] for p in properties})
    for fi, start in enumerate(range(0, len(records), rows_per_file)):
        part = records[start:start + rows_per_file]
        path = data_dir / f"part-{fi:05d}.jsonl"
        offset = 0
        blob = bytearray()
        file_id = next_file + fi
        for r, rec in enumerate(part):
            line = json.dumps(rec).encode()
            nb = len(rec["text"].encode())
            cols["file_id"].append(file_id)
            cols["row"].append(r)
            cols["loc_offset"].append(offset)
            cols["loc_length"].append(len(line))
            cols["n_bytes"].append(nb)
            cols["n_tokens"].append(nb if n_tokens else None)
            for p in properties:
                cols[p].append(rec.get(p))
            blob += line + b"\n"
            offset += len(line) + 1
        path.write_bytes(bytes(blob))
        st = os.stat(path)
        con.execute(
            "INSERT INTO files VALUES (?, ?, ?, 'none', ?, ?, ?, ?, ?)",
            [file_id, source_id, str(path.resolve()), st.st_size, st.st_mtime_ns, "test", len(part),
             sum(len(x["text"].encode()) for x in part)],
        )
    table = pa.table(cols)
    con.register("__new_rows", table)
    names = ", ".join(quote_ident(c) for c in cols)
    con.execute(f"INSERT INTO sample_index ({names}) SELECT {names} FROM __new_rows")
    con.unregister("__new_rows")
    w.put_source({"source_id": source_id, "name": source, "format": "jsonl",
                  "pattern": str(Path(data_dir).resolve() / "*.jsonl"), "options": json.dumps({"text": "text"}),
                  "property_types": [[n, t] for n, t in properties.items()]}, seg)


LANGS_PROPERTIES = {"language": "VARCHAR", "license": "VARCHAR", "quality": "DOUBLE"}


def lang_catalog(catalog_dir: Path, n: int, seed: int) -> Path:
    """``n`` documents of random length (0-40 repeated letters) in languages en/de/fr by turn,
    JSONL files of 40 rows, property ``lang``."""
    rng = np.random.Generator(np.random.PCG64(seed))
    recs = [{"text": f"doc {i} " + "abcdefgh"[i % 8] * int(rng.integers(0, 40)), "lang": ["en", "de", "fr"][i % 3]}
            for i in range(n)]
    return write_jsonl_catalog(catalog_dir, recs, properties={"lang": "VARCHAR"}, rows_per_file=40)


def langs_records() -> list[dict]:
    """Mixtera scenario 2: 50 JavaScript, 30 HTML, 20 Python samples."""
    recs = []
    for lang, n in (("JavaScript", 50), ("HTML", 30), ("Python", 20)):
        for i in range(n):
            recs.append({"text": f"{lang} sample {i} " + "x" * (i % 7), "language": lang,
                         "license": "MIT" if i % 3 == 0 else "CC", "quality": (i % 10) / 10})
    return recs


@pytest.fixture
def langs_catalog(tmp_path):
    """The scenario-2 corpus as one source, in files of 40 lines."""
    return write_jsonl_catalog(tmp_path / "cat", langs_records(), properties=LANGS_PROPERTIES, rows_per_file=40)


def random_texts(seed: int, n_texts: int, vocabulary: int, max_words: int) -> list[str]:
    """``n_texts`` documents of 20..``max_words`` random words drawn from ``vocabulary`` random words."""
    import random

    rng = random.Random(seed)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))
             for _ in range(vocabulary)]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(20, max_words))) for _ in range(n_texts)]


def train_bpe(texts: list[str], path: Path, vocab_size: int):
    """A small byte-level BPE trained on ``texts``, saved as a HF ``tokenizer.json`` at ``path``."""
    import tokenizers

    tok = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(texts, tokenizers.trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["[UNK]"]))
    tok.save(str(path))
    return tok
