"""Peer data loaders driven through their public APIs (plus mixsql itself) for ``bench compare``.

Each adapter module exposes ``PACKAGE`` (pip name), ``convert(corpus, work, mode) -> dict`` and
``open(corpus, work, mode, seed, state=None) -> Source`` where a Source has ``samples()`` (a
worker-aware iterator of ``(text | token ids, domain)``) and ``state(n_samples_consumed)``.
A Source may also define ``batches(num_workers, batch_size, seq_len, tokenizer_path)`` when the
system brings its own worker pool (torchdata.nodes).
"""
SYSTEMS = ("mixsql", "hf_datasets", "mosaic_streaming", "litdata", "torchdata_nodes")
