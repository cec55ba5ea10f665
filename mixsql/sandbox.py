"""Client SQL on the server: a MIX statement planned over the catalog and nothing else.

The server runs statements it receives over the network, so two independent layers stand
between a client and the server's files, network and configuration:

1. **The parsed statement** (:func:`check_statement`, before DuckDB sees it): one statement,
   a ``SELECT ... MIX BY`` (no ``SET``/``PRAGMA``/``ATTACH``/``COPY``/``INSTALL``/``LOAD``/
   ``EXPORT`` or any other statement kind anywhere in the tree); every table it names is one of
   the catalog's own tables or views (``samples``, ``sources``, ``files``, ...) or a CTE of the
   statement, unqualified; no table functions at all (``read_text``, ``read_csv``, ``glob``,
   ``range``, ``query``, ``duckdb_settings()``, a quoted path or URL as a table ...); no scalar
   function that reads settings, files or the environment (``current_setting``, ``getenv``,
   ``read_*``, ``pragma_*``, ``duckdb_*`` ...).
2. **DuckDB itself** (:class:`Sandbox`): a fresh in-memory DuckDB per statement with the
   catalog's newest snapshot ``ATTACH``-ed read-only (mixsql.catalog), extension autoloading
   and autoinstall off, no scans of Python objects (``python_enable_replacements = false``), then
   ``enable_external_access = false`` (no file, URL or extension access from here on) and
   ``lock_configuration = true`` (no ``SET`` can undo it). Memory and threads are capped, and a
   timer interrupts a statement that runs past the query time limit.

What a statement selects is published to the node's selection cache (:mod:`mixsql.selection`)
and memory-mapped by every later job of the same statement, parameters and catalog snapshot:
layer 1 checks every statement, layer 2 plans it only when the node has not published it yet.

Errors raised here name the client's own SQL (position and caret), never data from outside
the catalog: with external access off no outside data can enter a query, and unexpected
failures are reported by kind only.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import duckdb
from sqlglot import exp

from . import dialect as D
from .catalog import Catalog
from .errors import Error, OperationalError, ProgrammingError, SQLError

# statement kinds that never belong in a client's MIX statement (refused anywhere in the tree)
_REFUSED_KINDS = tuple(getattr(exp, n) for n in (
    "Command", "Set", "Pragma", "Copy", "Attach", "Detach", "Install", "Use", "Create", "Insert",
    "Update", "Delete", "Drop", "Alter", "Export", "Transaction", "Commit", "Rollback", "Merge",
    "Describe", "Summarize", "Kill", "Cache", "Uncache", "Refresh", "TruncateTable", "Analyze", "Show",
) if hasattr(exp, n))

# scalar functions that read files, settings, secrets or the environment (by name prefix)
_REFUSED_FUNCTIONS = (
    "read_", "pragma_", "duckdb_", "parquet_", "sniff_", "glob", "query", "current_setting", "getenv",
    "which_secret", "sql_auto_complete", "iceberg_", "delta_", "sqlite_", "postgres_", "mysql_", "st_read",
    "json_execute_serialized_sql", "load_", "install_", "checkpoint", "force_checkpoint", "enable_",
    "disable_", "set_", "icu_", "httpfs", "s3_", "azure_", "gcs_", "hf_", "ducklake_", "excel_",
)


@dataclass(frozen=True)
class SandboxLimits:
    """What one client statement may cost."""

    max_statement_bytes: int = 16 << 10
    query_timeout: float = 30.0        # seconds of DuckDB time per statement
    memory_limit: str = "1GB"          # DuckDB memory per statement
    threads: int = 2                   # DuckDB threads per statement


class SandboxError(ProgrammingError):
    """A client statement asks for something the server does not allow."""


def _function_name(f: exp.Func) -> str:
    return (f.name if isinstance(f, exp.Anonymous) else f.sql_name()).lower()


def check_statement(sql: str, tree: exp.Expr, tables: frozenset[str]) -> None:
    """Refuse anything in ``tree`` (parsed from ``sql``) beyond reading ``tables``; see the module doc."""
    if not isinstance(tree, exp.Select) or not tree.args.get("mix"):
        raise SandboxError("the server runs MIX statements only: SELECT ... FROM samples ... MIX BY ...")
    ctes = {c.alias_or_name.lower() for c in tree.find_all(exp.CTE)}
    for node in tree.walk():
        if isinstance(node, _REFUSED_KINDS):
            raise D.node_error(sql, f"{node.key.upper()} is not allowed in a statement sent to the server",
                               node)
        if isinstance(node, exp.Table):
            if not isinstance(node.this, exp.Identifier):
                raise D.node_error(sql, "table functions are not available on the server: a statement "
                                        "reads only the catalog's tables (samples, sources, files)", node)
            if node.args.get("db") or node.args.get("catalog"):
                raise D.node_error(sql, f"name the catalog's tables without a schema or database "
                                        f"(got {node.sql('duckdb')!r})", node)
            name = node.name.lower()
            if name not in tables and name not in ctes:
                raise D.node_error(sql, f"unknown table {node.name!r}: the server reads only the catalog's "
                                        f"tables ({', '.join(sorted(tables))})", node,
                                   D.suggest(node.name, sorted(tables)))
        elif isinstance(node, exp.Func):
            name = _function_name(node)
            if name.startswith(_REFUSED_FUNCTIONS):
                raise D.node_error(sql, f"function {name}() is not available on the server (it reads "
                                        "files, settings or the environment)", node)


class Sandbox:
    """A read-only, locked-down DuckDB handle on one catalog, for one client statement.

    ``catalog`` is a :class:`~mixsql.catalog.Catalog` over the sandboxed connection (what the
    planner and :class:`~mixsql.stream.MixStream` take); ``tables`` the names it may read.
    ``snapshot``: the catalog snapshot to read (default: the newest)."""

    def __init__(self, catalog_dir: str | Path, limits: SandboxLimits = SandboxLimits(),
                 snapshot: int | None = None):
        self.limits = limits
        path = Path(catalog_dir).expanduser().resolve()
        try:
            cat = Catalog(path, read_only=True, snapshot=snapshot, duckdb_config={
                "autoload_known_extensions": False, "autoinstall_known_extensions": False,
                "allow_community_extensions": False, "python_enable_replacements": False,
                "memory_limit": limits.memory_limit,
                "threads": max(int(limits.threads), 1)})
        except duckdb.Error as exc:
            raise OperationalError(f"cannot open the server's catalog {path} read-only: "
                                   f"{str(exc).splitlines()[0]}") from None
        con = cat.con
        try:
            con.execute("SET enable_external_access = false")
            con.execute("SET lock_configuration = true")
            rows = con.execute(
                "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database() AND NOT internal "
                "UNION SELECT view_name FROM duckdb_views() WHERE database_name = current_database() "
                "AND NOT internal").fetchall()
        except duckdb.Error as exc:
            cat.close()
            raise OperationalError(f"cannot open the server's catalog {path} read-only: "
                                   f"{str(exc).splitlines()[0]}") from None
        self.tables = frozenset(r[0].lower() for r in rows)
        self.con = con
        self.catalog = cat   # pinned in effect: a locked-down connection attaches nothing new

    @property
    def snapshot(self) -> int:
        return self.catalog.snapshot

    @contextmanager
    def deadline(self):
        """Interrupt DuckDB when the statement runs past ``limits.query_timeout`` seconds."""
        fired = threading.Event()

        def interrupt():
            fired.set()
            self.con.interrupt()

        timer = threading.Timer(self.limits.query_timeout, interrupt)
        timer.daemon = True
        timer.start()
        try:
            yield
        except BaseException as exc:
            if fired.is_set():
                raise OperationalError(
                    f"the statement ran past the server's query time limit ({self.limits.query_timeout:g} s); "
                    "narrow the selection or ask the operator for a longer --query-timeout") from None
            if isinstance(exc, duckdb.OutOfMemoryException):
                raise OperationalError(
                    f"the statement needs more than the server's memory limit per statement "
                    f"({self.limits.memory_limit})") from None
            if isinstance(exc, Error):
                raise
            # never echo an unexpected failure's text: it could carry data the client may not read
            raise OperationalError(f"the statement failed on the server ({type(exc).__name__})") from None
        finally:
            timer.cancel()

    def open_stream(self, statement: str, params=None):
        """Check ``statement``, then its pointers-only MixStream from the node's selection cache
        (:meth:`~mixsql.stream.MixStream.from_cache`): mapped when this node published it already
        (no planning), else planned here, within the query time limit, and published."""
        from .stream import MixStream, plan_selection

        check_statement(statement, parse_client_statement(statement, self.limits), self.tables)

        def build(directory):
            with self.deadline():
                return plan_selection(self.catalog, statement, params, directory, self.catalog.path, self.snapshot)

        return MixStream.from_cache(self.catalog.path, self.snapshot, statement, params, build)

    def close(self) -> None:
        self.catalog.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def parse_client_statement(statement, limits: SandboxLimits) -> exp.Expr:
    """Parse one client statement within the length bound (SQLError/SandboxError otherwise)."""
    if not isinstance(statement, str) or not statement.strip():
        raise SandboxError("register_job needs 'sql': the MIX statement as a string")
    size = len(statement.encode("utf-8", "replace"))
    if size > limits.max_statement_bytes:
        raise SandboxError(f"the statement is {size} bytes; the server accepts at most "
                           f"{limits.max_statement_bytes} (a mixture listing thousands of groups needs "
                           f"a server started with a larger --max-statement-bytes)")
    try:
        return D.parse(statement)
    except SQLError:
        raise
    except RecursionError:
        raise SandboxError("the statement is nested too deeply") from None
