"""Explore a mixsql catalog through the Python DB-API cursor, notebook style.

Run it as a script (``python examples/explore.py [CATALOG_DIR]``) or cell by cell (``# %%``)
in an editor. Without a catalog holding sources, it writes a tiny JSONL corpus next to the
catalog and registers it with ``CREATE SOURCE`` first.
"""
# %% connect
from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np

import mixsql

CATALOG = Path(sys.argv[1] if len(sys.argv) > 1 else "./mixsql_catalog")
con = mixsql.connect(CATALOG)
cur = con.cursor()


def show(sql: str, params=None, limit: int = 10) -> list[tuple]:
    """Run a statement and print its first rows under the column names."""
    cur.execute(sql, params)
    names = [d[0] for d in cur.description]
    rows = cur.fetchmany(limit)
    print(f"\n> {' '.join(sql.split())}")
    print("  " + " | ".join(names))
    for row in rows:
        print("  " + " | ".join(str(v) for v in row))
    return rows


# %% a tiny corpus, when the catalog is empty
if not cur.execute("SHOW SOURCES").fetchall():
    data = CATALOG.resolve().parent / "explore_data"
    data.mkdir(parents=True, exist_ok=True)
    rng = np.random.Generator(np.random.PCG64(0))
    for shard in range(3):
        with open(data / f"part-{shard}.jsonl", "w") as fh:
            for i in range(200):
                lang = rng.choice(["en", "de", "fr"], p=[0.6, 0.3, 0.1])
                domain = rng.choice(["web", "code", "books"], p=[0.6, 0.3, 0.1])
                text = " ".join(rng.choice(["data", "mix", "sql", "train", "model"], size=int(rng.integers(5, 60))))
                fh.write(json.dumps({"text": text, "meta": {"lang": str(lang), "domain": str(domain),
                                                            "quality": round(float(rng.random()), 3)}}) + "\n")
    show(f"CREATE SOURCE tiny FROM '{data}/*.jsonl' FORMAT jsonl "
         "WITH (language = 'meta.lang', domain = 'meta.domain', quality = 'meta.quality')")

# %% what is registered, and what a sample row looks like
show("SHOW SOURCES")
show("DESCRIBE samples", limit=50)

# %% plain SQL is DuckDB SQL: distributions of the properties
props = [d[0] for d in cur.execute("SELECT * FROM samples LIMIT 0").description]
group_col = next((c for c in ("language", "domain", "source") if c in props), "source")
show(f"SELECT {group_col}, count(*) AS samples, sum(n_bytes) AS bytes FROM samples GROUP BY 1 ORDER BY 2 DESC")
if "quality" in props:
    show("SELECT round(quality, 1) AS q, count(*) FROM samples GROUP BY 1 ORDER BY 1", limit=20)

# %% parameters use the qmark style
show("SELECT source, file, \"row\", n_bytes FROM samples WHERE n_bytes > ? ORDER BY n_bytes DESC", [100], limit=3)

# %% the mixture: NATURAL weights per group, then an explicit one
values = [r[0] for r in cur.execute(f"SELECT DISTINCT {group_col} FROM samples WHERE {group_col} IS NOT NULL "
                                    "ORDER BY 1").fetchall()]
mix = f"SELECT * FROM samples MIX BY {group_col} WITH NATURAL LIMIT 300 SAMPLES SETTINGS (seed = 1, chunk_size = 50)"
show("EXPLAIN MIX " + mix, limit=20)
if len(values) >= 2:
    weights = ", ".join(f"'{v}' {w:.3f}" for v, w in zip(values, np.full(len(values), 1 / len(values))))
    mix = (f"SELECT * FROM samples MIX BY {group_col} WITH ({weights}) "
           "LIMIT 300 SAMPLES SETTINGS (seed = 1, chunk_size = 50, on_exhausted = 'redistribute')")
    show("EXPLAIN MIX " + mix, limit=20)

# %% the MIX result set: one row per sample, in training order
rows = show(mix, limit=5)
print("  columns:", [d[0] for d in cur.description])

# %% chunk by chunk, as Arrow tables: realised composition of each chunk
cur.execute(mix)
for chunk in cur.chunks():
    counts = Counter(chunk.column("group").to_pylist())
    k = chunk.column("chunk")[0].as_py()
    print(f"  chunk {k}: {chunk.num_rows} rows  " + "  ".join(f"{g}={n}" for g, n in sorted(counts.items())))

con.close()
