"""A byte-level BPE tokenizer trained locally (HF ``tokenizers``) on a sample of a bench corpus.

Every system in the comparison uses this same ``tokenizer.json``.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

EOS = "<|endoftext|>"
VOCAB = 8192


def sample_texts(corpus_dir: str | os.PathLike, max_bytes: int = 3_000_000, seed: int = 0) -> list[str]:
    """A seeded sample of documents (about max_bytes of text) from the corpus' JSONL shards."""
    from .corpus import iter_docs
    rng = np.random.Generator(np.random.PCG64([seed, 99]))
    out, n = [], 0
    for text, _ in iter_docs(corpus_dir):
        if rng.random() < 0.25:
            out.append(text[:20_000])
            n += len(out[-1])
            if n >= max_bytes:
                break
    return out


def train(corpus_dir: str | os.PathLike, out_path: str | os.PathLike, vocab_size: int = VOCAB,
          seed: int = 0):
    """Train a byte-level BPE on a corpus sample and save it to ``out_path``; returns the Tokenizer."""
    return train_on(sample_texts(corpus_dir, seed=seed), out_path, vocab_size)


def train_on(texts, out_path: str | os.PathLike, vocab_size: int = VOCAB):
    """Train a byte-level BPE on ``texts`` and save it to ``out_path``; returns the Tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_path))
    return tok


def load(path: str | os.PathLike):
    from tokenizers import Tokenizer
    return Tokenizer.from_file(str(path))


def eos_id(tok) -> int:
    return tok.token_to_id(EOS)
