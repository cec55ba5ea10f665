"""Tokenizers for the reading side: byte-level default, HF ``tokenizers``, or any callable.

Every tokenizer here exposes ``encode_batch(texts) -> list[np.ndarray[int32]]`` plus
``eos_id``, ``bos_id`` (or None) and ``vocab_size``. :func:`get_tokenizer` turns a user spec
(None / "byte" / a tokenizer.json path / a ``tokenizers.Tokenizer`` / a callable) into one.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import numpy as np

from .errors import InterfaceError

# Names HF tokenizers commonly use for the end-of-document / begin-of-document tokens.
_EOS_NAMES = ("<|endoftext|>", "</s>", "<eos>", "<|eos|>", "[EOS]", "<|end_of_text|>")
_BOS_NAMES = ("<s>", "<bos>", "<|bos|>", "[BOS]", "<|begin_of_text|>")


class ByteTokenizer:
    """UTF-8 bytes as token ids 0..255; EOS = 256, BOS = 257 (vocab_size 258). No dependencies."""

    vocab_size = 258
    eos_id = 256
    bos_id = 257

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32)

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        return [self.encode(t) for t in texts]

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")


class HFTokenizer:
    """A Hugging Face ``tokenizers.Tokenizer`` (object or tokenizer.json path), batch encoding.

    ``eos_id``/``bos_id`` default to the ids of well-known special tokens in the vocabulary
    (``<|endoftext|>``, ``</s>``, ...); pass them explicitly when the vocabulary has none.
    """

    def __init__(self, tokenizer: Any, eos_id: int | None = None, bos_id: int | None = None):
        try:
            from tokenizers import Tokenizer
        except ImportError as exc:  # pragma: no cover - tokenizers is a declared extra
            raise ImportError("HF tokenizers need the 'tokenizers' package: pip install tokenizers") from exc
        if isinstance(tokenizer, (str, os.PathLike)):
            path = os.fspath(tokenizer)
            if not os.path.exists(path):
                raise InterfaceError(f"tokenizer file {path} does not exist (expected a tokenizer.json)")
            tokenizer = Tokenizer.from_file(path)
        self.tok = tokenizer
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        self.eos_id = eos_id if eos_id is not None else _first_id(tokenizer, _EOS_NAMES)
        self.bos_id = bos_id if bos_id is not None else None
        if self.eos_id is None:
            raise InterfaceError(
                "the tokenizer has no known end-of-text token (tried " + ", ".join(_EOS_NAMES)
                + "); pass eos_id=... explicitly"
            )

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        encs = self.tok.encode_batch(list(texts), add_special_tokens=False)
        return [np.asarray(e.ids, dtype=np.int32) for e in encs]

    def decode(self, ids) -> str:
        return self.tok.decode([int(i) for i in ids])


class CallableTokenizer:
    """Wrap any ``str -> list[int]`` callable; ``eos_id`` is required."""

    def __init__(self, fn: Callable[[str], Sequence[int]], eos_id: int, bos_id: int | None = None,
                 vocab_size: int | None = None):
        if eos_id is None:
            raise InterfaceError("a callable tokenizer needs eos_id=... (the id appended after each document)")
        self.fn = fn
        self.eos_id = int(eos_id)
        self.bos_id = bos_id
        self.vocab_size = vocab_size

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        return [np.asarray(self.fn(t), dtype=np.int32) for t in texts]


def _first_id(tok, names) -> int | None:
    for name in names:
        i = tok.token_to_id(name)
        if i is not None:
            return int(i)
    return None


def get_tokenizer(spec: Any = None, eos_id: int | None = None, bos_id: int | None = None):
    """Resolve ``spec`` into a tokenizer: None/"byte" -> ByteTokenizer, a path -> HFTokenizer,
    a ``tokenizers.Tokenizer`` -> HFTokenizer, an object with ``encode_batch`` and ``eos_id`` ->
    itself, a callable ``str -> list[int]`` -> CallableTokenizer (needs ``eos_id``)."""
    if spec is None or (isinstance(spec, str) and spec.lower() in ("byte", "bytes")):
        return ByteTokenizer()
    if isinstance(spec, (str, os.PathLike)):
        return HFTokenizer(spec, eos_id=eos_id, bos_id=bos_id)
    if type(spec).__module__.startswith("tokenizers") and hasattr(spec, "encode_batch"):
        return HFTokenizer(spec, eos_id=eos_id, bos_id=bos_id)
    if hasattr(spec, "encode_batch") and hasattr(spec, "eos_id"):
        return spec
    if callable(spec):
        return CallableTokenizer(spec, eos_id=eos_id, bos_id=bos_id)
    raise InterfaceError(
        f"cannot use {type(spec).__name__} as a tokenizer: pass None/'byte', a tokenizer.json path, "
        "a tokenizers.Tokenizer, or a callable str -> list[int] with eos_id=..."
    )


__all__ = ["ByteTokenizer", "HFTokenizer", "CallableTokenizer", "get_tokenizer"]
