"""Progress lines: registration by bytes (also mid-file, also on a pipe) and running statements."""
from __future__ import annotations

import io
import time

from mixsql.progress import QueryProgress, ScanProgress, StatusLine, human_bytes, read_positions


def test_scan_progress_counts_bytes_read_of_open_files_and_prints_lines_on_a_pipe(tmp_path):
    big, small = tmp_path / "big.jsonl", tmp_path / "small.jsonl"
    big.write_bytes(b"x" * 10_000)
    small.write_bytes(b"y" * 2_000)
    out = io.StringIO()
    with open(big, "rb", buffering=0) as fh:
        fh.read(2_500)                                   # a scan a quarter into the big file
        assert read_positions({str(big)}) == {str(big): 2_500}
        t0 = time.monotonic()
        bar = ScanProgress(True, [str(big), str(small)], "registering web", stream=out, interval=0.05, every=0.1)
        try:
            assert "2.5 KB / 12.0 KB (21%)" in bar.text() and "0/2 files" in bar.text()
            bar.update({"path": str(small), "table": None, "raw_bytes": 2_000})
            assert "4.5 KB / 12.0 KB (38%)" in bar.text() and "1/2 files" in bar.text()
            time.sleep(0.5)
        finally:
            bar.close()
        elapsed = time.monotonic() - t0
    lines = out.getvalue().splitlines()
    assert lines and all(line.startswith("registering web: ") for line in lines)
    # whole lines, at most one per `every` (0.1 s) of the time the bar was open
    assert "\r" not in out.getvalue() and len(lines) <= int(elapsed / 0.1) + 1


def test_status_line_redraws_on_a_terminal_and_throttles_on_a_pipe():
    tty = io.StringIO()
    line = StatusLine(tty, tty=True)
    line.show("a")
    line.show("b")
    line.clear()
    assert tty.getvalue() == "\ra\x1b[K\rb\x1b[K\r\x1b[K"
    pipe = io.StringIO()
    line = StatusLine(pipe, tty=False, every=60)
    line.show("too soon")
    assert pipe.getvalue() == ""


def test_query_progress_shows_elapsed_and_duckdb_percent():
    class Cursor:
        def query_progress(self):
            return 42.0

    out = io.StringIO()
    with QueryProgress(Cursor(), StatusLine(out, tty=True), after=0.0, interval=0.02):
        time.sleep(0.3)
    assert "running 0." in out.getvalue() and "42%" in out.getvalue() and out.getvalue().endswith("\r\x1b[K")
    assert human_bytes(1_234_567) == "1.2 MB" and human_bytes(999) == "999 B"
