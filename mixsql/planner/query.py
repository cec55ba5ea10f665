"""The last planner pass: the DuckDB query. One row per selected sample: ``__mix_group`` and the
entry columns (group membership by lookup joins, :mod:`mixsql.groups`), the pointer columns, the
ORDER BY keys, then the user's projection; plus the leaner queries execute_plan runs when it
needs fewer columns (user columns that are pointer columns are shared, pointers-only straight
from ``sample_index``)."""
from __future__ import annotations

from dataclasses import dataclass, field

import duckdb
from sqlglot import exp

from .. import groups as G
from ..shuffle import order_key_name
from ..spec import ORDER_COLUMN
from .model import SHARED, SHARED_TYPES, Membership, rankable
from .statement import Keys, Names, Sources, Statement
from .values import duck_error


def with_projection(select: exp.Select, projection: list) -> exp.Select:
    """Copy of ``select`` projecting ``projection`` (copied)."""
    out = select.copy()
    out.set("expressions", [e.copy() for e in projection])
    return out


@dataclass
class Query:
    """The queries of a plan (see :class:`~mixsql.planner.model.MixPlan`)."""

    sql: str
    user_columns: list
    order_columns: list = field(default_factory=list)
    shared: dict = field(default_factory=dict)
    fetch_sql: str = ""
    pointer_sql: str = ""


class QueryBuilder:
    """Builds the statement's queries over its base selection."""

    def __init__(self, st: Statement, names: Names, sources: Sources, base: exp.Select, keys: Keys,
                 members: Membership):
        self.st, self.names, self.sources, self.base, self.keys, self.members = st, names, sources, base, keys, members
        self.q = exp.to_identifier(sources.qual)
        # __mix_source / __mix_file are filled in from file_id by execute_plan (dictionary-encoded:
        # far cheaper than materialising one string per row in DuckDB)
        self.internal = [
            self.col("file_id").as_("__mix_file_id"),
            self.col("row").as_("__mix_row"),
            self.col("loc_offset").as_("__mix_offset"),
            self.col("loc_length").as_("__mix_length"),
            self.col("n_bytes").as_("__mix_n_bytes"),
            self.col("n_tokens").as_("__mix_n_tokens"),
        ]
        self.order_keys = []
        if st.tree.args.get("order"):
            self.order_keys = [o.copy() for o in st.tree.args["order"].expressions]
            for o in self.order_keys:
                o.set("this", names.resolve(o.this))
            # the keys themselves: ranked in numpy together with (group, file_id, row), one sort
            # (a DuckDB row_number() window over the whole selection is far slower)
            for i, o in enumerate(self.order_keys):
                self.internal.append(o.this.copy().as_(order_key_name(i, bool(o.args.get("desc")),
                                                                     bool(o.args.get("nulls_first")))))
        self.entry_columns = members.entry_columns
        self.n_lead = 1 + len(self.entry_columns)   # __mix_group and the entry columns come first
        self.key_projection = keys.projection()

    def col(self, name: str) -> exp.Column:
        return exp.Column(this=exp.to_identifier(name, quoted=True), table=self.q.copy())

    def query_for(self, projection, frm: exp.Select | None = None) -> str:
        frm = self.base if frm is None else frm
        m = self.members
        source = with_projection(frm, self.internal + self.key_projection + list(projection)).sql("duckdb")
        return G.membership_sql(source, self.keys.cols, m.tables, m.root_other, m.depths, m.entry_depths)

    def _describe(self, query: str):
        try:
            return self.st.con.execute(f"SELECT * FROM ({query}) LIMIT 0", self.st.params).description
        except duckdb.Error as exc:
            raise duck_error(self.st.sql, exc, self.st.tree) from None

    def build(self) -> Query:
        """The main query, then the shared-column and pointers-only variants."""
        query = self.query_for(self.base.expressions)
        desc = self._describe(query)
        n_internal = self.n_lead + len(self.internal)
        n_keys = len(self.order_keys)
        if n_keys and not all(rankable(str(d[1])) for d in desc[n_internal - n_keys:n_internal]):
            # a key type numpy cannot rank exactly like DuckDB (nested, interval, enum, ...):
            # DuckDB computes the consumption order itself
            keys = self.order_keys + [exp.Ordered(this=self.col("file_id")), exp.Ordered(this=self.col("row"))]
            self.internal[len(self.internal) - n_keys:] = [
                exp.Window(this=exp.RowNumber(), order=exp.Order(expressions=keys)).as_(ORDER_COLUMN)]
            n_internal = self.n_lead + len(self.internal)
            query = self.query_for(self.base.expressions)
            desc = self.st.con.execute(f"SELECT * FROM ({query}) LIMIT 0", self.st.params).description
        order_columns = [e.alias for e in self.internal[len(self.internal) - (
            1 if n_keys and self.internal[-1].alias == ORDER_COLUMN else n_keys):]] if n_keys else []
        user_columns = [d[0] for d in desc[n_internal:]]
        shared, fetch_sql = self._shared_columns(query, desc, n_internal, user_columns)
        return Query(query, user_columns, order_columns, shared, fetch_sql, self._pointer_sql(query))

    def _shared_columns(self, query: str, desc, n_internal: int, user_columns: list) -> tuple[dict, str]:
        """User columns equal to a pointer column are not fetched twice (SELECT * has eight of
        them): (user column -> pointer column, the query for the others)."""
        qual = self.sources.qual
        known = self.names.known
        single = len(self.sources.tables) == 1 and qual.lower() in known
        projection = list(self.base.expressions)
        if single:
            expanded = []
            for p_ in projection:
                star = isinstance(p_, exp.Star) or (isinstance(p_, exp.Column) and isinstance(p_.this, exp.Star)
                                                    and p_.table.lower() == qual.lower())
                if star and not any(p_.args.get(k) for k in p_.args if k not in ("this", "table")) and \
                        not (isinstance(p_.this, exp.Star) and any(p_.this.args.values())):
                    expanded += [self.col(c) for c in known[qual.lower()]]
                else:
                    expanded.append(p_)
            projection = expanded
        shared: dict = {}
        if not (single and len(projection) == len(user_columns) and len(set(user_columns)) == len(user_columns)):
            return shared, query
        keep = []
        for i, (name, p_) in enumerate(zip(user_columns, projection)):
            e = p_.this if isinstance(p_, exp.Alias) else p_
            target = SHARED.get(e.name.lower()) if isinstance(e, exp.Column) and not isinstance(e.this, exp.Star) \
                and e.table.lower() in ("", qual.lower()) and e.name.lower() not in self.names.aliases else None
            if target is not None and str(desc[n_internal + i][1]).upper() == SHARED_TYPES[target]:
                shared[name] = target
            else:
                keep.append(p_)
        return shared, (self.query_for(keep) if shared else query)

    def _pointer_sql(self, query: str) -> str:
        """Pointers only: straight from sample_index (no joins, so DuckDB keeps (file, row)
        insertion order) when WHERE / MIX BY / ORDER BY need no view-only column (source, file);
        else the full query with DuckDB pruning the unused projection."""
        tree = self.st.tree
        internal_names = ", ".join(["__mix_group", *self.entry_columns] + [f'"{e.alias}"' for e in self.internal])
        pointer_sql = f"SELECT {internal_names} FROM ({query})"
        if len(self.sources.tables) == 1 and isinstance(tree.args["from_"].this, exp.Table) \
                and tree.args["from_"].this is self.sources.samples and "samples" not in self.names.ctes:
            lean = self.base.copy()
            lean.args["from_"].set("this", exp.to_table("sample_index").as_(self.sources.qual))
            try:
                candidate = self.query_for([], lean)
                self.st.con.execute(f"SELECT * FROM ({candidate}) LIMIT 0", self.st.params).fetchall()
                pointer_sql = candidate
            except duckdb.Error:
                pass
        return pointer_sql
