"""The planner's data: settings and limits, the MIX BY tree while it is built (:class:`LevelNode`,
:class:`GroupNode`), its lookup-table form (:class:`Membership`) and the result (:class:`MixPlan`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlglot import exp

from ..spec import MixSpec

# A chunk is a unit of composition, resume and distribution: 512 samples, or (unit = 'tokens')
# 65,536 tokens, i.e. 32 sequences of 2,048, so per-chunk overhead stays small next to the reading.
DEFAULT_CHUNK_SIZE = {"samples": 512, "tokens": 65536}


SETTINGS = {
    "seed": "int>=0", "chunk_size": "int>0", "unit": ("samples", "tokens"),
    "on_exhausted": ("stop", "redistribute", "repeat"), "max_epochs": "int>0",
    "shuffle_block": "int>0", "shuffle_window": "int>0", "shuffle_shards": "int>=0", "batch_size": "int>0",
    "max_discovered_groups": "int>0",
}
# Most groups one MIX BY level may discover (WITH NATURAL / no WITH list): a guard against
# grouping by a near-unique column by mistake; SETTINGS (max_discovered_groups = n) raises it.
MAX_DISCOVERED_GROUPS = 1_000_000
# samples columns that are pointer columns too: a user column selecting one shares its array
SHARED = {"source": "__mix_source", "file": "__mix_file", "row": "__mix_row", "n_bytes": "__mix_n_bytes",
          "n_tokens": "__mix_n_tokens", "file_id": "__mix_file_id", "loc_offset": "__mix_offset",
          "loc_length": "__mix_length"}
SHARED_TYPES = {"__mix_source": "VARCHAR", "__mix_file": "VARCHAR", "__mix_row": "BIGINT",
                "__mix_n_bytes": "BIGINT", "__mix_n_tokens": "BIGINT", "__mix_file_id": "INTEGER",
                "__mix_offset": "BIGINT", "__mix_length": "INTEGER"}
NUMERIC = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER",
           "UBIGINT", "UHUGEINT", "FLOAT", "DOUBLE", "DECIMAL", "REAL")
RANKABLE = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER",
            "FLOAT", "DOUBLE", "DECIMAL", "BOOLEAN", "DATE", "TIMESTAMP", "TIMESTAMP_S", "TIMESTAMP_MS",
            "TIMESTAMP_NS", "TIMESTAMP WITH TIME ZONE", "TIME", "VARCHAR", "BLOB")


def known_algorithms() -> list[str]:
    try:
        from ..algorithms import ALGORITHMS
        return sorted(ALGORITHMS)
    except Exception:  # noqa: BLE001 - algorithms module optional at plan time
        return ["ado", "loss_average"]


def rankable(type_name: str) -> bool:
    """ORDER BY key types that :func:`mixsql.shuffle.key_rank` orders exactly as DuckDB does."""
    t = type_name.upper()
    if t.startswith("DECIMAL"):
        return True
    return t in RANKABLE


@dataclass(slots=True)
class LevelNode:
    """One MIX BY level during planning."""

    key: exp.Expr                  # the (alias-resolved) MIX BY expression
    key_sql_node: exp.Expr         # original node, for error positions
    natural: bool                  # weights resolved from data
    groups: list = field(default_factory=list)   # list[GroupNode]
    depth: int = 0
    key_col: str = ""              # the query's column of the key (``__mix_k<j>``, shared by equal keys)
    key_type: str = ""             # DuckDB type of the key
    parent: Any = None             # the GroupNode this level is nested in (None at the root)
    origin: Any = None             # the MixBy node
    prefix: str = ""               # path prefix of its groups


@dataclass(slots=True)
class GroupNode:
    """One group of a level: its values (or OTHER), raw weight and nested level."""

    node: LevelNode
    values: list                   # python values ([] for OTHER)
    value_nodes: list              # sqlglot nodes of the values (positions)
    other: bool
    weight: float                  # raw (un-normalised) weight; 1.0 placeholder for natural
    weight_node: Any
    origin: Any                    # the MixGroup node (or the MixBy for discovered groups)
    path: str
    child: LevelNode | None = None
    leaf: int | None = None
    gid: int | None = None         # group number in the membership tables
    entries: list | None = None    # entry id per listed value (one for OTHER); None when discovered


def leaves_of(node: LevelNode) -> list:
    """The leaf groups under ``node``, in tree order."""
    out = []
    for g in node.groups:
        out.extend(leaves_of(g.child) if g.child is not None else [g])
    return out


def nodes_of(node: LevelNode) -> list:
    """The MIX BY levels of the tree, parents before children."""
    out = [node]
    for g in node.groups:
        if g.child is not None:
            out.extend(nodes_of(g.child))
    return out


@dataclass
class Membership:
    """The tree as :mod:`mixsql.groups` lookup tables."""

    tables: list                   # list[groups.Table]
    root_other: tuple | None       # (entry, gid, leaf) of the root's OTHER
    entries: dict                  # entry id of a listed value -> (group, value index)
    n_entries: int
    depths: int
    entry_depths: list             # depths with a multi-value group (their entry column is fetched)

    @property
    def entry_columns(self) -> list[str]:
        """The query's ``__mix_e<depth>`` column of each depth in ``entry_depths``."""
        return [f"__mix_e{d}" for d in self.entry_depths]


@dataclass
class MixPlan:
    sql: str                       # the DuckDB query
    params: Any                    # parameters for the query (as given)
    spec: MixSpec                  # weights final unless NATURAL (resolved by execute_plan)
    statement: str                 # the original statement text
    user_columns: list[str]        # the user's projection output names, in order
    # ``__mix_e<depth>`` columns the query returns after ``__mix_group`` (the entry, i.e. listed
    # value, each row matched at that depth: execute_plan counts rows per value with them)
    entry_columns: list = field(default_factory=list)
    n_entries: int = 0
    root: Any = field(default=None, repr=False)
    leaves: list = field(default_factory=list, repr=False)
    natural: bool = False
    prior_natural: bool = False
    unit_node: Any = field(default=None, repr=False)
    base_sql: str = ""             # user's selection without MIX modifiers (for suggestions)
    # user output columns that are the same value as a pointer column (``SELECT *``'s row,
    # file, ...): not fetched from DuckDB, filled from the pointer column by execute_plan
    shared: dict = field(default_factory=dict, repr=False)   # user column -> MIX column
    fetch_sql: str = ""            # query for the user columns not in ``shared`` (+ pointers)
    pointer_sql: str = ""          # query for the pointer columns only (execute_plan(user_columns=False))
    # ORDER BY: the key columns the query returns (``__mix_order_<i>_<asc|desc>_<nf|nl>``, ranked
    # by execute_plan / the engine), or ``[ORDER_COLUMN]`` when a key's type is ranked by DuckDB
    order_columns: list = field(default_factory=list)
