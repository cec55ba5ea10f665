"""Per-format scanners: real .jsonl / .zst / .gz / .parquet / .tar files written in tmp_path."""
from __future__ import annotations

import gzip
import io
import json
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from mixsql import formats
from mixsql.formats import ScanTask, scan_file
from mixsql.formats import compressed
from mixsql.formats.jsonl import JsonlScanner


def _lines(n, start=0):
    return [json.dumps({"text": f"doc {i} héllo ✓" * (1 + i % 3), "lang": ["en", "de"][i % 2],
                        "meta": {"score": i / 10, "set": f"s{i % 3}"}}) for i in range(start, start + n)]


def _check_offsets(raw: bytes, table: pa.Table, lines: list[str]):
    offs = table.column("loc_offset").to_pylist()
    lens = table.column("loc_length").to_pylist()
    got = [raw[o:o + n].decode() for o, n in zip(offs, lens)]
    assert got == lines
    nb = [len(json.loads(x)["text"].encode()) for x in lines]
    assert table.column("n_bytes").to_pylist() == nb
    assert table.column("row").to_pylist() == list(range(len(lines)))


def test_detect_formats():
    assert formats.detect("a/b.jsonl.zst") == ("jsonl", "zstd")
    assert formats.detect("a/b.jsonl.gz") == ("jsonl", "gzip")
    assert formats.detect("a/b.JSONL") == ("jsonl", "none")
    assert formats.detect("x.parquet") == ("parquet", "none")
    assert formats.detect("shard-0001.tar") == ("webdataset", "none")
    with pytest.raises(ValueError):
        formats.detect("notes.txt")


def test_jsonl_plain_offsets_blank_lines_and_no_trailing_newline(tmp_path):
    lines = _lines(20)
    raw = ("\n".join(lines[:10]) + "\n\n  \n" + "\n".join(lines[10:])).encode()  # no final newline
    p = tmp_path / "a.jsonl"
    p.write_bytes(raw)
    res = scan_file(ScanTask(str(p), "jsonl", "none", "text", {"lang": "lang", "score": "meta.score",
                                                                  "set": "meta.set", "nope": "meta.nope"}))
    assert res["error"] is None
    t = res["table"]
    _check_offsets(raw, t, lines)
    assert t.column("lang").to_pylist()[:2] == ["en", "de"]
    assert t.column("score").to_pylist()[3] == pytest.approx(0.3)
    assert t.column("set").to_pylist()[:4] == ["s0", "s1", "s2", "s0"]
    assert t.column("nope").null_count == 20
    assert t.column("n_tokens").null_count == 20


def test_jsonl_zst_multiframe_and_small_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr(compressed, "BLOCK_BYTES", 300)
    monkeypatch.setattr(compressed, "READ_BYTES", 64)
    lines = _lines(50)
    raw = ("\n".join(lines) + "\n").encode()
    c = zstandard.ZstdCompressor()
    p = tmp_path / "a.jsonl.zst"
    p.write_bytes(c.compress(raw[:1000]) + c.compress(raw[1000:]))  # two frames
    res = scan_file(ScanTask(str(p), "jsonl", "zstd", "text", {"set": "meta.set"}))
    assert res["error"] is None
    _check_offsets(raw, res["table"], lines)
    assert res["raw_bytes"] == len(raw)


def test_jsonl_gz_multimember(tmp_path):
    lines = _lines(30)
    raw = ("\n".join(lines) + "\n").encode()
    p = tmp_path / "a.jsonl.gz"
    p.write_bytes(gzip.compress(raw[:500]) + gzip.compress(raw[500:]))
    res = scan_file(ScanTask(str(p), "jsonl", "gzip", "text", {}, auto=True))
    assert res["error"] is None
    _check_offsets(raw, res["table"], lines)
    assert "lang" in res["table"].column_names and "meta" not in res["table"].column_names


@pytest.mark.parametrize("comp", ["zstd", "gzip"])
def test_truncated_compressed_file_is_an_error(tmp_path, comp):
    raw = ("\n".join(_lines(2000)) + "\n").encode()
    blob = zstandard.ZstdCompressor().compress(raw) if comp == "zstd" else gzip.compress(raw)
    p = tmp_path / ("a.jsonl.zst" if comp == "zstd" else "a.jsonl.gz")
    p.write_bytes(blob[: len(blob) * 2 // 3])
    res = scan_file(ScanTask(str(p), "jsonl", comp, "text", {}))
    assert res["error"] is not None and "truncated" in res["error"]["message"]


def test_malformed_line_number_and_skip(tmp_path):
    lines = _lines(6)
    lines[3] = '{"text": "broken", '
    p = tmp_path / "a.jsonl"
    p.write_text("\n".join(lines) + "\n")
    res = scan_file(ScanTask(str(p), "jsonl", "none", "text", {}))
    assert res["error"]["line"] == 4 and "malformed" in res["error"]["message"]
    res = scan_file(ScanTask(str(p), "jsonl", "none", "text", {"lang": "lang"}, on_error="skip"))
    assert res["error"] is None and res["skipped"] == 1 and res["skipped_lines"] == [4]
    raw = p.read_bytes()
    _check_offsets(raw, res["table"], lines[:3] + lines[4:])


def test_missing_text_field_and_type_change(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_text('{"text": "a"}\n{"body": "b"}\n')
    res = scan_file(ScanTask(str(p), "jsonl", "none", "text", {}))
    assert res["error"]["line"] == 2
    p.write_text('{"text": "a", "q": 1}\n{"text": "b", "q": "high"}\n')
    res = scan_file(ScanTask(str(p), "jsonl", "none", "text", {"q": "q"}))
    assert "mixed value types" in res["error"]["message"]


def test_parquet_row_groups_tokens_and_auto_columns(tmp_path):
    n = 25
    t = pa.table({"text": [f"t{i}" * (i + 1) for i in range(n)], "ids": [list(range(i % 5)) for i in range(n)],
                  "lang": pa.array(["en", "fr"] * 12 + ["en"]).dictionary_encode(), "score": np.arange(n) / n,
                  "meta": [{"a": i} for i in range(n)], "source": ["x"] * n})
    p = tmp_path / "a.parquet"
    pq.write_table(t, p, row_group_size=10)
    res = scan_file(ScanTask(str(p), "parquet", "none", "text", {}, auto=True, tokens="ids"))
    assert res["error"] is None
    out = res["table"]
    assert out.column("loc_offset").to_pylist() == [i // 10 for i in range(n)]
    assert out.column("loc_length").to_pylist() == [i % 10 for i in range(n)]
    assert out.column("n_tokens").to_pylist() == [i % 5 for i in range(n)]
    assert out.column("n_bytes").to_pylist() == [len(f"t{i}" * (i + 1)) for i in range(n)]
    assert {"lang", "score", "source"} <= set(out.column_names) and "meta" not in out.column_names
    res = scan_file(ScanTask(str(p), "parquet", "none", "text", {"a": "meta.a"}))
    assert res["table"].column("a").to_pylist() == list(range(n))


def _write_tar(path, samples, text_ext="txt"):
    with tarfile.open(path, "w") as tf:
        for key, text, meta in samples:
            for ext, data in ((text_ext, text.encode() if text is not None else None),
                              ("json", json.dumps(meta).encode() if meta is not None else None)):
                if data is None:
                    continue
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))


def test_webdataset_offsets_and_properties(tmp_path):
    samples = [(f"shard/{i:04d}", f"text number {i} ü", {"lang": ["en", "de"][i % 2], "q": {"s": i}})
               for i in range(7)]
    p = tmp_path / "s.tar"
    _write_tar(p, samples)
    res = scan_file(ScanTask(str(p), "webdataset", "none", "txt", {"lang": "lang", "s": "q.s"}))
    assert res["error"] is None
    t = res["table"]
    raw = p.read_bytes()
    texts = [raw[o:o + n].decode() for o, n in zip(t.column("loc_offset").to_pylist(),
                                                   t.column("loc_length").to_pylist())]
    assert texts == [s[1] for s in samples]
    assert t.column("s").to_pylist() == list(range(7))
    assert t.column("n_bytes").to_pylist() == [len(s[1].encode()) for s in samples]


def test_webdataset_missing_text_member(tmp_path):
    p = tmp_path / "s.tar"
    _write_tar(p, [("a", "x", {"k": 1}), ("b", None, {"k": 2}), ("c", "z", None)])
    res = scan_file(ScanTask(str(p), "webdataset", "none", "txt", {"k": "k"}))
    assert "no .txt member" in res["error"]["message"]
    res = scan_file(ScanTask(str(p), "webdataset", "none", "txt", {"k": "k"}, on_error="skip"))
    assert res["skipped"] == 1 and res["table"].column("k").to_pylist() == [1, None]


def test_fingerprint_changes_with_content(tmp_path):
    p = tmp_path / "f.bin"
    p.write_bytes(b"a" * 200_000)
    f1 = formats.fingerprint(str(p))
    p.write_bytes(b"a" * 199_999 + b"b")
    assert formats.fingerprint(str(p)) != f1


def test_type_change_after_pruned_prefix_falls_back(tmp_path):
    """The first MiB fixes a pruned schema; a later type change re-parses correctly."""
    n = 30_000
    recs = [{"text": f"t{i}", "q": i, "pad": "x" * 20} for i in range(n)]
    recs[-1]["q"] = 2.5
    p = tmp_path / "a.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    assert p.stat().st_size > (1 << 20)
    res = scan_file(ScanTask(str(p), "jsonl", "none", "text", {"q": "q"}))
    assert res["error"] is None
    q = res["table"].column("q").to_pylist()
    assert q[:3] == [0, 1, 2] and q[-1] == 2.5 and len(q) == n
    recs[-1]["q"] = "high"
    p.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    res = scan_file(ScanTask(str(p), "jsonl", "none", "text", {"q": "q"}))
    assert "mixed value types" in res["error"]["message"]
    res = scan_file(ScanTask(str(p), "jsonl", "none", "text", {"q": "q"}, types={"q": "VARCHAR"}))
    assert res["error"] is None and res["table"].column("q").to_pylist()[-2:] == ["29998", "high"]


# ----------------------------------------------------------------------------- DuckDB fast path

_ESCAPY = ['line\nbreak "quoted" tab\t back\\slash', "café — naïve 中文 😀", "\u0001ctl \u007f del \u00e9",
           "[looks like a list]", "{looks like an object}", "12", "", "x" * 5000]


@pytest.mark.parametrize("ensure_ascii", [True, False])
def test_fast_path_n_bytes_exact_with_escapes(tmp_path, ensure_ascii):
    """n_bytes = UTF-8 length of the decoded text, whether non-ASCII is raw or \\uXXXX (incl. pairs)."""
    recs = [{"text": t, "meta": {"set": f"s{i % 3}", "q": i, "w": i / 4, "ok": i % 2 == 0}}
            for i, t in enumerate(_ESCAPY * 3)]
    raw = ("\n".join(json.dumps(r, ensure_ascii=ensure_ascii) for r in recs) + "\n").encode()
    p = tmp_path / "a.jsonl.zst"
    p.write_bytes(zstandard.ZstdCompressor().compress(raw))
    task = ScanTask(str(p), "jsonl", "zstd", "text", {"set": "meta.set", "q": "meta.q", "w": "meta.w",
                                                       "ok": "meta.ok", "nope": "meta.nope"})
    sc = JsonlScanner(task)
    t = sc.scan()
    assert sc.fast_fails == 0 and sc.fast_sql is not None  # the fast path did the work
    assert t.column("n_bytes").to_pylist() == [len(r["text"].encode()) for r in recs]
    assert t.column("set").to_pylist() == [r["meta"]["set"] for r in recs]
    assert t.column("q").to_pylist() == [r["meta"]["q"] for r in recs]
    assert t.column("w").to_pylist() == [r["meta"]["w"] for r in recs]
    assert t.column("ok").to_pylist() == [r["meta"]["ok"] for r in recs]
    assert t.column("nope").null_count == len(recs)
    assert t.schema.field("q").type == pa.int64() and t.schema.field("ok").type == pa.bool_()


@pytest.mark.parametrize("bad, message", [
    ('{"text": 12345}', "not a string"),
    ('{"text": ["a", "b"]}', "not a string"),
    ('{"text": true}', "not a string"),
    ('{"text": "a", "meta": {"set": 7}}', "mixed value types"),
    ('{"text": "a", "meta": {"set": "s", "q": 1.5}}', None),          # int -> double: falls back, no error
    ('{"text": "a", "meta": {"set": "s", "q": "high"}}', "mixed value types"),
    ('{"text": "a" "b"}', "malformed"),
    ('{"body": "no text"}', "missing"),
])
def test_fast_path_falls_back_exactly_after_a_clean_prefix(tmp_path, bad, message):
    """A block the fast path cannot take whole is redone by the exact path (same errors, same lines)."""
    good = [json.dumps({"text": f"doc {i} " * 40, "meta": {"set": f"s{i % 3}", "q": i}}) for i in range(3000)]
    p = tmp_path / "a.jsonl"
    p.write_text("\n".join(good + [bad]) + "\n")
    assert p.stat().st_size > (1 << 20)
    res = scan_file(ScanTask(str(p), "jsonl", "none", "text", {"set": "meta.set", "q": "meta.q"}))
    if message is None:
        assert res["error"] is None and res["table"].column("q").to_pylist()[-1] == 1.5
    else:
        assert message in res["error"]["message"] and (res["error"]["line"] in (3001, None))
        res = scan_file(ScanTask(str(p), "jsonl", "none", "text", {"set": "meta.set", "q": "meta.q"},
                                 on_error="skip", types={"set": "VARCHAR", "q": "VARCHAR"}))
        assert res["error"] is None and res["table"].num_rows >= 3000


def test_long_lines_offsets(tmp_path):
    """Lines of several KiB take the bytes.find newline scan; blank lines and no final newline too."""
    lines = [json.dumps({"text": ("ab\u00e9 " * (500 + 37 * i)) + "\n" * (i % 3), "k": i}) for i in range(300)]
    raw = ("\n".join(lines[:150]) + "\n\n \r\n" + "\n".join(lines[150:])).encode()
    assert len(raw) > (2 << 20)
    p = tmp_path / "a.jsonl.zst"
    p.write_bytes(zstandard.ZstdCompressor().compress(raw))
    res = scan_file(ScanTask(str(p), "jsonl", "zstd", "text", {"k": "k"}))
    assert res["error"] is None and res["raw_bytes"] == len(raw)
    _check_offsets(raw, res["table"], lines)
    assert res["table"].column("k").to_pylist() == list(range(300))


def test_fast_path_in_threads_matches_sequential(tmp_path):
    from concurrent.futures import ThreadPoolExecutor
    paths = []
    for k in range(4):
        lines = _lines(400, start=k * 400)
        p = tmp_path / f"{k}.jsonl.zst"
        p.write_bytes(zstandard.ZstdCompressor().compress(("\n".join(lines) + "\n").encode()))
        paths.append(str(p))
    tasks = [ScanTask(p, "jsonl", "zstd", "text", {"set": "meta.set", "score": "meta.score"}) for p in paths]
    seq = [scan_file(t)["table"] for t in tasks]
    with ThreadPoolExecutor(4) as ex:
        par = [r["table"] for r in ex.map(scan_file, tasks * 3)]
    assert all(a.equals(b) for a, b in zip(seq * 3, par))
