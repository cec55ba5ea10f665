"""The ``mixsql`` command line: REPL, ``sql``, ``explain``, ``register``, ``sources``, ``ledger``,
``serve``, ``ping``, ``demo``.

Exit codes: 0 success, 1 user error (one paragraph on stderr, no traceback; set
``MIXSQL_DEBUG=1`` for the traceback), 2 usage error (argparse).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
import warnings
from collections.abc import Iterator, Sequence
from typing import IO

from .catalog import DEFAULT_CATALOG
from .errors import Error, ExhaustedWarning, TokenizerMismatchWarning

FORMATS = ("table", "csv", "json", "markdown")

EPILOG = """\
examples:
  mixsql                                         open the interactive shell
  mixsql register web 'data/web/*.jsonl.zst' --map language=meta.lang --map quality=meta.score::DOUBLE
  mixsql register pile '/data/pile/**/*.jsonl.zst' --preset pile --on-error skip
  mixsql sources
  mixsql sql "SELECT source, count(*) FROM samples GROUP BY ALL"
  mixsql sql -f query.sql --format csv > out.csv
  echo "SELECT * FROM samples LIMIT 5" | mixsql sql --format json
  mixsql sql "SELECT * FROM samples MIX BY language WITH (en 0.8, OTHER 0.2)" --limit 20
  mixsql explain "SELECT * FROM samples MIX BY source WITH NATURAL LIMIT 1e9 TOKENS"
  mixsql ledger ckpt.pt --step 48213                  the samples a training step consumed
  mixsql ledger ckpt.pt --file /data/a.jsonl --row 7   the steps that consume a sample
  mixsql serve --catalog ./mixsql_catalog --host 127.0.0.1 --port 8815
  mixsql ping grpc://127.0.0.1:8815

The catalog defaults to $MIXSQL_CATALOG or ./mixsql_catalog.
"""


class UserError(Exception):
    """A problem the user can fix; printed as one paragraph, exit code 1."""


def _default_catalog() -> str:
    return os.environ.get("MIXSQL_CATALOG") or DEFAULT_CATALOG


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--catalog", metavar="DIR", default=argparse.SUPPRESS,
                        help="catalog directory (default: $MIXSQL_CATALOG or ./mixsql_catalog)")

    p = argparse.ArgumentParser(
        prog="mixsql", parents=[common],
        description="mixsql: register training data, explore it with SQL, and declare the mixture "
                    "to train on as one SQL statement. With no command, opens the interactive shell.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from . import __version__

    p.add_argument("--version", action="version", version=f"mixsql {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, help: str, epilog: str | None = None) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], help=help, description=help, epilog=epilog,
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    add("repl", "open the interactive shell (the default)")

    s = add("sql", "run SQL statements (plain DuckDB SQL, MIX, EXPLAIN MIX, CREATE SOURCE ...)",
            epilog='examples:\n  mixsql sql "SELECT count(*) FROM samples"\n'
                   "  mixsql sql -f mixture.sql --limit 100 --format csv\n"
                   "  cat script.sql | mixsql sql\n")
    s.add_argument("statement", nargs="?", help="SQL text (several statements separated by ';'); "
                                                "omit to read -f FILE or standard input")
    s.add_argument("-f", "--file", metavar="FILE", help="read the SQL from FILE ('-' = stdin)")
    s.add_argument("--format", choices=FORMATS, default="table", help="output format (default table)")
    s.add_argument("--limit", type=int, metavar="N",
                   help="print at most N rows of each result (needed for unbounded MIX streams in table format)")

    e = add("explain", "show the EXPLAIN MIX forecast of a MIX statement",
            epilog='example:\n  mixsql explain "SELECT * FROM samples MIX BY source WITH NATURAL LIMIT 1e6 SAMPLES"\n')
    e.add_argument("statement", nargs="?", help="the MIX statement (EXPLAIN MIX is added); or -f / stdin")
    e.add_argument("-f", "--file", metavar="FILE", help="read the statement from FILE")
    e.add_argument("--format", choices=FORMATS, default="table")

    r = add("register", "register a data collection as a source (refreshes it if it exists with the same "
                        "path; --replace replaces it)",
            epilog="examples:\n  mixsql register web 'data/*.jsonl.zst' --map language=meta.lang\n"
                   "  mixsql register slim '/data/slimpajama/**/*.jsonl.zst' --preset slimpajama\n"
                   "  mixsql register code data/code.parquet --format parquet --tokens input_ids\n"
                   "  mixsql register web '/shared/web/*.jsonl.zst' --ray auto\n")
    r.add_argument("name", help="source name (letters, digits, _)")
    r.add_argument("pattern", metavar="GLOB", help="file, directory or glob (** recursive)")
    r.add_argument("--format", dest="data_format", choices=("jsonl", "parquet", "webdataset"),
                   help="data format (default: detected from the file extensions)")
    r.add_argument("--map", action="append", default=[], metavar="PROP=PATH",
                   help="property mapping, e.g. language=meta.lang or quality=meta.score::DOUBLE (repeatable)")
    r.add_argument("--preset", help="slimpajama | pile | fineweb")
    r.add_argument("--text", help="text field / column / tar member extension (default text, txt)")
    r.add_argument("--tokens", help="parquet list<int> column of pre-tokenized ids")
    r.add_argument("--tokenizer", metavar="TOKENIZER_JSON", help="HF tokenizer.json to count n_tokens with")
    r.add_argument("--on-error", choices=("fail", "skip"), help="skip malformed records instead of failing")
    r.add_argument("--replace", action="store_true",
                   help="replace an existing source of this name (its files, options and samples)")
    r.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="scan the files as Ray tasks on a cluster: 'auto', host:port, or none for "
                        "RAY_ADDRESS / a new local cluster (needs mixsql[ray]; put it after GLOB)")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")

    add("sources", "list registered sources")

    lg = add("ledger", "which samples a training run consumed at a step, or at which steps it consumes a sample "
                       "(from one rank's loader state)",
             epilog="examples:\n  mixsql ledger ckpt.pt --step 48213\n"
                    "  mixsql ledger ckpt.json --step 100 --to 120 --format csv\n"
                    "  mixsql ledger ckpt.pt --file /data/web/07.jsonl --row 1234\n"
                    "  mixsql sql \"SELECT step, file, row FROM mix_ledger('ckpt.pt') WHERE file = 'a.jsonl' AND row = 7\"\n")
    lg.add_argument("checkpoint", metavar="CKPT", help="loader.state_dict() as JSON, or a torch.save'd checkpoint holding it")
    lg.add_argument("--step", type=int, help="the (first) step")
    lg.add_argument("--to", type=int, metavar="STEP", help="last step of a range (default: --step); with --file: "
                    "list the sample's steps up to this one")
    lg.add_argument("--file", metavar="PATH", help="a sample's file (the catalog's file column): every step, rank "
                    "and epoch that consumes it (with --row)")
    lg.add_argument("--row", type=int, help="the sample's row in --file")
    lg.add_argument("--rank", type=int, help="only this data-parallel rank")
    lg.add_argument("--format", choices=FORMATS, default="table", help="output format (default table)")

    g = add("ping", "check that a mixsql server answers at URL (address, token, TLS) within a few seconds",
            epilog="examples:\n  mixsql ping grpc://10.0.0.5:8815\n"
                   "  MIXSQL_TOKEN=... mixsql ping grpc+tls://trainer-0:8815 --tls-root-certs ca.pem\n")
    g.add_argument("url", metavar="URL", help="grpc://host:port or grpc+tls://host:port (host:port alone: grpc)")
    g.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS",
                   help="how long to keep trying (default 5)")
    g.add_argument("--token-file", metavar="PATH", help="file holding the token (default: $MIXSQL_TOKEN)")
    g.add_argument("--tls-root-certs", metavar="PEM", help="CA certificates to trust for grpc+tls")

    d = add("demo", "the quickstart job: write a small corpus, register it, run a MIX query, "
                    "stream packed batches")
    d.add_argument("--seq-len", type=int, default=256, help="tokens per packed sequence (default 256)")
    d.add_argument("--batch-size", type=int, default=8, help="sequences per batch (default 8)")

    v = add("serve", "serve the catalog to training ranks over Arrow Flight",
            epilog="example:\n  MIXSQL_TOKEN=... mixsql serve --catalog /data/catalog --host 0.0.0.0 --port 8815 "
                   "--tls-cert cert.pem --tls-key key.pem\n"
                   "  mixsql serve --catalog /data/catalog --host 0.0.0.0 --token-file tokens.txt "
                   "--tls-cert cert.pem --tls-key key.pem\n")
    v.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    v.add_argument("--port", type=int, default=8815, help="port (default 8815)")
    v.add_argument("--token-file", metavar="PATH",
                   help="file of tokens clients must present, one per line, each its own tenant "
                        "(default: the token in $MIXSQL_TOKEN)")
    v.add_argument("--token", default=None, help=argparse.SUPPRESS)
    v.add_argument("--tls-cert", metavar="PEM", help="TLS certificate chain")
    v.add_argument("--tls-key", metavar="PEM", help="TLS private key")
    v.add_argument("--insecure", action="store_true",
                   help="serve a non-loopback address without TLS or a token (trusted networks only)")
    v.add_argument("--query-timeout", type=float, metavar="SECONDS", help="DuckDB time per statement (default 30)")
    v.add_argument("--memory-limit", metavar="SIZE", help="DuckDB memory per statement (default 1GB)")
    v.add_argument("--max-statement-bytes", type=int, metavar="N",
                   help="longest client statement (default 16384; raise it for mixtures listing thousands of groups)")
    v.add_argument("--max-jobs", type=int, metavar="N", help="jobs per server (default 256)")
    v.add_argument("--max-jobs-per-token", type=int, metavar="N", help="jobs per token (default 32)")
    v.add_argument("--feedback-lag", type=int, metavar="STEPS",
                   help="feedback of step s changes the weights from the first chunk of step s + STEPS "
                        "(default 8)")
    return p


# ---------------------------------------------------------------------------------------------
# helpers


def _read_sql(args: argparse.Namespace, stdin: IO[str]) -> str:
    if args.statement and args.file:
        raise UserError("give the SQL either as an argument or with -f FILE, not both")
    if args.statement:
        return args.statement
    if args.file and args.file != "-":
        try:
            with open(args.file, encoding="utf-8") as fh:
                return fh.read()
        except OSError as exc:
            raise UserError(f"cannot read {args.file}: {exc.strerror or exc}") from exc
    if args.file == "-" or not stdin.isatty():
        return stdin.read()
    raise UserError("no SQL given: pass a statement, -f FILE, or pipe SQL on standard input")


def _connect(args: argparse.Namespace, read_only: bool = False, progress: bool = False):
    from .dbapi import connect

    return connect(args.catalog, read_only=read_only, progress=progress)


def _limited(cur, limit: int | None, batch: int = 1024) -> Iterator[tuple]:
    left = limit
    while left is None or left > 0:
        rows = cur.fetchmany(batch if left is None else min(batch, left))
        if not rows:
            return
        if left is not None:
            left -= len(rows)
        yield from rows


def _print_result(cur, fmt: str, limit: int | None, out: IO[str], elapsed_from: float,
                  title: str | None = None) -> None:
    from . import render

    desc = cur.description
    if desc is None:
        return
    if fmt in render.WRITERS:
        render.WRITERS[fmt](out, desc, _limited(cur, limit))
    else:
        from rich.console import Console

        if limit is None:
            if cur.unbounded:
                raise UserError(
                    "this MIX stream never ends (on_exhausted = 'repeat' with no budget and no max_epochs); "
                    "pass --limit N to print its first N rows, or add LIMIT n SAMPLES / SETTINGS (max_epochs = n)"
                )
            rows = cur.fetchall()
            more = False
        else:
            rows = list(_limited(cur, limit + 1))
            more = len(rows) > limit
            rows = rows[:limit]
        width = None if getattr(out, "isatty", lambda: False)() else 100_000  # files: natural width
        console = Console(file=out, highlight=False, soft_wrap=False, width=width)
        if cur.statement_kind == "explain_mix":
            render.print_explain(console, desc, rows)
            console.print(render.footer(len(rows), time.perf_counter() - elapsed_from, more), style="dim")
        else:
            render.print_table(console, desc, rows, elapsed=time.perf_counter() - elapsed_from, more=more,
                               title=title)
    out.flush()


def _run_sql(args: argparse.Namespace, text: str, out: IO[str], explain: bool = False) -> None:
    from .dbapi import split_statements

    statements = split_statements(text)
    if not statements:
        raise UserError("no SQL statement found in the input")
    if args.limit is not None and args.limit < 0:
        raise UserError("--limit must be a non-negative number of rows")
    from .progress import QueryProgress, StatusLine, run_interruptibly, track_progress

    con = _connect(args, progress=True)
    status = StatusLine(sys.stderr) if sys.stderr.isatty() else None
    try:
        cur = track_progress(con.cursor()) if status is not None else con.cursor()
        for stmt in statements:
            t0 = time.perf_counter()
            with QueryProgress(cur, status):   # Ctrl-C cancels the query (KeyboardInterrupt: exit 130)
                run_interruptibly(lambda: cur.execute(stmt), cur.cancel)
            title = "EXPLAIN MIX" if cur.statement_kind == "explain_mix" else None
            _print_result(cur, args.format, args.limit, out, t0, title=title)
        con.commit()
    finally:
        con.close()


# ---------------------------------------------------------------------------------------------
# commands


def cmd_repl(args: argparse.Namespace) -> int:
    from .repl import Repl

    if not sys.stdin.isatty():
        # piped input: behave like `mixsql sql` reading stdin
        args.statement, args.file, args.format, args.limit = None, "-", "table", None
        return cmd_sql(args)
    return Repl(catalog=args.catalog).run()


def cmd_sql(args: argparse.Namespace) -> int:
    _run_sql(args, _read_sql(args, sys.stdin), sys.stdout)
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    text = _read_sql(args, sys.stdin).strip().rstrip(";").strip()
    if not text.upper().startswith("EXPLAIN"):
        text = "EXPLAIN MIX " + text
    args.limit = None
    _run_sql(args, text, sys.stdout)
    return 0


def _register_options(args: argparse.Namespace) -> dict:
    options: dict = {}
    props: dict[str, str] = {}
    for item in args.map:
        name, sep, path = item.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise UserError(f"--map expects PROP=PATH (e.g. language=meta.lang), got {item!r}")
        props[name.strip()] = path.strip()
    if props:
        options["properties"] = props
    for key in ("preset", "text", "tokens", "tokenizer", "on_error"):
        value = getattr(args, key)
        if value:
            options[key] = value
    if args.ray is not None:
        options["engine"] = "ray"
        if args.ray:
            options["ray_address"] = args.ray
    return options


def cmd_register(args: argparse.Namespace) -> int:
    from . import registration

    options = _register_options(args)
    progress = not args.no_progress   # a bar on a terminal, a line every few seconds on a pipe
    con = _connect(args)
    try:
        cat = con.catalog
        reading = set(options) - {"engine", "ray_address"}   # --ray applies to a refresh too
        if args.name in cat.source_names() and not args.replace and (reading or args.data_format):
            print(f"mixsql: source {args.name!r} exists; refreshing it with its registered options "
                  "(--replace registers it anew with these)", file=sys.stderr)
        summary = registration.register_source(cat, args.name, args.pattern, format=args.data_format,
                                               options=options or None, progress=progress, replace=args.replace)
    finally:
        con.close()
    print(_summary_line(summary["action"], args.name, summary))
    return 0


def _summary_line(verb: str, name: str, summary: dict | None) -> str:
    """One line from a registration summary: files, samples, skipped records, time, properties."""
    s = summary or {}
    bits = [f"{s[k]} {label}" for k, label in (("files", "files"), ("samples", "samples"))
            if s.get(k) is not None]
    if s.get("samples_before") is not None:
        bits.append(f"samples {s['samples_before']} -> {s['samples_after']}")
    for key, label in (("new_files", "new files"), ("changed_files", "changed files"),
                       ("removed_files", "removed files"), ("skipped", "skipped records")):
        val = s.get(key)
        if isinstance(val, (list, tuple, dict)):
            val = len(val)
        if val:
            bits.append(f"{val} {label}")
    if s.get("snapshot") is not None:
        bits.append(f"snapshot {s['snapshot']}")
    if isinstance(s.get("seconds"), (int, float)):
        bits.append(f"{s['seconds']:.2f} s")
    stats = s.get("property_stats") or {}
    props = s.get("properties")
    if isinstance(props, dict) and props:
        bits.append("properties: " + ", ".join(f"{k} {v}{_non_null(stats.get(k))}" for k, v in props.items()))
    return f"{verb} source {name}: " + ("; ".join(bits) if bits else "done")


def _non_null(stat: dict | None) -> str:
    """' (97.5% non-null)' from a property's registration stats; '' when unknown."""
    frac = (stat or {}).get("non_null_fraction")
    return "" if frac is None else f" ({frac:.1%} non-null)"


def cmd_sources(args: argparse.Namespace) -> int:
    args.statement, args.file, args.limit = "SHOW SOURCES", None, None
    args.format = "table"
    _run_sql(args, "SHOW SOURCES", sys.stdout)
    return 0


def cmd_ping(args: argparse.Namespace) -> int:
    from .client import MixClient

    t0 = time.perf_counter()
    client = MixClient(args.url, token_file=args.token_file, tls_root_certs=args.tls_root_certs,
                       retry_for=args.timeout, connect_timeout=args.timeout, timeout=args.timeout)
    try:
        client.ping()
    finally:
        client.close()
    print(f"mixsql server at {client.location} answered in {1000 * (time.perf_counter() - t0):.0f} ms")
    return 0


def cmd_ledger(args: argparse.Namespace) -> int:
    """``SELECT * FROM mix_ledger(CKPT) WHERE step BETWEEN ...`` (or ``WHERE file = ... AND row =
    ...``: the inverse) over the run's recorded catalog (or --catalog)."""
    from .ledger import read_state

    sample = args.file is not None or args.row is not None
    if sample == (args.step is not None):
        raise UserError("give --step N (the samples of a step) or --file PATH --row R (the steps of a sample), "
                        "not both")
    if sample and (args.file is None or args.row is None):
        raise UserError("--file and --row name one sample together: give both")
    if args.step is not None and args.to is not None and args.to < args.step:
        raise UserError("--to must not be below --step")
    if not args.catalog_given:
        args.catalog = (read_state(args.checkpoint).get("run") or {}).get("catalog") or args.catalog
    path = os.path.abspath(args.checkpoint).replace("'", "''")
    if sample:
        file = args.file
        if "://" not in file and not os.path.isabs(file) and os.path.exists(file):
            file = os.path.abspath(file)   # the catalog records absolute paths
        where = f"file = '{file.replace(chr(39), chr(39) * 2)}' AND row = {args.row}"
        where += "" if args.to is None else f" AND step <= {args.to}"
    else:
        last = args.step if args.to is None else args.to
        where = f"step BETWEEN {args.step} AND {last}"
    where += "" if args.rank is None else f" AND rank = {args.rank}"
    sql = f"SELECT * FROM mix_ledger('{path}') WHERE {where} ORDER BY step, rank, sequence, \"offset\""
    con = _connect(args, read_only=True)
    try:
        cur = con.cursor()
        t0 = time.perf_counter()
        cur.execute(sql)
        _print_result(cur, args.format, None, sys.stdout, t0, title=f"ledger of {args.checkpoint}")
    finally:
        con.close()
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from .server import serve
    except ModuleNotFoundError as exc:
        if exc.name == f"{__package__}.server":
            raise UserError("this mixsql build has no Flight server (mixsql.server is missing)") from exc
        raise
    if args.token is not None:
        raise UserError("a token on the command line shows in `ps` and shell history: put it in "
                        "$MIXSQL_TOKEN or in a file passed with --token-file")
    if bool(args.tls_cert) != bool(args.tls_key):
        raise UserError("TLS needs both --tls-cert and --tls-key")
    limits = {name: getattr(args, name) for name in SERVE_LIMITS if getattr(args, name) is not None}
    serve(args.catalog, host=args.host, port=args.port, token_file=args.token_file,
          tls_cert=args.tls_cert, tls_key=args.tls_key, insecure=args.insecure, **limits)
    return 0


SERVE_LIMITS = ("query_timeout", "memory_limit", "max_statement_bytes", "max_jobs", "max_jobs_per_token", "feedback_lag")


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(args.catalog, seq_len=args.seq_len, batch_size=args.batch_size)
    return 0


COMMANDS = {
    "ledger": cmd_ledger,
    None: cmd_repl, "repl": cmd_repl, "sql": cmd_sql, "explain": cmd_explain,
    "register": cmd_register, "sources": cmd_sources, "serve": cmd_serve, "demo": cmd_demo, "ping": cmd_ping,
}


def _one_paragraph(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text


def _print_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings during a command (the REPL's included) as one ``mixsql: warning:`` line on stderr."""
    print(f"mixsql: warning: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mixsql`` console script. Returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help / --version (0) or usage errors (2)
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    args.catalog_given = hasattr(args, "catalog")
    if not args.catalog_given:
        args.catalog = _default_catalog()
    try:
        with warnings.catch_warnings():   # a short stream (ExhaustedWarning) is said, not buried
            warnings.simplefilter("default", ExhaustedWarning)
            warnings.simplefilter("default", TokenizerMismatchWarning)
            warnings.showwarning = _print_warning
            return COMMANDS[args.command](args)
    except (UserError, Error) as exc:
        if os.environ.get("MIXSQL_DEBUG"):
            traceback.print_exc()
        print(f"mixsql: {_one_paragraph(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("mixsql: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
        except OSError:
            pass
        return 0
    except Exception as exc:  # noqa: BLE001 - never a bare traceback
        if os.environ.get("MIXSQL_DEBUG"):
            traceback.print_exc()
        print(f"mixsql: internal error ({type(exc).__name__}): {exc}. Please report this bug; "
              "rerun with MIXSQL_DEBUG=1 for the traceback.", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
