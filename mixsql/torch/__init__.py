"""PyTorch integration: ``MixDataset`` (an ``IterableDataset``), ``mix_collate`` and ``MixDataLoader``.

Who reads what
    Chunk *k* of the statement goes to data-parallel rank ``k % dp_world`` and, inside that rank,
    to DataLoader worker ``(k // dp_world) % num_workers`` (``mixsql.topology``). ``dp_rank`` /
    ``dp_world`` come from ``torch.distributed`` (global rank // ``replicas``, so tensor/pipeline
    peers get identical data) unless given; workers come from ``get_worker_info()``.

What is yielded
    ``seq_len=None``: one dict per sample ``{"text", "group"}`` (+ ``columns=`` from the chunk);
    samples of pre-tokenized sources come as ``{"tokens" (LongTensor), "group"}``.
    ``seq_len=N``: packed ``{"input_ids" (LongTensor N+1), "group_ids" (per token), "group",
    "length"}``; with ``unit = 'tokens'`` (or ``by_group=True``) every sequence holds one group's
    tokens. Leftover tokens carry to the worker's next chunk; at the end of the stream each
    worker delivers its leftovers as final sequences padded with ``pad_id`` (``length`` < N+1,
    ``mix_collate`` turns it into ``mask``).

Training-loop conventions
    ``boundaries=True`` (packed): items carry ``position_ids`` restarting at 0 at every document,
    and MixDataLoader batches also ``cu_seqlens`` (int32) / ``max_seqlen`` for flash-attention's
    varlen kernels (:func:`add_boundaries`, :mod:`mixsql.packing`). ``by_group=False`` under
    ``unit = 'tokens'`` packs the groups into shared sequences; every token is still delivered
    once, so the token shares stay those of the chunks.
    Even endings (``even_end``, MixDataLoader under torch.distributed): every data-parallel rank
    hands out the same number of batches of a finite stream, so DDP's last step never hangs.
    ``'drop'`` (default): all ranks stop at the first batch some rank lacks; what was not handed
    out stays in ``state_dict()`` (a resumed run would deliver it). ``'pad'``: ranks that ran out
    hand out fully masked packed batches until all have ended. ``'off'``: no agreement.
    Schedules: a ``WITH SCHEDULE`` statement without ``SETTINGS (batch_size)`` maps steps onto
    chunks from ``batch_size`` (per rank; MixDataLoader passes its own) when a step's
    consumption is known in the statement's unit (unpacked samples; packed sequences of
    ``seq_len + 1`` tokens under ``unit = 'tokens'``); otherwise, iterated in-process, it
    follows ``set_step(step)`` (or ``feedback``); anywhere else iteration raises before data moves.
    ``persistent_workers=True``: workers keep their dataset copy (and the selection it opened)
    across epochs; each epoch's start state reaches them through a queue.
    Tokenizers are checked when the dataset is built (packed mode): no EOS, an EOS outside the
    vocabulary or a failing probe encode is an InterfaceError there, not in a worker
    (``mixsql.tokenize.validate_tokenizer``). Under ``unit = 'tokens'`` (or ``LIMIT ... TOKENS``)
    ``tokenizer_check`` compares the tokenizer with the one that counted the selected sources'
    ``n_tokens`` (``mixsql.tokenizer_check``): ``'warn'`` (default) a TokenizerMismatchWarning
    naming both, ``'error'`` a ProgrammingError before any data moves, ``'off'`` nothing. Token
    shares count each document's EOS (``mixsql.spec.EOS_TOKENS``), so the tokens a group's
    packed sequences carry are the tokens its share was computed on.

Hot path (per chunk, no per-token Python)
    Consecutive small chunks are read together on the prefetch thread (one ``ChunkReader.read``);
    each chunk's documents become one flat int32 array (pre-tokenized: the list column's values
    via offsets; raw text: one ``encode_flat`` batch call, see ``mixsql.tokenize`` for the thread
    policy in workers) that ``Packer.add_chunk`` frames and cuts with reshape; items are row views
    of one per-chunk tensor. Only the first item of a chunk carries the chunk's resume info; the
    others carry a (worker, task, key, tokens) tuple.

Batches (``MixDataLoader``)
    Packed mode with the default ``mix_collate`` and a ``batch_size``: the dataset itself cuts
    each worker's rows into batches (``_Batcher``: slices of the per-chunk packed arrays, one flat
    int32 buffer of ids, group ids and lengths per batch, one aggregated resume token
    (worker, task, {key: tokens}, info) per task the batch touches) and the underlying
    ``DataLoader`` runs with ``batch_size=None``; ``dl.batch_size`` / ``dl.drop_last`` still show
    the user's values. Workers send their batches in bundles (``_bundled``: one DataLoader message
    per up to ~256 KB of batches, the first bundle a single batch) and the main process restores
    the per-batch round robin over workers (``_interleave``), so the batches, their order and every
    ``state_dict()`` are exactly those of DataLoader's own per-item batching (each worker groups its
    own rows, B at a time, its last batch short or dropped with ``drop_last``). A custom
    ``collate_fn``, ``batch_size=None`` or ``seq_len=None`` keep the per-item path; there, with
    workers, ``_wire_collate`` ships each packed batch as one flat buffer. Either way the main
    process rebuilds ``mix_collate``'s batch (int64 tensors, ``mask``) in ``_unwire``.

Exactly-once resume
    Every item carries a compact resume token (worker, task, buffer key, tokens). ``MixDataLoader``
    (or direct iteration of the dataset in the main process) records the tokens of the items it
    *handed to the training loop*, never what workers prefetched. ``state_dict()`` converts them
    into a canonical, worker-count-independent description of the remaining work: partially
    consumed chunks (with their carry-in and how many tokens/samples of the chunk were consumed),
    chunks below the frontier that nobody started, the frontier, and one engine state to seek
    from (restoring costs O(groups) plus skipping the few chunks between the slowest and the
    fastest worker; never a replay of the stream).
    Guarantee: after ``load_state_dict`` the remaining data is exactly the data not yet consumed,
    every token/sample once. With the same ``num_workers`` (and ranks) the remaining batches are
    identical to an uninterrupted run; with a different ``num_workers`` the same tokens are
    delivered (nothing lost or duplicated) but sequence boundaries and order may differ.
    Loaders built elsewhere: inside a DataLoader worker that is not MixDataLoader's, each
    dataset copy records the items *it* handed out, and its ``state_dict()`` /
    ``load_state_dict()`` describe that worker's remaining work. This is torchdata's
    ``StatefulDataLoader`` protocol (it snapshots every worker's dataset state with the batches
    and hands each worker its own state back on resume, same ``num_workers``), so
    ``StatefulDataLoader(ds, num_workers=N).state_dict()`` resumes exactly like MixDataLoader. In
    the main process, ``ds.state_dict()`` after workers iterated copies of ``ds`` raises instead
    of returning a stale state.
    Elastic resume: ``load_state_dict([state of rank 0, ..., state of rank D-1])`` on a different
    number of data-parallel ranks (:func:`merge_rank_states`) continues the global stream from the
    largest old frontier; every chunk some old rank had not finished is redone by the new rank that
    owns its index, so nothing is lost or repeated. A single state needs the same world size.

Files
    ``dataset.py``     ``MixDataset``: arguments, tokenizer check, snapshot lease; iteration (which
                       tasks a worker runs, ``_items``), schedules (``set_step``) and ``feedback``
    ``items.py``       the per-chunk hot path: grouped reads, node-cache warm-up, tokens, items
    ``wire.py``        ``mix_collate``, ``add_boundaries``, ``_Batcher`` and the worker -> loader wire
                       format (``_wire_collate``, ``_bundled``, ``_interleave``, ``_unwire``)
    ``tracker.py``     state dicts: ``initial_state``, ``_Tracker`` (resume tokens -> state),
                       ``merge_rank_states`` (elastic resume), chunk ownership (``_suffix``)
    ``checkpoint.py``  ``MixDataset.state_dict`` / ``load_state_dict`` and the ledger's run record
    ``loader.py``      ``MixDataLoader``: its iteration loop, ``state_dict``, persistent workers
    ``even_end.py``    equal batch counts across data-parallel ranks (``_EvenEnd``)
    ``remote.py``      ``MixDataset(server=...)``: chunks fetched from a Flight server job
"""
from __future__ import annotations

from .dataset import MixDataset
from .even_end import EVEN_ENDS  # noqa: F401  (public, outside __all__)
from .items import PREFETCH_AHEAD  # noqa: F401
from .loader import MixDataLoader
from .tracker import STATE_VERSION, initial_state, merge_rank_states  # noqa: F401
from .wire import add_boundaries, mix_collate

__all__ = ["MixDataset", "MixDataLoader", "add_boundaries", "mix_collate", "initial_state"]
