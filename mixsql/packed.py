"""Packed selections: a planned statement in about one byte per selected sample.

A statement without ORDER BY consumes each group in (file, row) order
permuted by the shuffle; that base order is the order of the catalog's global row numbers
(:mod:`mixsql.rowindex`). So a group is stored as its sorted row numbers, in blocks of
``BLOCK``: per block the first number (``base``), a byte width (0, 1, 2, 4 or 8) and the gaps
minus one at that width (0 bytes for a contiguous run). Chunk rows are decoded from their
blocks only; file, row and location come from the row index. The shuffle's shards (runs of one
file within a group) are stored as ``(first position, file id)`` pairs, O(files x groups). A
statement composed in tokens (or with a token budget) also stores every sample's token count in
base order (``tokens.npy``, int32, -1 where the catalog has none), mapped by every process.

Built streaming (:func:`build`), in bounded memory at any size: DuckDB's result batches scatter
each row's leaf group into a per-row code array (a temporary file); a pass over it in row order
yields every group's sorted row numbers; a pass over those writes the blocks.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .errors import ProgrammingError
from .progress import StatusLine
from .rowindex import LOC, RowIndex, index_key, index_root
from .spec import MixSpec

PACKED_VERSION = 1
BLOCK = 128
SLAB = 1 << 24          # row numbers per pass step (bounded memory)
_WIDTHS = (1, 2, 4, 8)
DUPLICATE = ("the MIX query returns some samples more than once (a join that duplicates rows?); a training "
             "selection holds each sample once: filter with WHERE EXISTS (...) or IN (...) instead of a join")


def eligible(spec: MixSpec) -> bool:
    """Whether a statement's selection can be packed: no ORDER BY (its order is the rows')."""
    return not spec.ordered



class PackedSelection:
    """A published packed selection, memory-mapped; positions are base-order indices
    (group-major, ``bounds[g] <= p < bounds[g + 1]`` for group ``g``)."""

    def __init__(self, directory: Path, meta: dict, rows: RowIndex):
        self.directory = directory
        self.spec = MixSpec.from_json(meta["spec"])
        self.rows = rows
        self.group_sizes = np.asarray(meta["group_sizes"], np.int64)
        self.num_rows = int(self.group_sizes.sum())
        self.bounds = np.concatenate([[0], np.cumsum(self.group_sizes)]).astype(np.int64)
        self.block_start = np.concatenate([[0], np.cumsum(-(-self.group_sizes // BLOCK))]).astype(np.int64)
        load = lambda name: np.load(directory / f"{name}.npy", mmap_mode="r")   # noqa: E731
        self.base, self.off, self.width = load("base"), load("off"), load("width")
        self.runs_pos, self.runs_file = load("runs_pos"), load("runs_file")
        self.runs_start = np.searchsorted(self.runs_pos, self.bounds).astype(np.int64)
        size = (directory / "deltas.bin").stat().st_size
        self.deltas = np.memmap(directory / "deltas.bin", np.uint8, mode="r") if size else np.zeros(0, np.uint8)
        # token-unit statements: every sample's token count in base order (int32, -1: none)
        self.tokens = np.load(directory / "tokens.npy", mmap_mode="r") if meta.get("tokens") else None
        self.token_nulls = int(meta.get("token_nulls", 0))

    @classmethod
    def open(cls, directory: Path) -> "PackedSelection":
        meta = json.loads((directory / "meta.json").read_text())
        rows_dir = index_root() / meta["rowindex"]
        if not rows_dir.is_dir():
            raise ProgrammingError(f"the packed selection {directory} needs the row index {rows_dir}, "
                                   "which is gone: remove the selection directory and open the statement again")
        return cls(directory, meta, RowIndex(rows_dir))

    # --- decoding ------------------------------------------------------------------------------
    def gidx(self, positions: np.ndarray) -> np.ndarray:
        """Global row numbers at base-order ``positions`` (int64), decoding only their blocks."""
        p = np.asarray(positions, np.int64)
        if not len(p):
            return np.zeros(0, np.int64)
        g = np.searchsorted(self.bounds, p, side="right") - 1
        r = p - self.bounds[g]
        blk, j = self.block_start[g] + r // BLOCK, r % BLOCK
        ub, inv = np.unique(blk, return_inverse=True)
        cum = np.zeros((len(ub), BLOCK), np.int64)
        w, o = np.asarray(self.width[ub]), np.asarray(self.off[ub], np.int64)
        cum[w == 0, 1:] = np.arange(1, BLOCK)
        for width in _WIDTHS:
            m = w == width
            if m.any():
                raw = self.deltas[o[m, None] + np.arange((BLOCK - 1) * width)]
                gaps = np.ascontiguousarray(raw).view(f"<u{width}").reshape(-1, BLOCK - 1).astype(np.int64)
                cum[m, 1:] = np.cumsum(gaps + 1, axis=1)
        return np.asarray(self.base[ub], np.int64)[inv] + cum[inv, j]

    def take(self, positions: np.ndarray) -> dict:
        """Pointer columns of ``positions``: file position (in ``rows.files``), row, location."""
        gx = self.gidx(positions)
        fp = self.rows.file_pos(gx)
        rec = self.rows.loc[gx] if len(gx) else np.zeros(0, LOC)
        return {"code": fp, "row": gx - np.asarray(self.rows.starts, np.int64)[fp], "offset": rec["offset"],
                "length": rec["length"], "n_bytes": rec["n_bytes"], "n_tokens": rec["n_tokens"]}

    def used_files(self):
        """The row index's ``files`` rows of the files the selection points into (every file
        starts a run in each group that reads it)."""
        ids = np.unique(np.asarray(self.runs_file, np.int64))
        return self.rows.files.take(np.searchsorted(self.rows.file_ids, ids))

    def shard_runs(self, g: int) -> tuple[np.ndarray, np.ndarray]:
        """``(first positions within group g, file ids)`` of g's runs of one file."""
        a, b = int(self.runs_start[g]), int(self.runs_start[g + 1])
        return (np.asarray(self.runs_pos[a:b], np.int64) - self.bounds[g],
                np.asarray(self.runs_file[a:b], np.int64))

    def position_of(self, gidx: int) -> int | None:
        """Base-order position of global row number ``gidx``, or None when not selected: a
        binary search over each group's block bases, then one block decoded."""
        for g in range(len(self.group_sizes)):
            lo, hi = int(self.block_start[g]), int(self.block_start[g + 1])
            if hi == lo:
                continue
            b = lo + int(np.searchsorted(self.base[lo:hi], gidx, side="right")) - 1
            if b < lo:
                continue
            first = int(self.bounds[g]) + (b - lo) * BLOCK
            last = min(first + BLOCK, int(self.bounds[g + 1]))
            vals = self.gidx(np.arange(first, last))
            i = int(np.searchsorted(vals, gidx))
            if i < len(vals) and vals[i] == gidx:
                return first + i
        return None


# --- building ------------------------------------------------------------------------------------
def build(catalog, plan, tmp: Path, catalog_path: str, snapshot: int, sql: str) -> None:
    """Run ``plan`` over ``catalog`` and write its packed selection into ``tmp`` (the selection
    cache's build directory); raises the planner's data errors (empty groups, unknown values)."""
    from .planner.execute import check_rows, null_tokens_error, resolve_natural, run_query

    rows = RowIndex.open_or_build(catalog, catalog_path, snapshot)
    status = StatusLine()
    n_leaves = len(plan.leaves)
    dtype = np.dtype(np.uint16 if n_leaves < 2**16 - 1 else np.uint32)
    sentinel = np.iinfo(dtype).max
    codes = np.memmap(tmp / "codes.tmp", dtype=dtype, mode="w+", shape=(max(rows.size, 1),))
    codes[:] = sentinel
    leaf_rows = np.zeros(n_leaves, np.int64)
    entry_rows = {name: np.zeros(plan.n_entries, np.int64) for name in plan.entry_columns}
    cols = ["__mix_group", *plan.entry_columns, "__mix_file_id", "__mix_row"]
    with catalog.lock:
        for batch in run_query(catalog, plan, cols):
            g = batch.column(0).to_numpy().astype(np.int64)
            gx = rows.gidx(batch.column(len(cols) - 2).to_numpy().astype(np.int64),
                           batch.column(len(cols) - 1).to_numpy())
            if (codes[gx] != sentinel).any():   # twice in one batch: the count check in _group_major
                raise ProgrammingError(DUPLICATE)
            codes[gx] = g
            leaf_rows += np.bincount(g, minlength=n_leaves)
            for i, name in enumerate(plan.entry_columns, start=1):
                e = batch.column(i).drop_null().to_numpy(zero_copy_only=False).astype(np.int64)
                entry_rows[name] += np.bincount(e, minlength=plan.n_entries)
            status.show(f"mixsql: selecting {int(leaf_rows.sum()):,} samples")
    check_rows(catalog, plan, leaf_rows, entry_rows)
    sorted_path = _group_major(codes, leaf_rows, sentinel, tmp, status)
    del codes
    (tmp / "codes.tmp").unlink()
    tokens = plan.spec.counts_tokens
    stats = _write_blocks(np.memmap(sorted_path, np.int64, mode="r") if leaf_rows.sum() else np.zeros(0, np.int64),
                          leaf_rows, rows, tmp, status, tokens)
    sorted_path.unlink()
    status.clear()
    if tokens and plan.spec.unit == "tokens" and stats["nulls"]:
        raise null_tokens_error(plan, stats["nulls"], stats["first_null_source"])
    spec = resolve_natural(plan, leaf_rows, stats["leaf_tokens"] if plan.spec.unit == "tokens" else None)
    (tmp / "meta.json").write_text(json.dumps({
        "kind": "packed", "version": PACKED_VERSION, "spec": spec.to_json(), "group_sizes": leaf_rows.tolist(),
        "rowindex": index_key(catalog_path, snapshot), "snapshot": int(snapshot), "statement": sql,
        "rows": int(leaf_rows.sum()), "tokens": tokens, "token_nulls": stats["nulls"]}))


def _group_major(codes: np.ndarray, leaf_rows: np.ndarray, sentinel, tmp: Path, status) -> Path:
    """Every group's row numbers, ascending, groups one after another (a temporary int64 file)."""
    path = tmp / "sorted.tmp"
    n = int(leaf_rows.sum())
    out = np.memmap(path, np.int64, mode="w+", shape=(max(n, 1),))
    cursor = np.concatenate([[0], np.cumsum(leaf_rows)[:-1]]).astype(np.int64)
    for lo in range(0, len(codes), SLAB):
        c = np.asarray(codes[lo:lo + SLAB])
        sel = np.flatnonzero(c != sentinel)
        if not len(sel):
            continue
        order = np.argsort(c[sel], kind="stable")   # radix sort: 16-bit codes
        gc = c[sel][order].astype(np.int64)
        counts = np.bincount(gc, minlength=len(leaf_rows))
        first = np.concatenate([[0], np.cumsum(counts)[:-1]])
        dest = cursor[gc] + (np.arange(len(gc)) - first[gc])
        out[dest] = lo + sel[order]
        cursor += counts
        status.show(f"mixsql: ordering the selection by group ({min(lo + SLAB, len(codes)):,} / {len(codes):,} rows)")
    if (cursor != np.cumsum(leaf_rows)).any():   # fewer rows than the query returned: one came twice
        raise ProgrammingError(DUPLICATE)
    out.flush()
    return path


def _write_blocks(srt: np.ndarray, leaf_rows: np.ndarray, rows: RowIndex, tmp: Path, status,
                  tokens: bool = False) -> dict:
    """Blocks (base, width, byte offset, gaps) and shard runs of the group-major row numbers;
    with ``tokens``, every sample's token count in the same order (``tokens.npy``). Returns the
    token statistics: ``leaf_tokens`` (EOS included, as packed), ``nulls``, ``first_null_source``."""
    from .spec import EOS_TOKENS

    stats = {"leaf_tokens": np.zeros(len(leaf_rows)), "nulls": 0, "first_null_source": None}
    tok_out = None
    if tokens and int(leaf_rows.sum()):
        tok_out = np.lib.format.open_memmap(tmp / "tokens.npy", mode="w+", dtype=np.int32,
                                            shape=(int(leaf_rows.sum()),))
    elif tokens:
        np.save(tmp / "tokens.npy", np.zeros(0, np.int32))
    nblocks = -(-leaf_rows // BLOCK)
    block_start = np.concatenate([[0], np.cumsum(nblocks)]).astype(np.int64)
    bounds = np.concatenate([[0], np.cumsum(leaf_rows)]).astype(np.int64)
    total = int(block_start[-1])
    base, off, width = np.zeros(total, np.uint64), np.zeros(total, np.uint64), np.zeros(total, np.uint8)
    runs_pos, runs_file = [], []
    byte_at, prev_file = 0, None
    step = max(1, SLAB // BLOCK)
    with open(tmp / "deltas.bin", "wb") as deltas:
        for b0 in range(0, total, step):
            b = np.arange(b0, min(total, b0 + step))
            g = np.searchsorted(block_start, b, side="right") - 1
            first = bounds[g] + (b - block_start[g]) * BLOCK
            length = np.minimum(BLOCK, bounds[g + 1] - first)
            pos = first[:, None] + np.arange(BLOCK)
            valid = np.arange(BLOCK) < length[:, None]
            vals = np.asarray(srt[np.where(valid, pos, first[:, None])], np.int64)
            gaps = np.where(valid[:, 1:], np.diff(vals, axis=1) - 1, 0)
            top = gaps.max(axis=1)
            w = np.select([top == 0, top < 2**8, top < 2**16, top < 2**32], [0, 1, 2, 4], 8).astype(np.uint8)
            nbytes = w.astype(np.int64) * (BLOCK - 1)
            starts = byte_at + np.concatenate([[0], np.cumsum(nbytes)[:-1]])
            buf = np.zeros(int(nbytes.sum()), np.uint8)
            for size in _WIDTHS:
                m = w == size
                if m.any():
                    raw = gaps[m].astype(f"<u{size}").view(np.uint8).reshape(int(m.sum()), -1)
                    buf[(starts[m] - byte_at)[:, None] + np.arange((BLOCK - 1) * size)] = raw
            deltas.write(buf.tobytes())
            base[b], off[b], width[b] = vals[:, 0].astype(np.uint64), starts.astype(np.uint64), w
            byte_at += int(nbytes.sum())
            # shard runs: a new run where the file changes or a group starts
            flat_pos, flat = pos[valid], vals[valid]
            fid = rows.file_ids[rows.file_pos(flat)]
            new = np.ones(len(flat), bool)
            new[1:] = fid[1:] != fid[:-1]
            if prev_file is not None and len(flat):
                new[0] = fid[0] != prev_file
            new |= flat_pos == np.repeat(bounds[g], length)   # a group's first sample
            if tok_out is not None and len(flat):
                tk = np.asarray(rows.loc["n_tokens"][flat], np.int32)
                tok_out[flat_pos] = tk
                nul = tk < 0
                if nul.any() and not stats["nulls"]:
                    fp = int(rows.file_pos(flat[nul][:1])[0])
                    stats["first_null_source"] = rows.sources[int(rows.file_source[fp])].as_py()
                stats["nulls"] += int(nul.sum())
                stats["leaf_tokens"] += np.bincount(np.repeat(g, length), weights=np.where(nul, 0, tk) + float(EOS_TOKENS),
                                                    minlength=len(leaf_rows))
            runs_pos.append(flat_pos[new])
            runs_file.append(fid[new])
            prev_file = fid[-1] if len(flat) else prev_file
            status.show(f"mixsql: packing the selection ({min(b0 + step, total) * BLOCK:,} samples)")
    np.save(tmp / "base.npy", base)
    np.save(tmp / "off.npy", off)
    np.save(tmp / "width.npy", width)
    np.save(tmp / "runs_pos.npy", np.concatenate(runs_pos) if runs_pos else np.zeros(0, np.int64))
    np.save(tmp / "runs_file.npy", np.concatenate(runs_file).astype(np.int64) if runs_file else np.zeros(0, np.int64))
    if tok_out is not None:
        tok_out.flush()
        del tok_out
    return stats
