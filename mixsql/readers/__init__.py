"""Readers: turn a chunk of pointers into the pointed-to samples, for every registered format.

``ChunkReader(files).read(chunk)`` returns the chunk table plus ``text`` (string) and/or
``tokens`` (list<int32>, for Parquet sources registered with a ``tokens`` option), row for
row in chunk order. Files may be local paths or object-store URIs (:mod:`mixsql.storage`).

* JSONL (plain, local): rows of one file are read with positioned reads sorted by offset; nearby
  lines are coalesced into one read.
* JSONL .zst / .gz with a seek table (multi-frame zstd, multi-member gzip; recorded at
  registration): a row is reached by decompressing from the nearest seek point, never from
  byte 0; decompressed segments live in the bounded in-RAM LRU (``cache_bytes``).
* JSONL .zst / .gz without one (a single frame), and JSONL objects: the whole file is
  decompressed (or fetched) once per node into the node cache (:mod:`mixsql.cache`); a whole
  entry is memory-mapped and a chunk's rows of it are parsed in place in one pass, after which
  their pages leave the worker's resident set (``MADV_DONTNEED``; they stay in the node's page
  cache): decompressed bytes live on disk and in the shared page cache, not in worker RAM.
  While this process fills an entry, rows are served from its temporary file as soon as
  the bytes they need are written (the first chunk does not wait for whole shards); the entry
  itself appears only when whole (atomic fills).
* Text: one JSON parse per line (orjson), the chunk's texts gathered in chunk order into one
  Arrow array (no per-file arrays, no reordering copy).
* Parquet: ``read_row_group`` with only the text/tokens column (ranged reads for objects),
  cached per (file, row group) in the in-RAM LRU.
* WebDataset tar: ``loc_length`` bytes at ``loc_offset`` (the text member's data), ranged reads
  for objects.

Every file is checked against the catalog (size, mtime_ns; objects also their ETag) when first
opened; a changed or missing file raises :class:`mixsql.errors.StaleFileError`. An object read
through a node-cache entry is checked when the entry is filled: an entry is keyed by the registered
size, mtime and ETag, so it holds exactly the registered bytes, and a warm node cache serves an
object without a request to the store (a rewrite is reported when the object is next fetched).
:meth:`ChunkReader.prefetch` reads the next chunks on a background thread while the caller works
on the current one, and starts node-cache fills for the files of chunks further ahead
(:meth:`ChunkReader.warm`; with ``ahead=``, a second iterator over the stream's chunks, fills start
``ahead_by`` chunks early, so the next shard window is decompressed while this one is read).

Files: :mod:`.reader` (:class:`ChunkReader`: read, read-ahead, file checks, dispatch per format),
:mod:`.jsonl` (JSONL lines, seek points), :mod:`.entries` (node-cache entries and their fills),
:mod:`.parquet`, :mod:`.webdataset`, :mod:`.files` (per-file facts, in-RAM LRU, coalesced reads),
:mod:`.columns` (chunk-order Arrow columns).
"""
from __future__ import annotations

from .reader import DEFAULT_CACHE_BYTES, ChunkReader

__all__ = ["ChunkReader", "DEFAULT_CACHE_BYTES"]
