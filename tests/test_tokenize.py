"""Tokenizer resolution: byte-level default, HF tokenizers (object and path), callables."""
from __future__ import annotations

import numpy as np
import pytest

from mixsql.errors import InterfaceError
from mixsql.tokenize import ByteTokenizer, CallableTokenizer, HFTokenizer, encode_flat, get_tokenizer


def test_byte_tokenizer_roundtrip():
    tok = get_tokenizer(None)
    assert isinstance(tok, ByteTokenizer) and tok.vocab_size == 258 and tok.eos_id == 256
    ids = tok.encode_batch(["héllo", ""])
    assert ids[0].tolist() == list("héllo".encode()) and len(ids[1]) == 0
    assert tok.decode(ids[0]) == "héllo"


def test_hf_tokenizer_object_and_path(tmp_path):
    import tokenizers
    from tokenizers import models, pre_tokenizers, trainers

    t = tokenizers.Tokenizer(models.BPE(unk_token="[UNK]"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    t.train_from_iterator(["the cat sat on the mat"] * 20, trainers.BpeTrainer(
        vocab_size=60, special_tokens=["[UNK]", "<|endoftext|>"]))
    tok = get_tokenizer(t)
    assert isinstance(tok, HFTokenizer) and tok.eos_id == t.token_to_id("<|endoftext|>")
    a = tok.encode_batch(["the cat", "sat on the mat"])
    path = tmp_path / "tokenizer.json"
    t.save(str(path))
    b = get_tokenizer(str(path)).encode_batch(["the cat", "sat on the mat"])
    assert [x.tolist() for x in a] == [x.tolist() for x in b]
    assert all(x.dtype == np.int32 for x in a)
    texts = ["the cat", "", "sat on the mat"]
    slow = [e.ids for e in t.encode_batch(texts, add_special_tokens=False)]   # with offsets
    flat, lengths = tok.encode_flat(texts)
    assert flat.dtype == np.int32 and lengths.tolist() == [len(x) for x in slow]
    assert flat.tolist() == [i for x in slow for i in x]


def test_encode_flat_for_every_tokenizer_kind():
    texts = ["héllo", "", "ab"]
    for tok in (ByteTokenizer(), get_tokenizer(lambda s: [len(s), 7], eos_id=0)):
        flat, lengths = encode_flat(tok, texts)
        per_doc = tok.encode_batch(texts)
        assert lengths.tolist() == [len(x) for x in per_doc]
        assert flat.tolist() == [int(i) for x in per_doc for i in x] and flat.dtype == np.int32


def test_callable_needs_eos():
    with pytest.raises(InterfaceError, match="eos_id"):
        get_tokenizer(lambda s: [len(s)])
    tok = get_tokenizer(lambda s: [len(s)], eos_id=0)
    assert isinstance(tok, CallableTokenizer) and tok.encode_batch(["abc"])[0].tolist() == [3]
    with pytest.raises(InterfaceError, match="does not exist"):
        get_tokenizer("/nonexistent/tokenizer.json")
