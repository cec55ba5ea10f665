"""Does the training tokenizer count tokens as the catalog did? Checked when a dataset is built.

Under ``unit = 'tokens'`` (or a ``LIMIT ... TOKENS`` budget) the mixture's shares are computed
from the catalog's ``n_tokens``. Those were counted at registration by the tokenizer the source
records (``sources.tokenizer`` / ``tokenizer_fingerprint``, :mod:`mixsql.registration`); a
different training tokenizer delivers other token counts, so the realised shares drift from the
statement's. :func:`check_counting_tokenizer` compares the fingerprints
(:func:`mixsql.tokenize.tokenizer_record`) of the sources the statement selects with the
training tokenizer's:

* ``'warn'`` (default): a :class:`~mixsql.errors.TokenizerMismatchWarning` naming both
  tokenizers and the sources;
* ``'error'``: a :class:`~mixsql.errors.ProgrammingError` with the same text, before any data moves;
* ``'off'``: no check.

Sources without a record (counts from a hint field, a tokens column, or a catalog older than
the record) and tokenizers without a readable vocabulary cannot be compared and pass silently.
Cost: reading the snapshot's manifest; only when some source's record differs from the training
tokenizer is the statement planned (through the node's selection cache, which the DataLoader
workers then map instead of planning) to learn its unit and the sources it selects.
"""
from __future__ import annotations

import warnings
from typing import Callable

from .errors import InterfaceError, ProgrammingError, TokenizerMismatchWarning

MODES = ("warn", "error", "off")


def _differing(sources: list[dict], training: dict) -> dict[str, dict]:
    """Source name -> its record, for sources with token counts counted by another tokenizer."""
    return {s["name"]: s["tokenizer"] for s in sources
            if s.get("n_tokens") is not None and s.get("tokenizer")
            and s["tokenizer"].get("fingerprint") != training["fingerprint"]}


def mismatch_message(training: dict, counted: dict[str, dict]) -> str:
    """The text of the warning / error: both tokenizers, the sources, and what to do."""
    by_tok: dict[tuple, list[str]] = {}
    for name, rec in sorted(counted.items()):
        by_tok.setdefault((rec["name"], rec["fingerprint"]), []).append(name)
    counted_by = "; ".join(f"{n} ({fp}) for source{'s' if len(src) > 1 else ''} {', '.join(src)}"
                           for (n, fp), src in by_tok.items())
    return (f"token shares are computed from n_tokens counted with {counted_by}, but this dataset "
            f"tokenizes with {training['name']} ({training['fingerprint']}): the delivered token shares "
            "will differ from the statement's. Register the sources with the training tokenizer "
            "(CREATE OR REPLACE SOURCE ... WITH (tokenizer = '...')) or train with the tokenizer that "
            "counted them; tokenizer_check='off' silences this, 'error' makes it an error")


def check_counting_tokenizer(sources: list[dict], training: dict | None, mode: str,
                             selection: Callable[[], tuple[bool, set]]) -> None:
    """Warn or raise (``mode``, see module doc) when a source the statement draws tokens from was
    counted with a tokenizer other than ``training`` (its record; None: cannot compare).
    ``sources`` are the snapshot's manifest entries; ``selection()`` plans the statement and
    returns (whether its composition counts tokens, the names of the sources it selects)."""
    if mode not in MODES:
        raise InterfaceError(f"tokenizer_check must be one of {', '.join(map(repr, MODES))}, got {mode!r}")
    if mode == "off" or training is None:
        return
    differing = _differing(sources, training)
    if not differing:
        return
    uses_tokens, selected = selection()
    counted = {n: r for n, r in differing.items() if n in selected}
    if not uses_tokens or not counted:
        return
    message = mismatch_message(training, counted)
    if mode == "error":
        raise ProgrammingError(message)
    warnings.warn(message, TokenizerMismatchWarning, stacklevel=4)   # the MixDataset(...) line


__all__ = ["MODES", "check_counting_tokenizer", "mismatch_message"]
