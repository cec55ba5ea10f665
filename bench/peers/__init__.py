"""Peer data loaders driven through their public APIs (plus mixsql itself) for ``bench compare``.

Each adapter module exposes ``PACKAGE`` (pip name), ``convert(corpus, work, mode) -> dict`` and
``open(corpus, work, mode, seed, state=None) -> Source`` where a Source has
``sample_batches(n)`` (a worker-aware iterator of ``([text | token ids], [domain])`` lists, read
the system's own recommended way), ``samples()`` (one at a time, for resume) and
``state(n_samples_consumed)``. A Source may also define ``batches(num_workers, batch_size,
seq_len, tokenizer_path)`` when the system brings its own pipeline (torchdata.nodes' nodes,
mixsql's native MixDataLoader); ``mixsql_harness`` is mixsql read through the shared harness.
"""
SYSTEMS = ("mixsql", "mixsql_harness", "hf_datasets", "mosaic_streaming", "litdata", "torchdata_nodes")
