"""README's Performance section quotes only what the bench/RESULTS.md run it cites recorded."""
from __future__ import annotations

from pathlib import Path

import pytest

from bench import readme, results

ROOT = Path(__file__).resolve().parent.parent


def test_every_performance_number_is_in_the_cited_run():
    run, missing = readme.stray_numbers((ROOT / "README.md").read_text())
    assert not missing, f"README's Performance section has numbers that run {run} in bench/RESULTS.md lacks: {missing}"


def _fixture(tmp_path, quoted: str):
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "RESULTS.md"
    results.append("compare", "python -m bench all --quick  [compare]", path=path, run="2030-01-02T03:04Z",
                   figures={"systems": {"mixsql": {"cpu_tok_s_w1": "317,616 (290,001..340,222)"}}})
    results.append("compare", "python -m bench compare", path=path, run="2030-01-03T00:00Z",
                   figures={"systems": {"mixsql": {"cpu_tok_s_w1": "999,999 (1..2)"}}})
    text = f"# x\n\n## Performance\n\nRun `2030-01-02T03:04Z` of it: {quoted} tokens/s.\n\n## Layout\n\n42\n"
    return text, path


def test_numbers_are_checked_against_the_cited_run_only(tmp_path):
    text, path = _fixture(tmp_path, "317616 (290,001..340,222)")
    assert readme.stray_numbers(text, path) == ("2030-01-02T03:04Z", [])
    text, path = _fixture(tmp_path / "b", "999,999")   # recorded, but by another run
    assert readme.stray_numbers(text, path)[1] == ["999,999"]


def test_a_section_without_a_cited_run_is_refused(tmp_path):
    text, path = _fixture(tmp_path, "1")
    with pytest.raises(ValueError, match="cites no run"):
        readme.stray_numbers(text.replace("Run `2030-01-02T03:04Z`", "Run"), path)
    with pytest.raises(ValueError, match="not in"):
        readme.stray_numbers(text.replace("2030-01-02T03:04Z", "2031-01-01T00:00Z"), path)


def test_generated_section_parses_back_the_figures(tmp_path):
    path = tmp_path / "RESULTS.md"
    results.append("registration", "python -m bench all --quick  [registration]", path=path, run="R1",
                   figures={"mixtera_shape_x_quoted_mixtera": "1.47 (1.4..1.5)", "target_met": False,
                            "jsonl_zst_index_bytes_per_sample": 8.93, "index_target_met": True})
    results.append("compare", "python -m bench all --quick  [compare]", path=path, run="R1",
                   figures={"reps": 5, "systems": {"mixsql": {"cpu_tok_s_w1": "3 (2..4)"}},
                            "vs_best_peer": {"cpu_tok_s_w1": {"best_peer": "litdata", "best_peer_value": "6 (5..7)",
                                                              "mixsql_over_best_peer": "0.50x", "mixsql_ahead": False}}})
    body = readme.render("R1", path)
    assert "| registration rate over Mixtera's | 1.47 (1.4..1.5)" in body and "| **no** |" in body
    assert "| 3 (2..4) | — | 6 (5..7) (LitData) | 0.50x **behind** |" in body
    assert "Targets not met in this run:** registration rate over Mixtera's" in body


def test_the_scale_run_is_rendered_and_its_numbers_are_checked_against_it(tmp_path):
    path = tmp_path / "RESULTS.md"
    results.append("compare", "python -m bench all --quick  [compare]", path=path, run="R1",
                   figures={"systems": {"mixsql": {"cpu_tok_s_w1": "3 (2..4)"}}})
    results.append("scale", "python -m bench scale", path=path, run="S1",
                   figures={"catalog_samples": 1000, "selected_samples": 640, "chunk_1e7_fresh_engine_ms": "12.5 (11..14)",
                            "chunk_1e7_target_met": False, "pss_per_worker_mb_median": 150.5,
                            "ram_bytes_per_sample_after_an_epoch_upper_bound": 3.5, "ram_target_met": True,
                            "target_pss_per_worker_mb": 200, "chunk_k_direct_ms": {"k=10,000,000": "1.5 (1..2)"}})
    body = readme.render("R1", path)
    assert "Run `S1`" in body and "| chunk 10,000,000 computed directly, fresh engine (ms) | 12.5 (11..14) | < 10 | **no** |" in body
    assert "| PSS per worker (MB) | 150.5 | < 200 | yes |" in body and "| 3.5 | < 4 | yes |" in body
    assert "**Scale targets not met:** chunk 10,000,000 computed directly" in body
    text = f"# x\n\n## Performance\n\n{body}\n\n## Layout\n"
    assert readme.stray_numbers(text, path) == ("R1", [])
    assert readme.stray_numbers(text.replace("150.5", "151.5"), path)[1] == ["151.5"]


def test_a_run_without_a_comparison_quotes_the_last_one_and_its_read_path_targets(tmp_path):
    path = tmp_path / "RESULTS.md"
    results.append("compare", "python -m bench all --quick  [compare]", path=path, run="Q1",
                   figures={"reps": 5, "systems": {"mixsql": {"cpu_tok_s_w1": "3 (2..4)"}}})
    results.append("storage", "python -m bench all  [storage]", path=path, run="F1",
                   figures={"corpus_mb": 500, "local_warm_vs_sequential": 1.16, "local_cold_vs_sequential": 0.58,
                            "first_sample_s": {"local_cold": {"median": 0.231}}, "s3_warm_vs_local": 1.08,
                            "torch": {"worker_peak_rss_mb": 400.4},
                            "targets": {"stream_vs_sequential": 0.7, "first_sample_s": 0.2, "worker_rss_mb": 512,
                                        "s3_warm_vs_local": 0.9}})
    body = readme.render("F1", path)
    assert "Run `F1`" in body and "from Run `Q1` of `python -m bench all --quick`" in body and "| 3 (2..4) |" in body
    assert "| 1.16 | >= 0.7 | yes |" in body and "| 0.58 | >= 0.7 | **no** |" in body
    assert "| 0.231 | < 0.2 | **no** |" in body and "| 400.4 | < 512 | yes |" in body
    assert "**Read-path targets not met in this run:** the same, cold node cache" in body
    text = f"# x\n\n## Performance\n\n{body}\n\n## Layout\n"
    assert readme.stray_numbers(text, path) == ("F1", [])
