"""``MixDataset(server=...)``: the statement runs on a Flight server; ranks fetch chunk *k* by index
and read the data files themselves."""
from __future__ import annotations


class _ServerEngine:
    """MixEngine interface over a Flight server job: chunk k is fetched by index."""

    def __init__(self, client, job: str, rank: int, state: dict | None):
        self.client, self.job, self.rank = client, job, rank
        self.next_index = int((state or {}).get("next_index", 0))

    def skip_chunk(self) -> bool:
        self.next_index += 1
        return True

    def next_chunk(self):
        t = self.client.get_chunk(self.job, self.next_index, rank=self.rank)
        if t is not None:
            self.next_index += 1
        return t

    def state_dict(self) -> dict:
        return {"next_index": self.next_index, "job": self.job}


class _ServerStream:
    """Stream adapter for ``MixDataset(server=...)``: the server executes the statement and
    sends the job's files table (paths, formats, options, fingerprints) with it, so ranks read
    the data files without the catalog (``catalog`` is not used)."""

    def __init__(self, server, sql, params, catalog, rank):
        import json

        from ..client import MixClient
        from ..spec import MixSpec

        self.client = MixClient(server) if isinstance(server, str) else server
        info = self.client.register(sql, params)
        self.job = info["job"]
        spec = info["spec"]
        self.spec = MixSpec.from_json(spec if isinstance(spec, str) else json.dumps(spec))
        self.files = self.client.files(self.job)
        self.rank = rank

    def engine(self, state=None):
        return _ServerEngine(self.client, self.job, self.rank, state)

    def feedback(self, step, loss_sums, token_counts):
        return self.client.feedback(self.job, step, loss_sums, token_counts)
