"""What a scanner is given (:class:`ScanTask`) and how it fails (:class:`ScanError`): the interface
every per-format scanner in :mod:`mixsql.formats` shares."""
from __future__ import annotations

from dataclasses import dataclass, field

FORMATS = ("jsonl", "parquet", "webdataset")
MAX_REPORTED_SKIPS = 20


class ScanError(Exception):
    """Raised inside a scanner; turned into the result's ``error`` entry."""

    def __init__(self, message: str, line: int | None = None, hint: str | None = None):
        super().__init__(message)
        self.message, self.line, self.hint = message, line, hint


@dataclass
class ScanTask:
    """Everything a worker needs to index one file (picklable)."""

    path: str
    format: str                       # jsonl | parquet | webdataset
    compression: str                  # none | zstd | gzip
    text: str                         # JSON path / column / tar member extension
    properties: dict = field(default_factory=dict)   # name -> JSON path / column; None = auto
    auto: bool = False                # discover properties from the data (top-level fields)
    tokens: str | None = None         # parquet list<int> column with token ids
    n_tokens: str | None = None       # path / column holding a token count hint
    tokenizer: str | None = None      # tokenizer.json path
    on_error: str = "fail"
    required: list = field(default_factory=list)   # properties that must be non-null
    types: dict = field(default_factory=dict)      # declared DuckDB types (mixed values -> text)
    use_threads: bool = False


