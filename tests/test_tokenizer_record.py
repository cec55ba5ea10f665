"""The catalog records which tokenizer counted n_tokens; training with another one under
unit = 'tokens' warns (or, strict, raises) when the dataset is built; token shares count the EOS
the packer appends; a tokenizer the packer cannot use fails at construction."""
from __future__ import annotations

import collections
import json
import warnings

import numpy as np
import pytest
import tokenizers  # noqa: F401 (a test dependency: fail, never skip, when missing)

from conftest import lang_catalog, train_bpe
from mixsql.catalog import Catalog
from mixsql.errors import InterfaceError, ProgrammingError, TokenizerMismatchWarning
from mixsql.registration import create_source, refresh_source
from mixsql.spec import EOS_TOKENS
from mixsql.stream import MixStream
from mixsql.tokenize import ByteTokenizer, get_tokenizer, hf_record, tokenizer_record
from mixsql.torch import MixDataLoader, MixDataset

LANGS = ("en", "de", "fr")
SQL_TOKENS = ("SELECT * FROM samples MIX BY lang WITH (en 0.5, de 0.3, fr 0.2) "
              "SETTINGS (chunk_size = 200, unit = 'tokens', on_exhausted = 'stop', seed = 5)")
SQL_SAMPLES = SQL_TOKENS.replace(", unit = 'tokens'", "")


def _texts(n: int) -> list[str]:
    rng = np.random.default_rng(3)
    words = ["alpha", "beta", "gamma", "delta", "épsilon", "zeta", "eta", "theta"]
    return [" ".join(rng.choice(words, size=int(rng.integers(1, 25)))) for _ in range(n)]


def _bpe(path, texts, eos=True):
    """A BPE trained here (no download); with ``eos`` its vocabulary has <|endoftext|>."""
    tok = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    special = ["[UNK]", "<|endoftext|>"] if eos else ["[UNK]"]
    tok.train_from_iterator(texts, tokenizers.trainers.BpeTrainer(vocab_size=300, special_tokens=special))
    tok.save(str(path))
    return tok


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("tokrec")
    texts = _texts(240)
    for j, lang in enumerate(LANGS):
        with open(d / f"{lang}.jsonl", "w") as f:
            for i, t in enumerate(texts[j::3]):
                f.write(json.dumps({"text": t, "lang": lang, "i": i}) + "\n")
    _bpe(d / "bpe.json", texts)
    _bpe(d / "other.json", [t.upper() for t in texts])
    return d


def _catalog(d, name, tokenizer):
    cat = Catalog(d / name)
    for lang in LANGS:
        create_source(cat, lang, str(d / f"{lang}.jsonl"), options={"tokenizer": tokenizer, "lang": "lang"},
                      progress=False)
    cat.close()
    return d / name


@pytest.fixture(scope="module")
def bpe_catalog(corpus):
    return _catalog(corpus, "bpe_cat", str(corpus / "bpe.json"))


@pytest.fixture(scope="module")
def byte_catalog(corpus):
    return _catalog(corpus, "byte_cat", "byte")


# ------------------------------------------------------------------ fingerprints and records
def test_fingerprint_is_of_the_vocabulary_not_of_the_object(corpus, tmp_path):
    hf = tokenizers.Tokenizer.from_file(str(corpus / "bpe.json"))
    from_file, from_object = tokenizer_record(get_tokenizer(str(corpus / "bpe.json"))), tokenizer_record(get_tokenizer(hf))
    assert from_file["fingerprint"] == from_object["fingerprint"] == hf_record(hf)["fingerprint"]
    assert "bpe.json" in from_file["name"] and "BPE" in from_file["name"]
    hf.save(str(tmp_path / "copy.json"))   # another file, the same vocabulary
    assert tokenizer_record(get_tokenizer(str(tmp_path / "copy.json")))["fingerprint"] == from_file["fingerprint"]
    other = tokenizer_record(get_tokenizer(str(corpus / "other.json")))
    byte = tokenizer_record(ByteTokenizer())
    assert len({from_file["fingerprint"], other["fingerprint"], byte["fingerprint"]}) == 3
    assert byte == tokenizer_record(get_tokenizer("byte")) and byte["name"].startswith("byte-level")
    # the special tokens count: the same vocabulary with <|endoftext|> no longer special differs
    plain = json.loads(hf.to_str())
    for t in plain["added_tokens"]:
        t["special"] = t["content"] == "[UNK]"
    changed = tokenizers.Tokenizer.from_str(json.dumps(plain))
    assert hf_record(changed)["fingerprint"] != from_file["fingerprint"]
    assert tokenizer_record(get_tokenizer(lambda s: [1, 2], eos_id=0)) is None   # no vocabulary: unknown


def test_registration_records_the_counting_tokenizer(corpus, bpe_catalog, byte_catalog, tmp_path):
    bpe = tokenizer_record(get_tokenizer(str(corpus / "bpe.json")))
    with Catalog(bpe_catalog, read_only=True) as c:
        rows = c.con.sql("SELECT name, tokenizer, tokenizer_fingerprint FROM sources ORDER BY name").fetchall()
    assert rows == [(lang, bpe["name"], bpe["fingerprint"]) for lang in sorted(LANGS)]
    with Catalog(byte_catalog, read_only=True) as c:
        assert c.con.sql("SELECT DISTINCT tokenizer_fingerprint FROM sources").fetchall() == [
            (tokenizer_record(ByteTokenizer())["fingerprint"],)]
        assert c.con.sql("SELECT count(*) FROM samples WHERE n_tokens <> n_bytes").fetchall() == [(0,)]
    hinted = Catalog(tmp_path / "hint")   # a count hint: no tokenizer counted, nothing recorded
    p = tmp_path / "h.jsonl"
    p.write_text('{"text": "ab", "n": 2}\n')
    create_source(hinted, "h", str(p), options={"n_tokens": "n"}, progress=False)
    assert hinted.con.sql("SELECT n_tokens, tokenizer, tokenizer_fingerprint FROM sources").fetchall() == [(2, None, None)]
    hinted.close()


def test_refresh_refuses_to_mix_two_vocabularies(corpus, tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    (d / "a.jsonl").write_text('{"text": "alpha beta"}\n')
    tok = tmp_path / "tok.json"
    tok.write_bytes((corpus / "bpe.json").read_bytes())
    cat = Catalog(tmp_path / "cat")
    create_source(cat, "a", str(d / "*.jsonl"), options={"tokenizer": str(tok)}, progress=False)
    tok.write_bytes((corpus / "other.json").read_bytes())   # the tokenizer file changed since
    (d / "b.jsonl").write_text('{"text": "gamma"}\n')
    with pytest.raises(ProgrammingError, match="mix counts of two vocabularies"):
        refresh_source(cat, "a", progress=False)
    assert cat.con.sql("SELECT n_samples FROM sources").fetchall() == [(1,)]   # unchanged
    tok.write_bytes((corpus / "bpe.json").read_bytes())
    assert refresh_source(cat, "a", progress=False)["new_files"] == 1
    cat.close()


# ------------------------------------------------------------------ training tokenizer vs counts
def _built(sql, cat, **kw):
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        ds = MixDataset(sql, catalog=cat, seq_len=32, **kw)
    return ds, [w for w in seen if issubclass(w.category, TokenizerMismatchWarning)]


def test_a_different_training_tokenizer_warns_naming_both(corpus, bpe_catalog):
    ds, seen = _built(SQL_TOKENS, bpe_catalog)   # the default: byte-level
    assert len(seen) == 1
    text = str(seen[0].message)
    assert "bpe.json (BPE, vocab" in text and "byte-level (UTF-8 bytes)" in text
    assert "sources de, en, fr" in text and seen[0].filename == __file__   # points at the caller
    assert ds._stream is None   # the check planned through the cache and kept nothing to pickle
    assert _built(SQL_TOKENS, bpe_catalog, tokenizer=str(corpus / "bpe.json"))[1] == []   # the same one
    assert _built(SQL_SAMPLES, bpe_catalog)[1] == []      # sample shares: token counts unused
    assert _built(SQL_SAMPLES + " LIMIT 500 TOKENS", bpe_catalog)[1] != []   # a token budget uses them
    assert _built(SQL_TOKENS, bpe_catalog, tokenizer_check="off")[1] == []
    only_en = SQL_TOKENS.replace("(en 0.5, de 0.3, fr 0.2)", "(en 1)").replace("FROM samples", "FROM samples WHERE source = 'en'")
    assert "for source en, but" in str(_built(only_en, bpe_catalog)[1][0].message)
    with pytest.raises(InterfaceError, match="tokenizer_check"):
        MixDataset(SQL_TOKENS, catalog=bpe_catalog, seq_len=32, tokenizer_check="strict")


def test_strict_check_raises_at_construction(corpus, bpe_catalog, byte_catalog):
    with pytest.raises(ProgrammingError, match=r"counted with .*bpe\.json.* tokenizes with .*other\.json"):
        MixDataset(SQL_TOKENS, catalog=bpe_catalog, seq_len=32, tokenizer=str(corpus / "other.json"),
                   tokenizer_check="error")
    ds, seen = _built(SQL_TOKENS, byte_catalog, tokenizer_check="error")   # counted as trained: fine
    assert seen == [] and sum(1 for _ in ds) > 0


def test_catalogs_without_a_record_are_an_unknown_tokenizer(tmp_path, corpus):
    cat = lang_catalog(tmp_path / "old", 60, seed=1)   # written without a tokenizer record
    with Catalog(cat, read_only=True) as c:
        assert c.con.sql("SELECT tokenizer, tokenizer_fingerprint FROM sources").fetchall() == [(None, None)]
    sql = SQL_TOKENS.replace("chunk_size = 200", "chunk_size = 64")
    ds, seen = _built(sql, cat, tokenizer=str(corpus / "bpe.json"), tokenizer_check="error")
    assert seen == [] and sum(1 for _ in ds) > 0


# ------------------------------------------------------------------ EOS: counts and packer agree
@pytest.mark.parametrize("which", ["byte", "bpe"])
@pytest.mark.parametrize("workers", [0, 2])
def test_packed_tokens_per_group_equal_the_engines_token_counts(corpus, bpe_catalog, byte_catalog, which, workers):
    cat, tok = (byte_catalog, None) if which == "byte" else (bpe_catalog, str(corpus / "bpe.json"))
    stream = MixStream.open(cat, SQL_TOKENS, user_columns=False)
    names = {g.id: g.path for g in stream.spec.groups}
    engine_tokens: collections.Counter = collections.Counter()
    chunks = list(stream.engine())
    for c in chunks:   # what the shares were computed on: n_tokens + the EOS, per sample
        for g, n in zip(c.column("group_id").to_pylist(), c.column("n_tokens").to_pylist()):
            engine_tokens[names[g]] += n + EOS_TOKENS
    delivered = stream.engine()
    for _ in chunks:
        delivered.next_chunk()
    assert {names[g]: int(t) for g, t in enumerate(delivered.delivered())} == dict(engine_tokens)
    ds = MixDataset(SQL_TOKENS, catalog=cat, tokenizer=tok, seq_len=32, tokenizer_check="error")
    packed: collections.Counter = collections.Counter()
    for b in MixDataLoader(ds, batch_size=4, num_workers=workers):
        for group, n in zip(b["group"], b["length"].tolist()):
            packed[group] += n
    assert packed == engine_tokens
    total = sum(packed.values())   # and the realised token shares are the statement's, within a sample
    longest = max(n for c in chunks for n in c.column("n_tokens").to_pylist()) + EOS_TOKENS
    for g in stream.spec.groups:
        assert abs(packed[g.path] - g.weight * total) <= longest


# ------------------------------------------------------------------ tokenizer problems at construction
def test_a_tokenizer_without_eos_is_rejected_when_the_dataset_is_built(corpus, byte_catalog, tmp_path):
    no_eos = tmp_path / "no_eos.json"
    train_bpe(_texts(50), no_eos, vocab_size=200)   # [UNK] only: no end-of-text token
    with pytest.raises(InterfaceError, match="no known end-of-text token.*eos_id"):
        MixDataset(SQL_TOKENS, catalog=byte_catalog, tokenizer=str(no_eos), seq_len=32)

    class NoEos:
        eos_id = None
        vocab_size = 10

        def encode_batch(self, texts):
            return [[1] * len(t) for t in texts]

    with pytest.raises(InterfaceError, match="no end-of-text id.*eos_id"):
        MixDataset(SQL_TOKENS, catalog=byte_catalog, tokenizer=NoEos(), seq_len=32)
    with pytest.raises(InterfaceError, match="not a token id"):
        MixDataset(SQL_TOKENS, catalog=byte_catalog, tokenizer=NoEos(), eos_id=99, seq_len=32)
    with pytest.raises(InterfaceError, match="failed on a probe text: ZeroDivisionError"):
        MixDataset(SQL_TOKENS, catalog=byte_catalog, tokenizer=lambda s: [1 // 0], eos_id=0, seq_len=32)
    ds = MixDataset(SQL_TOKENS, catalog=byte_catalog, tokenizer=str(no_eos), eos_id=0, seq_len=32,
                    tokenizer_check="off")   # an explicit EOS id makes it usable
    assert ds.eos == 0
