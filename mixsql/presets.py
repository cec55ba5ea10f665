"""Registration presets: the layouts of well-known collections.

A preset is a dict of registration options (see mixsql.registration) merged *under* the user's
options, so ``WITH (preset = 'slimpajama', quality = 'meta.score')`` keeps the preset's mapping and
adds ``quality``; a user key with the same name overrides the preset's.

* ``slimpajama``: ``{"text", "meta": {"redpajama_set_name"}}`` -> property ``redpajama_set_name``
  (VARCHAR: RedPajamaCommonCrawl, RedPajamaC4, RedPajamaGithub, ...). ``source`` itself is reserved
  (it is the registered source's name in ``samples``), so the subset keeps its native name.
* ``pile``: ``{"text", "meta": {"pile_set_name"}}`` -> property ``pile_set_name``.
* ``fineweb`` (Parquet or JSONL): properties ``id, dump, url, language, language_score``;
  ``token_count`` becomes the sample's ``n_tokens`` (its GPT-2 token count) unless a tokenizer is
  given.
"""
from __future__ import annotations

from .errors import ProgrammingError

PRESETS: dict[str, dict] = {
    "slimpajama": {
        "text": "text",
        "properties": {"redpajama_set_name": "meta.redpajama_set_name"},
        "types": {"redpajama_set_name": "VARCHAR"},
    },
    "pile": {
        "text": "text",
        "properties": {"pile_set_name": "meta.pile_set_name"},
        "types": {"pile_set_name": "VARCHAR"},
    },
    "fineweb": {
        "text": "text",
        "properties": {"id": "id", "dump": "dump", "url": "url", "language": "language",
                       "language_score": "language_score"},
        "types": {"id": "VARCHAR", "dump": "VARCHAR", "url": "VARCHAR", "language": "VARCHAR",
                  "language_score": "DOUBLE"},
        "n_tokens": "token_count",
    },
}


def get_preset(name: str) -> dict:
    """The preset's options (a deep copy); ProgrammingError naming the known presets."""
    key = str(name).strip().lower()
    if key not in PRESETS:
        raise ProgrammingError(f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}")
    p = PRESETS[key]
    return {k: (dict(v) if isinstance(v, dict) else v) for k, v in p.items()}
