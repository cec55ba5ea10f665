"""Tokenizers for the reading side: byte-level default, HF ``tokenizers``, or any callable.

Every tokenizer here exposes ``encode_batch(texts) -> list[np.ndarray[int32]]`` and
``encode_flat(texts) -> (ids, lengths)`` (all documents' ids in one flat int32 array plus ids per
document: what the packer consumes, without per-document arrays) plus ``eos_id``, ``bos_id``
(or None) and ``vocab_size``. :func:`get_tokenizer` turns a user spec (None / "byte" / a
tokenizer.json path / a ``tokenizers.Tokenizer`` / a callable) into one; :func:`encode_flat`
works with any of them (user objects with only ``encode_batch`` included).

Threads. HF ``encode_batch`` runs on the Rust (rayon) thread pool of the process. In a DataLoader
worker :func:`configure_worker_threads` gives each of the ``num_workers`` processes
``cores // num_workers`` tokenizer threads (``RAYON_NUM_THREADS``) and turns tokenizer threading
off (``TOKENIZERS_PARALLELISM=false``) when that is a single thread, so workers never
oversubscribe the cores; a user's own ``TOKENIZERS_PARALLELISM`` / ``RAYON_NUM_THREADS`` always
win. The main process (``num_workers=0``) keeps the library default (all cores).

Identity. :func:`tokenizer_record` describes a tokenizer as ``{"name", "fingerprint"}``: a
readable name and a SHA-256 of its vocabulary (token -> id, added tokens included), its special
tokens and the EOS id its vocabulary defines (the well-known names above; an ``eos_id=`` override
of the training side is not part of the tokenizer). Registration stores the record of the
tokenizer that counted ``n_tokens``; ``mixsql.torch`` compares it with the training tokenizer's
(:mod:`mixsql.tokenizer_check`). The same vocabulary gives the same fingerprint whatever file or
object it came from; an object with no readable vocabulary has no record (``None``: unknown).
:func:`validate_tokenizer` checks a resolved tokenizer once (an EOS id inside the vocabulary, a
probe text encoding to integer ids), so a broken tokenizer fails where the dataset is built.
"""
from __future__ import annotations

import hashlib
import itertools
import json
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
    name = "byte-level (UTF-8 bytes)"

    def record(self) -> dict:
        vocab = {f"<0x{b:02X}>": b for b in range(256)}
        return _record(self.name, vocab, {"<eos>": self.eos_id, "<bos>": self.bos_id}, self.eos_id)

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32)

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        return [self.encode(t) for t in texts]

    def encode_flat(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        raw = [t.encode("utf-8") for t in texts]
        lengths = np.fromiter(map(len, raw), dtype=np.int64, count=len(raw))
        return np.frombuffer(b"".join(raw), dtype=np.uint8).astype(np.int32), lengths

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
        path = None
        if isinstance(tokenizer, (str, os.PathLike)):
            path = os.fspath(tokenizer)
            if not os.path.exists(path):
                raise InterfaceError(f"tokenizer file {path} does not exist (expected a tokenizer.json)")
            tokenizer = Tokenizer.from_file(path)
        self.tok = tokenizer
        self.name = _hf_name(tokenizer, path)
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        self.eos_id = eos_id if eos_id is not None else _first_id(tokenizer, _EOS_NAMES)
        self.bos_id = bos_id if bos_id is not None else None
        if self.eos_id is None:
            raise InterfaceError(
                "the tokenizer has no known end-of-text token (tried " + ", ".join(_EOS_NAMES)
                + "); pass eos_id=... explicitly"
            )

    def record(self) -> dict:
        return hf_record(self.tok, self.name)

    def _encode(self, texts: Sequence[str]):
        texts = texts if isinstance(texts, list) else list(texts)
        fast = getattr(self.tok, "encode_batch_fast", None)   # tokenizers >= 0.20: no offsets
        return (fast or self.tok.encode_batch)(texts, add_special_tokens=False)

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        return [np.asarray(e.ids, dtype=np.int32) for e in self._encode(texts)]

    def encode_flat(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        ids = [e.ids for e in self._encode(texts)]
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int32, count=int(lengths.sum()))
        return flat, lengths

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


def encode_flat(tok, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """``(flat int32 ids, ids per document)`` from any tokenizer of this module or a user object
    with ``encode_batch`` only."""
    fn = getattr(tok, "encode_flat", None)
    if fn is not None:
        return fn(texts)
    docs = [np.asarray(d, dtype=np.int32).reshape(-1) for d in tok.encode_batch(texts)]
    lengths = np.fromiter(map(len, docs), dtype=np.int64, count=len(docs))
    flat = np.concatenate(docs) if docs else np.empty(0, np.int32)
    return flat, lengths


def _record(name: str, vocab: dict, special: dict, eos_id: int | None) -> dict:
    """``{"name", "fingerprint"}``: the fingerprint hashes the canonical JSON of vocab/special/EOS."""
    text = json.dumps({"vocab": sorted(vocab.items()), "special": sorted(special.items()), "eos_id": eos_id},
                      separators=(",", ":"), ensure_ascii=False)
    return {"name": name, "fingerprint": "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:32]}


def _hf_name(tok, path: str | None) -> str:
    """``<parent>/<file> (BPE, vocab N)``, or the model type alone for an in-memory tokenizer."""
    try:
        kind = type(tok.model).__name__
    except Exception:  # noqa: BLE001 - a tokenizer without a readable model still gets a name
        kind = "tokenizer"
    where = os.path.join(os.path.basename(os.path.dirname(path)), os.path.basename(path)) if path else None
    size = tok.get_vocab_size(with_added_tokens=True)
    return f"{where} ({kind}, vocab {size})" if where else f"{kind} tokenizer (vocab {size})"


def hf_record(tok, name: str | None = None) -> dict:
    """The record of a HF ``tokenizers.Tokenizer`` (registration's counter and training's)."""
    special = {str(t.content): int(i) for i, t in tok.get_added_tokens_decoder().items() if t.special}
    return _record(name or _hf_name(tok, None), tok.get_vocab(with_added_tokens=True), special,
                   _first_id(tok, _EOS_NAMES))


def tokenizer_record(tok) -> dict | None:
    """``{"name", "fingerprint"}`` of a resolved tokenizer (see module doc), or None when it has no
    readable vocabulary (a plain callable): nothing to compare."""
    own = getattr(tok, "record", None)
    if callable(own):
        return own()
    inner = getattr(tok, "fn", tok)
    vocab = getattr(inner, "get_vocab", None)
    if not callable(vocab):
        return None
    name = getattr(inner, "name_or_path", None) or type(inner).__name__
    special = {str(t): int(i) for t, i in zip(getattr(inner, "all_special_tokens", ()),
                                                getattr(inner, "all_special_ids", ()))}
    eos = getattr(inner, "eos_token_id", None)
    return _record(str(name), dict(vocab()), special, None if eos is None else int(eos))


def validate_tokenizer(tok, eos_id: int | None = None) -> int:
    """The EOS id the packer appends with ``tok`` (``eos_id`` overrides); InterfaceError when there
    is none, it lies outside the vocabulary, or a probe text does not encode to integer ids."""
    eos = eos_id if eos_id is not None else getattr(tok, "eos_id", None)
    if eos is None:
        raise InterfaceError(f"tokenizer {type(tok).__name__} has no end-of-text id: the packer appends one "
                             "after every document; pass eos_id=...")
    size = getattr(tok, "vocab_size", None)
    if not isinstance(eos, (int, np.integer)) or eos < 0 or (size is not None and eos >= size):
        raise InterfaceError(f"eos_id {eos!r} is not a token id of the tokenizer (vocabulary of {size} ids)")
    try:
        flat, lengths = encode_flat(tok, ["mixsql tokenizer probe"])
    except Exception as exc:  # noqa: BLE001 - any failure of user code is reported here, not in a worker
        raise InterfaceError(f"the tokenizer failed on a probe text: {type(exc).__name__}: {exc}") from None
    if flat.ndim != 1 or len(lengths) != 1 or int(lengths[0]) != len(flat):
        raise InterfaceError("the tokenizer must encode a text into a flat sequence of integer ids")
    return int(eos)


def configure_worker_threads(num_workers: int) -> None:
    """Split the cores between ``num_workers`` DataLoader worker processes (see module doc).

    Call in the worker before the tokenizer's first batch; no-op where the user set either
    variable."""
    env = os.environ
    if "TOKENIZERS_PARALLELISM" in env or "RAYON_NUM_THREADS" in env:
        return
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    threads = max(1, cores // max(1, int(num_workers)))
    if threads == 1:
        env["TOKENIZERS_PARALLELISM"] = "false"
    else:
        env["RAYON_NUM_THREADS"] = str(threads)


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


__all__ = ["ByteTokenizer", "HFTokenizer", "CallableTokenizer", "get_tokenizer", "encode_flat",
           "configure_worker_threads", "tokenizer_record", "hf_record", "validate_tokenizer"]
