"""``MixDataset``: a MIX statement as an ``IterableDataset`` of samples or packed sequences.

Construction checks the arguments, validates the tokenizer and holds the catalog snapshot the
statement plans on. Iteration (``_items``) turns this worker's tasks (pending chunks and holes of
the restored state, then its suffix of chunks, then a final flush of leftovers) into items or, for
MixDataLoader's fast path, whole batches; SCHEDULE steps and in-process feedback steer the
engine (``set_step``, ``feedback``). Checkpoints: :mod:`.checkpoint`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from torch.utils.data import IterableDataset, get_worker_info

from ..errors import InterfaceError, ProgrammingError
from ..packing import MIXED, PackedBatch, Packer
from ..readers import DEFAULT_CACHE_BYTES, ChunkReader
from ..tokenizer_check import MODES as TOKENIZER_CHECKS, check_counting_tokenizer
from ..tokenize import configure_worker_threads, get_tokenizer, tokenizer_record, validate_tokenizer
from .checkpoint import _Checkpointing
from .even_end import EVEN_ENDS
from .items import (PREFETCH_AHEAD, _GROUP_MAX, _chunk_tokens, _future_chunks, _grouped, _GroupRead, _items_of,
                    _row_names, _ungroup, _unpacked_items)
from .remote import _ServerStream
from .tracker import _explicit_tasks, _merge_carry, _suffix, _Tracker, initial_state
from .wire import _Batcher, _bundled


def _shared_flag():
    """A byte in shared memory that DataLoader workers (forked or started from this process) set."""
    import multiprocessing

    return multiprocessing.RawValue("b", 0)


def _spawning() -> bool:
    from multiprocessing.context import get_spawning_popen

    return get_spawning_popen() is not None


def _dp_from_dist(replicas: int) -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        if world % replicas:
            raise InterfaceError(f"world size {world} is not a multiple of replicas={replicas}")
        return rank // replicas, world // replicas
    return 0, 1


def _hold_snapshot(catalog, sql):
    """Hold the catalog snapshot the dataset plans on (AT SNAPSHOT n in ``sql``, else the newest)."""
    from ..catalog import Catalog, hold_snapshot
    from ..source_statements import split_snapshot

    path = catalog.path if isinstance(catalog, Catalog) else catalog
    return hold_snapshot(path, split_snapshot(sql)[1] if sql else None)


class MixDataset(_Checkpointing, IterableDataset):
    """Stream a MIX statement as training samples or packed token sequences (see :mod:`mixsql.torch`);
    ``state_dict`` / ``load_state_dict`` come from :class:`~mixsql.torch.checkpoint._Checkpointing`.

    ``stream_factory`` (advanced/testing) replaces ``MixStream.open(catalog, sql, params)``:
    a zero-argument callable returning an object with ``files`` (files table), ``spec`` and
    ``engine(state) -> MixEngine``.
    """

    def __init__(self, sql: str | None = None, catalog: Any = "./mixsql_catalog", server: Any = None,
                 tokenizer: Any = None, seq_len: int | None = None, params: Any = None, replicas: int = 1,
                 dp_rank: int | None = None, dp_world: int | None = None, by_group: bool | None = None,
                 eos_id: int | None = None, bos_id: int | None = None, pad_id: int | None = None,
                 columns: Sequence[str] = (), cache_bytes: int = DEFAULT_CACHE_BYTES, prefetch: int = 2,
                 even_end: str = "drop", boundaries: bool = False, batch_size: int | None = None,
                 tokenizer_check: str = "warn", stream_factory: Callable[[], Any] | None = None,
                 prefetch_ahead: int = PREFETCH_AHEAD):
        super().__init__()
        if sql is None and stream_factory is None:
            raise InterfaceError("MixDataset needs a MIX statement: MixDataset(sql, catalog=...)")
        self.sql, self.catalog, self.server, self.params = sql, catalog, server, params
        self._lease = _hold_snapshot(catalog, sql) if server is None and stream_factory is None else None
        self.snapshot = self._lease.snapshot if self._lease is not None else None
        self.tokenizer_spec, self.seq_len = tokenizer, seq_len
        self.replicas = int(replicas)
        if self.replicas < 1:
            raise InterfaceError("replicas must be >= 1")
        if dp_rank is None or dp_world is None:
            r, wd = _dp_from_dist(self.replicas)
            dp_rank = r if dp_rank is None else dp_rank
            dp_world = wd if dp_world is None else dp_world
        if not 0 <= dp_rank < dp_world:
            raise InterfaceError(f"dp_rank {dp_rank} is outside 0..{dp_world - 1}")
        self.dp_rank, self.dp_world = int(dp_rank), int(dp_world)
        self.by_group, self.eos_id, self.bos_id, self.pad_id = by_group, eos_id, bos_id, pad_id
        self.eos: int | None = None   # the EOS id the packer appends (packed mode)
        tok = None
        if seq_len is not None:   # tokenizer problems (no EOS, unreadable file) surface here, not in a worker
            tok = get_tokenizer(tokenizer, eos_id=eos_id, bos_id=bos_id)
            self.eos = validate_tokenizer(tok, eos_id)
        self.columns = tuple(columns)
        if even_end not in EVEN_ENDS:
            raise InterfaceError(f"even_end must be one of {', '.join(map(repr, EVEN_ENDS))}, got {even_end!r}")
        if even_end == "pad" and seq_len is None:
            raise InterfaceError("even_end='pad' pads with masked packed sequences and needs seq_len=; "
                                 "use 'drop' for samples")
        self.even_end = even_end
        if boundaries and seq_len is None:
            raise InterfaceError("boundaries=True marks documents inside packed sequences and needs seq_len=")
        self.boundaries = bool(boundaries)
        self.batch_size = batch_size   # per rank and step; MixDataLoader fills in its own
        self.cache_bytes, self.prefetch_depth = cache_bytes, prefetch
        if int(prefetch_ahead) < 0:
            raise InterfaceError(f"prefetch_ahead must be >= 0 (chunks), got {prefetch_ahead}")
        self.prefetch_ahead = int(prefetch_ahead)
        self.stream_factory = stream_factory
        self._state = initial_state(self.dp_rank, self.dp_world)
        self._tracker: _Tracker | None = None
        self._stream = None
        self._engine = None
        self._algo = None                 # in-process USING algorithm (feedback with num_workers=0)
        self._algo_state: dict | None = None   # restored algorithm state, applied when it is created
        self._weight_log: list = []       # in-process weight changes [[at_chunk, weights], ...]
        self._steps = 0                   # items (direct iteration) or batches (MixDataLoader) handed out
        self._topologies: list | None = None   # the restored run's topology history (see _run_record)
        self._resumed: dict | None = None      # {"step", "states"}: where and from what this run resumed
        self._job_ledger: dict | None = None   # server mode: the job's ledger record (static jobs: cached)
        self._worker_flag = _shared_flag()  # set by workers of a loader other than MixDataLoader
        self._step_size: int | None = None  # global step size that maps SCHEDULE steps (see set_step)
        self._epoch_states = None           # MixDataLoader with persistent workers: epoch start states
        if tokenizer_check not in TOKENIZER_CHECKS:
            raise InterfaceError(f"tokenizer_check must be one of {', '.join(map(repr, TOKENIZER_CHECKS))}, "
                                 f"got {tokenizer_check!r}")
        self.tokenizer_check = tokenizer_check
        self._check_tokenizer(tok)

    def _check_tokenizer(self, tok) -> None:
        """The packing tokenizer against the one that counted the catalog's n_tokens
        (:mod:`mixsql.tokenizer_check`), before any data moves. Local catalogs only (a server's
        catalog is not read here); unpacked samples are tokenized by the user, not checked."""
        from ..catalog import Catalog
        from ..snapshots import Store

        if tok is None or self._lease is None:
            return
        path = self.catalog.path if isinstance(self.catalog, Catalog) else Path(self.catalog).expanduser().resolve()
        sources = (Store(path).read(self.snapshot) or {}).get("sources", [])

        def selection():
            stream = self._open()
            self._stream = None   # workers map the node's cached selection themselves
            spec = stream.spec
            tokens = spec.counts_tokens
            return tokens, set(stream.files.column("source").to_pylist())

        check_counting_tokenizer(sources, tokenizer_record(tok), self.tokenizer_check, selection)

    def __getstate__(self):
        state = dict(self.__dict__)
        if not _spawning():   # shared-memory objects only travel to processes started from this one
            state["_worker_flag"] = state["_epoch_states"] = None
        return state

    def _workers_iterated(self) -> bool:
        return self._worker_flag is not None and bool(self._worker_flag.value)

    # -- iteration --------------------------------------------------------------------------
    def _open(self):
        if self._stream is None:
            if self.stream_factory is not None:
                self._stream = self.stream_factory()
            elif self.server is not None:
                self._stream = _ServerStream(self.server, self.sql, self.params, self.catalog,
                                             self.dp_rank)
            else:
                from ..stream import MixStream

                if self.columns or not isinstance(self.catalog, (str, os.PathLike)):
                    # a path: MixStream.open opens the catalog read-only and closes it when done
                    self._stream = MixStream.open(self.catalog, self.sql, self.params, user_columns=self.columns,
                                                  snapshot=self.snapshot)
                else:   # pointers only: the node's cached selection, planned once, memory-mapped
                    self._stream = MixStream.open_cached(self.catalog, self.sql, self.params,
                                                         snapshot=self.snapshot)
        return self._stream

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        if info is not None:
            # a worker process: the resume tokens travel to MixDataLoader through mix_collate
            if getattr(self, "_epoch_states", None) is not None:   # persistent workers
                self._epoch = getattr(self, "_epoch", 0) + 1
                if self._epoch > 1:
                    self._state = self._epoch_states.get()
            st, W = self._state, info.num_workers
            w = (info.id + st.get("next_worker", 0)) % W if st.get("workers") == W else info.id
            configure_worker_threads(W)   # tokenizer threads: cores split between the workers
            if not getattr(self, "_emit_tokens", False):   # a stock DataLoader / StatefulDataLoader
                if self._worker_flag is not None:
                    self._worker_flag.value = 1
                return self._tracked(st, W, info.id)
            batcher = self._batcher(w, shared=True)
            items = self._items(st, W, w, batcher)
            return items if batcher is None else _bundled(items, w)
        if getattr(self, "_emit_tokens", False):  # MixDataLoader with num_workers=0
            return self._items(self._state, 1, 0, self._batcher(0, shared=False))
        return self._direct()

    def _batcher(self, w: int, shared: bool) -> _Batcher | None:
        """Whole batches instead of items when MixDataLoader asked for them (packed mode only)."""
        b = getattr(self, "_batching", None)
        if b is None or self.seq_len is None:
            return None
        return _Batcher(w, b[0], b[1], shared)

    def _direct(self) -> Iterator[dict]:
        if self._worker_flag is not None:
            self._worker_flag.value = 0
        return self._tracked(self._state, 1, 0)

    def _tracked(self, state: dict, W: int, w: int) -> Iterator[dict]:
        """Items of worker ``w`` of ``W``, their resume tokens recorded in ``self._tracker`` as
        each item is handed out (what ``state_dict()`` of this copy reports)."""
        self._tracker = tracker = _Tracker(state, W)
        for item in self._items(state, W, w):
            tracker.observe(item.pop("_mix"))
            self._steps += 1
            yield item

    def _items(self, state: dict, W: int, w: int, batcher: _Batcher | None = None) -> Iterator[dict]:
        stream = self._open()
        spec = stream.spec
        names = {g.id: g.path for g in spec.groups}
        packed = self.seq_len is not None
        tok = get_tokenizer(self.tokenizer_spec, eos_id=self.eos_id, bos_id=self.bos_id) if packed else None
        by_group = self.by_group if self.by_group is not None else spec.unit == "tokens"
        eos = self.eos_id if self.eos_id is not None else (tok.eos_id if tok else None)
        bos = self.bos_id  # BOS is prepended only when asked for explicitly
        # per-item position ids where no MixDataLoader adds boundaries to whole batches
        item_eos = eos if self.boundaries and not getattr(self, "_emit_tokens", False) else None
        self._step_size = step_size = self._schedule_step_size(spec, in_process=W == 1 and get_worker_info() is None)
        reader = ChunkReader(stream.files, cache_bytes=self.cache_bytes)
        engine = stream.engine(state["engine"])
        if step_size is not None:   # SCHEDULE steps at fixed chunks, as SETTINGS (batch_size) would
            engine = type(engine)(stream.pointers, spec, state["engine"], batch_size=step_size)
        for at, weights in self._weight_log:   # in-process feedback beyond the restored position
            if at >= engine.next_index:
                engine.set_weights(weights, at_chunk=at)
        self._engine = engine
        D, r, K = state["dp_world"], state["dp_rank"], state["frontier"]
        end = state.get("end")
        explicit = _explicit_tasks(state, W, w)

        def tasks():
            for t, task in enumerate(explicit):
                yield t, "explicit", task
            t = len(explicit)
            for k in _suffix(K, r, D, W, w):
                if end is not None and k >= end:
                    break
                yield t, "suffix", {"chunk": k, "carry": {}, "drop": {}}
                t += 1
            yield t, "flush", {"chunk": None, "carry": {}, "drop": {}}

        def with_chunks():
            """Position the engine and fetch each task's pointer chunk (in this thread)."""
            nonlocal end
            for t, kind, task in tasks():
                c = task["chunk"]
                table = eng = None
                if c is not None and (end is None or c < end):
                    seek = getattr(engine, "seek", None)
                    if seek is not None and engine.next_index < c:
                        seek(c)   # chunk c computed directly: other workers' chunks are never composed
                    while engine.next_index < c:
                        if not engine.skip_chunk():
                            end = engine.next_index
                            break
                    if end is None or c < end:
                        eng = [engine.next_index, engine.state_dict()]
                        table = engine.next_chunk()
                        if table is None:
                            end, eng = c, None
                if kind == "suffix" and table is None:
                    # the stream ended: only this worker's leftovers remain
                    yield t, "flush", {"chunk": None, "carry": {}, "drop": {}}, None, None
                    return
                yield t, kind, task, table, eng

        dynamic = spec.algorithm is not None or bool(spec.schedule)
        running: dict = {}
        try:
            for (t, kind, task, _table, eng), data in _ungroup(reader.prefetch(
                    # feedback-driven weights apply from the engine's next unfetched chunk: with one
                    # chunk per read, how far reading runs ahead is the same in a resumed run
                    _grouped(with_chunks(), 1 if dynamic else _GROUP_MAX),
                    depth=self.prefetch_depth, read=_GroupRead(reader), tables=_GroupRead.tables,
                    ahead=None if dynamic else _future_chunks(engine, _suffix(K, r, D, W, w), end),
                    ahead_by=self.prefetch_ahead)):
                carry_in = _merge_carry(running, task["carry"])
                info = {"kind": kind, "chunk": task["chunk"] if data is not None else None,
                        "carry": carry_in, "drop": dict(task["drop"]), "eng": eng,
                        "end": end if kind == "flush" else None}
                if kind == "explicit" and data is None and task["chunk"] is not None:
                    info["chunk"] = None  # a pending chunk beyond the end of the stream
                first = [info]

                def token(key, n):
                    i = first.pop() if first else None
                    return (w, t, key, n, i)

                if not packed:
                    if data is not None:
                        yield from _unpacked_items(data, task["drop"].get(MIXED, 0), names, self.columns, token)
                    continue
                packer = Packer(self.seq_len, eos, bos, by_group=by_group, pad_id=self.pad_id, drop=task["drop"])
                parts = [packer.load_carry_batch(carry_in)]
                if data is not None and data.num_rows:
                    values, lengths = _chunk_tokens(data, tok)
                    gids = data.column("group_id").to_numpy(zero_copy_only=False)
                    parts.append(packer.add_chunk(values, lengths, gids))
                if kind == "flush":
                    parts.append(packer.flush_batch())
                    running = {}
                else:
                    running = packer.carry_arrays()
                pb = PackedBatch.concat(parts, packer.L)
                if batcher is None:
                    yield from _items_of(pb, names, token, item_eos)
                elif len(pb):
                    yield from batcher.add(pb, _row_names(pb, names), t, info)
            if batcher is not None:
                yield from batcher.finish()
        finally:
            reader.close()

    # -- schedules ---------------------------------------------------------------------------
    def _schedule_step_size(self, spec, in_process: bool) -> int | None:
        """What one global training step consumes in the statement's unit, when a SCHEDULE needs
        it (no ``SETTINGS (batch_size)``) and the per-rank batch size says it: samples per step
        (``B * dp_world``) without packing, tokens (``B * dp_world * (seq_len + 1)``) for packed
        sequences under ``unit = 'tokens'``. Otherwise ``None``: in-process the schedule follows
        ``set_step``; anywhere else that is an error, raised before any data moves."""
        if not spec.schedule or spec.batch_size or self.server is not None:
            return None
        b = self.batch_size
        if b is not None:
            per_step = int(b) * self.dp_world
            if self.seq_len is None and spec.unit == "samples":
                return per_step
            if self.seq_len is not None and spec.unit == "tokens":
                return per_step * (self.seq_len + 1)
        if in_process:
            return None
        raise ProgrammingError(
            "WITH SCHEDULE needs to know the training step, and this stream cannot: add SETTINGS "
            "(batch_size = B) to the statement (samples, or tokens under unit = 'tokens', per global "
            "step), or pass batch_size= (per rank) for unpacked samples / packed sequences under "
            "unit = 'tokens', or iterate in-process (num_workers=0) and call ds.set_step(step)")

    def set_step(self, step: int) -> None:
        """The training step about to run: puts the SCHEDULE's weights for ``step`` in force from
        the next chunk (in-process iteration; the change is part of ``state_dict()``). A no-op
        when steps map to chunks through a batch size; an error for statements without SCHEDULE."""
        spec = self._open().spec
        if not spec.schedule:
            raise ProgrammingError("set_step() drives WITH SCHEDULE mixtures; this statement's weights are "
                                   + spec.weighting)
        if spec.batch_size or self._step_size is not None or self.server is not None:
            return   # the engine maps steps to chunks itself
        if self._engine is None:
            raise InterfaceError("set_step() needs this dataset iterating in this process (num_workers=0); "
                                 "with DataLoader workers give a batch size (SETTINGS (batch_size = B) or "
                                 "batch_size=)")
        at = self._engine.apply_schedule_for_step(int(step))
        if at is not None:
            weights = [st.weights for st in spec.schedule if st.step <= step][-1]
            self._weight_log.append([int(at), [float(x) for x in weights]])

    # -- feedback ---------------------------------------------------------------------------
    def feedback(self, step: int, group_loss_sums: Sequence[float], group_token_counts: Sequence[float]) -> None:
        """Report per-group loss sums and token counts (drives USING ADO / loss_average mixtures).

        With ``server=`` the report goes to the Flight server; otherwise it is applied to this
        process's engine (single-process runs, ``num_workers=0``) and the algorithm's state and
        weight changes become part of ``state_dict()``. Static mixtures refuse it."""
        if self.server is not None:
            stream = self._open()
            fb = getattr(stream, "feedback", None)
            if fb is None:
                raise InterfaceError("the server client does not accept feedback")
            fb(step, list(group_loss_sums), list(group_token_counts))
            return
        spec = self._open().spec
        if spec.algorithm is None and spec.schedule:
            self.set_step(step)
            return
        if spec.algorithm is None:
            raise ProgrammingError(
                "feedback() needs a dynamic mixture (MIX BY ... USING ADO (...) or loss_average); "
                "this statement's weights are " + spec.weighting
            )
        if self._engine is None:
            raise InterfaceError("feedback() in-process needs an iterating dataset (num_workers=0); "
                                 "with DataLoader workers or several ranks use server=...")
        apply = getattr(self._engine, "feedback", None)
        if apply is not None:
            apply(step, list(group_loss_sums), list(group_token_counts))
            return
        from ..algorithms import make_algorithm

        algo = self._algo
        if algo is None:
            algo = self._algo = make_algorithm(spec.algorithm.name, [g.path for g in spec.groups],
                                               spec.weights(), spec.algorithm.kwargs())
            if self._algo_state is not None:
                algo.load_state_dict(self._algo_state)
                self._algo_state = None
        weights = algo.update(step, list(group_loss_sums), list(group_token_counts))
        if weights is not None:
            at = self._engine.set_weights(weights, at_chunk=self._engine.next_index)
            self._weight_log.append([int(at), [float(x) for x in weights]])
