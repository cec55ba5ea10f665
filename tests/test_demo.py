"""The quickstart job (``mixsql demo``) end to end on a fresh catalog, twice (the re-run refreshes)."""
import io

from rich.console import Console

from mixsql.cli import main
from mixsql.demo import run_demo


def test_demo_streams_the_mixture_exactly(tmp_path):
    console = Console(file=io.StringIO(), width=120)
    out = run_demo(tmp_path / "cat", seq_len=64, batch_size=4, console=console)
    assert out["samples"] == 48 * 64
    for group, target in out["targets"].items():
        assert abs(out["shares"][group] * out["samples"] - target * out["samples"]) < 1
    assert out["batches"] > 0 and out["tokens"] > 0
    again = run_demo(tmp_path / "cat", seq_len=64, batch_size=4, console=console)
    assert again == out  # same statement, same catalog: the same stream
    assert "refreshed" in console.file.getvalue()


def test_demo_command_exit_code(tmp_path, capsys):
    assert main(["demo", "--catalog", str(tmp_path / "c"), "--seq-len", "32"]) == 0
    assert "packed batches" in capsys.readouterr().out
