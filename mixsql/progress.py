"""Progress of long operations on the terminal: running statements and registration scans.

:class:`StatusLine` is one line of status: redrawn in place on a terminal, and printed as a new
line every few seconds when the stream is a pipe or a file (a log gets a heartbeat, never a
redraw). :class:`QueryProgress` polls a running statement (elapsed time, DuckDB's
``query_progress()``) from a thread; :class:`ScanProgress` reports a registration scan by bytes,
including the bytes already read of the files being scanned (their read positions, as ``pv -d``
finds them under ``/proc``; on systems without ``/proc`` files count when they finish).
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
from typing import IO, Any, Callable, TypeVar

T = TypeVar("T")

PIPE_EVERY_S = 5.0   # one status line this often when the stream is not a terminal


def human_bytes(n: float) -> str:
    """``1.2 GB``-style size (decimal units, like ``ls -h --si`` and download tools)."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"  # pragma: no cover


def clock(seconds: float) -> str:
    """``0:07`` / ``1:02:03``."""
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class StatusLine:
    """One status line on ``stream``: redrawn in place on a terminal; on a pipe, a new line at
    most every ``every`` seconds (the first after ``every`` seconds: quick jobs print nothing)."""

    def __init__(self, stream: IO[str] | None = None, tty: bool | None = None, every: float = PIPE_EVERY_S):
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.every = every
        self._last = time.monotonic()
        self._shown = False
        self._lock = threading.Lock()

    def show(self, text: str) -> None:
        with self._lock:
            try:
                if self.tty:
                    self.stream.write("\r" + text + "\x1b[K")
                    self._shown = True
                elif time.monotonic() - self._last >= self.every:
                    self.stream.write(text + "\n")
                    self._last = time.monotonic()
                else:
                    return
                self.stream.flush()
            except (OSError, ValueError):   # closed or broken stream: progress is optional
                pass

    def clear(self) -> None:
        with self._lock:
            if self._shown:
                try:
                    self.stream.write("\r\x1b[K")
                    self.stream.flush()
                except (OSError, ValueError):
                    pass
                self._shown = False


class Interrupted(KeyboardInterrupt):
    """Ctrl-C cancelled the work; ``stopped``: whether it stopped within the grace period."""

    def __init__(self, stopped: bool):
        super().__init__()
        self.stopped = stopped


def run_interruptibly(work: Callable[[], T], cancel: Callable[[], None], grace_s: float = 5.0,
                      busy: threading.Event | None = None) -> T:
    """Run ``work()`` on a thread while the calling thread waits, so Ctrl-C arrives even while
    ``work`` sits in C code (DuckDB). On Ctrl-C, ``cancel()`` is repeated (an interrupt landing
    before the query starts is lost) until ``work`` stops or ``grace_s`` passes, then
    :class:`Interrupted` is raised. ``busy`` is set while ``work`` runs."""
    box: dict[str, Any] = {}
    # an Event, not Thread.join(): a join interrupted by Ctrl-C can leave is_alive() False while
    # the thread still runs (CPython 3.11)
    done = threading.Event()

    def run() -> None:
        try:
            box["value"] = work()
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            box["error"] = exc
        finally:
            done.set()

    worker = threading.Thread(target=run, name="mixsql-statement", daemon=True)
    # Ctrl-C must reach the wait whatever handler is installed (an event loop's left behind, or
    # SIG_IGN inherited from a launcher): the default one for the work's duration.
    own_sigint = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.default_int_handler) if own_sigint else None
    try:
        worker.start()
        if busy is not None:
            busy.set()
        while not done.wait(0.05):
            pass
    except KeyboardInterrupt:
        deadline = time.monotonic() + grace_s
        while not done.is_set() and time.monotonic() < deadline:
            cancel()
            done.wait(0.1)
        raise Interrupted(done.is_set()) from None
    finally:
        if busy is not None:
            busy.clear()
        if own_sigint:
            signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)
    if "error" in box:
        raise box["error"]
    return box["value"]


class _Ticker:
    """Calls ``draw()`` every ``interval`` seconds on a daemon thread until stopped."""

    def __init__(self, draw, interval: float, name: str):
        self._draw = draw
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._draw()
            except Exception:  # noqa: BLE001 - a progress hiccup must never break the job
                pass

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)


def track_progress(cursor: Any) -> Any:
    """Ask DuckDB to track the progress of ``cursor``'s queries (it prints nothing itself);
    returns the cursor."""
    try:
        cursor.execute("SET enable_progress_bar = true")
        cursor.execute("SET enable_progress_bar_print = false")
    except Exception:  # noqa: BLE001 - progress is optional
        pass
    return cursor


class QueryProgress:
    """While a statement runs (``with QueryProgress(cursor, status): ...``): after ``after``
    seconds, a status line with the elapsed time and DuckDB's progress when it knows it.
    Registration statements show :class:`ScanProgress` instead."""

    SELF_REPORTING = ("create_source", "refresh_source")

    def __init__(self, cursor: Any, status: StatusLine | None, after: float = 0.5, interval: float = 0.25):
        self.cursor = cursor
        self.status = status
        self.after = after
        self.t0 = time.monotonic()
        self._ticker = _Ticker(self._draw, interval, "mixsql-progress")

    def text(self) -> str:
        bits = [f"running {time.monotonic() - self.t0:.1f} s"]
        pct = self.cursor.query_progress() if hasattr(self.cursor, "query_progress") else None
        if pct is not None:
            bits.append(f"{pct:.0f}%")
        return " · ".join(bits) + " · Ctrl-C cancels"

    def _draw(self) -> None:
        if time.monotonic() - self.t0 >= self.after and \
                getattr(self.cursor, "statement_kind", None) not in self.SELF_REPORTING:
            self.status.show(self.text())

    def __enter__(self) -> "QueryProgress":
        self.t0 = time.monotonic()
        if self.status is not None:
            self._ticker.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.status is not None:
            self._ticker.stop()
            self.status.clear()


# ----------------------------------------------------------------------------- registration

def _descendants(pid: int) -> list[int]:
    """``pid`` and its child processes, recursively (scan pools fork or use a fork server)."""
    parents: dict[int, list[int]] = {}
    try:
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                try:
                    with open(f"/proc/{entry.name}/stat", "rb") as fh:
                        stat = fh.read()
                    ppid = int(stat[stat.rindex(b")") + 2:].split()[1])
                except (OSError, ValueError, IndexError):
                    continue
                parents.setdefault(ppid, []).append(int(entry.name))
    except OSError:
        return [pid]
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(parents.get(p, ()))
    return out


def read_positions(paths: set[str]) -> dict[str, int]:
    """Read offsets of ``paths`` open in this process or its children (empty without /proc)."""
    found: dict[str, int] = {}
    if not os.path.isdir("/proc/self/fd"):
        return found
    for pid in _descendants(os.getpid()):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target not in paths:
                    continue
                with open(f"/proc/{pid}/fdinfo/{fd}") as fh:
                    pos = int(fh.readline().split()[1])
            except (OSError, ValueError, IndexError):
                continue
            found[target] = max(found.get(target, 0), pos)
    return found


class ScanProgress:
    """Progress of a registration scan by bytes of the data files: ``label: 1.2 GB / 3.4 GB
    (35%) · 1/3 files · 120,000 samples · 45.6 MB/s · 0:27``. ``update(result)`` once a file is
    done; a thread adds the bytes read so far of the files being scanned."""

    def __init__(self, enabled: bool, paths: list[str], label: str, stream: IO[str] | None = None,
                 interval: float | None = None, every: float = PIPE_EVERY_S, sizes: list[int] | None = None):
        self.enabled = enabled
        self.label = label
        self.sizes = {}
        for i, p in enumerate(paths):
            key = p if "://" in p else os.path.realpath(p)   # object-store URLs are kept as they are
            try:
                self.sizes[key] = sizes[i] if sizes is not None else os.path.getsize(p)
            except (OSError, IndexError):
                self.sizes[key] = 0
        self.total = sum(self.sizes.values())
        self.done: set[str] = set()
        self.done_bytes = 0
        self._reading: dict[str, int] = {}   # furthest read offset seen per unfinished file
        self.samples = 0
        self.raw = 0
        self.t0 = time.monotonic()
        self.status = StatusLine(stream, every=every) if enabled else None
        self._ticker = None
        if enabled:
            self._ticker = _Ticker(self._draw, interval or (0.5 if self.status.tty else 1.0), "mixsql-scan-progress")
            self._ticker.start()

    def update(self, res: dict) -> None:
        t = res.get("table")
        self.samples += t.num_rows if t is not None else 0
        self.raw += res.get("raw_bytes", 0)
        path = res.get("path", "")
        path = path if "://" in path else os.path.realpath(path)
        if path in self.sizes and path not in self.done:
            self.done.add(path)
            self.done_bytes += self.sizes[path]

    def text(self) -> str:
        pending = {p for p in self.sizes if p not in self.done}
        for p, pos in (read_positions(pending) if pending else {}).items():   # a file may be opened again:
            self._reading[p] = max(self._reading.get(p, 0), min(pos, self.sizes[p]))   # never go back
        seen = self.done_bytes + sum(self._reading.get(p, 0) for p in pending)
        dt = max(time.monotonic() - self.t0, 1e-9)
        pct = 100.0 * seen / self.total if self.total else 100.0
        return (f"{self.label}: {human_bytes(seen)} / {human_bytes(self.total)} ({pct:.0f}%) · "
                f"{len(self.done)}/{len(self.sizes)} files · {self.samples:,} samples · "
                f"{seen / dt / 1e6:.1f} MB/s · {clock(dt)}")

    def _draw(self) -> None:
        self.status.show(self.text())

    def close(self) -> None:
        if self._ticker is not None:
            self._ticker.stop()
            if self.status.tty:
                self.status.show(self.text())
                self.status.stream.write("\n")
                self.status.stream.flush()
