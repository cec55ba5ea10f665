"""Planner: a MIX statement -> one DuckDB query + a typed :class:`~mixsql.spec.MixSpec`.

``plan()`` runs small named passes, each a function with a one-line contract:

1. parse (:func:`.statement.parse_statement`) -> check the shape (:func:`.statement.check_shape`)
   -> resolve names (:func:`.statement.resolve_names`) -> the base selection
   (:func:`.statement.base_selection`);
2. validate: settings, budget, algorithm (:func:`.statement.read_settings`, ``read_budget``,
   ``read_algorithm``), key types (:func:`.statement.bind_keys`);
3. build groups (:class:`.tree.TreeBuilder`, :func:`.tree.discover`, :func:`.tree.membership`),
   weights and SCHEDULE (:func:`.tree.static_weights`, :func:`.tree.read_schedule`);
4. build the DuckDB query (:class:`.query.QueryBuilder`) -> :class:`.model.MixPlan`.

Values, errors and suggestions live in :mod:`.values`; running a plan in :mod:`.execute`.

``plan()`` parses and validates statically (names, values, weights, settings, schedule,
algorithm) and builds the query with sqlglot expressions. The query returns one row per
selected sample: ``__mix_group`` (the leaf, resolved by lookup joins over the MIX BY tree, see
:mod:`mixsql.groups`: linear in rows plus listed values, whatever the number of groups), the
entry columns ``__mix_e<depth>`` of depths with multi-value groups, the other
``spec.MIX_COLUMNS`` pointer columns, the ORDER BY keys
(``__mix_order_<i>_<asc|desc>_<nf|nl>``, ranked in numpy by
:func:`mixsql.shuffle.ordered_permutation`) when ORDER BY is given, then the user's projection.
``execute_plan()`` runs it, checks what needs data (a listed value in no row, an empty OTHER, a
nested MIX over an empty group) and resolves NATURAL weights; its pointer table drops the entry
columns.

Semantics fixed here:

* ``OTHER`` is every row whose MIX BY value matches no value listed at that level, NULL
  included; rows matching no group are not selected.
* ``MIX BY e`` without ``WITH`` (or ``WITH NATURAL``) makes one group per distinct value of
  ``e`` (found by a DISTINCT query at plan time, ascending, NULLS LAST; at most
  ``SETTINGS (max_discovered_groups = n)``, default :data:`MAX_DISCOVERED_GROUPS`), weighted by its
  available share.
* Plain ``LIMIT n`` in a MIX statement is ``LIMIT n SAMPLES``: a budget on the mixed stream.
* ``ORDER BY`` is the consumption order inside each group (ties broken by file and row).
* ``AT STEP n`` is a training step (``ScheduleStep.step``). With ``SETTINGS (batch_size = b)``
  (samples, or tokens under ``unit = 'tokens'``, per global step) the engine starts it at chunk
  ``ceil(n * b / chunk_size)``, deterministically. Without batch_size the server refuses a
  SCHEDULE; in-process ``mixsql.torch.MixDataset`` maps steps through the training loop's batch
  size (unpacked samples, or packed sequences under ``unit = 'tokens'``) or follows
  ``set_step(step)`` / ``feedback(step, ...)`` when iterated in-process, and otherwise raises
  before any data moves.
"""

from __future__ import annotations

from ..gctools import without_gc
from ..source_statements import RegistrationRequest, registration_request  # noqa: F401  (re-exported)
from ..spec import Group, MixSpec, Shuffle
from .execute import execute_plan
from .model import DEFAULT_CHUNK_SIZE, MAX_DISCOVERED_GROUPS, SETTINGS, MixPlan, known_algorithms, leaves_of, nodes_of
from .query import QueryBuilder, with_projection
from .statement import (
    base_selection, bind_keys, check_shape, parse_statement, read_algorithm, read_budget, read_settings,
    resolve_names,
)
from .tree import TreeBuilder, check_cast_duplicates, discover, membership, read_schedule, static_weights


@without_gc   # thousands of groups: the collector's passes would cost more than planning
def plan(catalog, sql: str, params=None) -> MixPlan:
    """Parse and validate a MIX (or EXPLAIN MIX) statement and build its DuckDB query."""
    st = parse_statement(catalog, sql, params)
    sources = check_shape(st)
    names = resolve_names(st, sources)
    base = base_selection(st)
    settings, unit_node = read_settings(st)
    budget = read_budget(st)
    algorithm, prior_natural = read_algorithm(st)
    keys = bind_keys(st, names, base)

    builder = TreeBuilder(st, keys)
    schedule_nodes = st.mix.args["schedule"].expressions if st.mix.args.get("schedule") else None
    root = builder.build(st.mix, None, "", weights_from=schedule_nodes[0].expressions if schedule_nodes else None)
    nodes = nodes_of(root)
    discover(st, nodes, builder.all_groups, with_projection(base, keys.projection()).sql("duckdb"),
             settings.get("max_discovered_groups", MAX_DISCOVERED_GROUPS))
    leaves = leaves_of(root)
    for j, g in enumerate(leaves):
        g.leaf = j
    members = membership(nodes)
    check_cast_duplicates(st, members, keys)

    natural = any(n.natural for n in nodes) or prior_natural
    weights = [0.0] * len(leaves)
    static_weights(root, 1.0, weights)
    schedule = read_schedule(st, builder, root, leaves) if schedule_nodes else ()
    spec = _spec(st, leaves, weights, settings, budget, algorithm, schedule, natural)
    query = QueryBuilder(st, names, sources, base, keys, members).build()
    return MixPlan(
        sql=query.sql, params=params, spec=spec, statement=sql, user_columns=query.user_columns,
        entry_columns=members.entry_columns, n_entries=members.n_entries, root=root,
        leaves=leaves, natural=natural, prior_natural=prior_natural, unit_node=unit_node,
        base_sql=base.sql("duckdb"), shared=query.shared, fetch_sql=query.fetch_sql, pointer_sql=query.pointer_sql,
        order_columns=query.order_columns,
    )


def _spec(st, leaves, weights, settings, budget, algorithm, schedule, natural) -> MixSpec:
    """The MixSpec of a planned statement (NATURAL weights are resolved by execute_plan)."""
    unit = settings.get("unit", "samples")
    weighting = "algorithm" if algorithm else "schedule" if schedule else "natural" if natural else "static"
    return MixSpec(
        groups=tuple(Group(g.leaf, g.path, weights[g.leaf], tuple(g.values)) for g in leaves),
        weighting=weighting, unit=unit, chunk_size=settings.get("chunk_size", DEFAULT_CHUNK_SIZE[unit]),
        seed=settings.get("seed", 0), on_exhausted=settings.get("on_exhausted", "stop"),
        max_epochs=settings.get("max_epochs"), budget=budget, ordered=st.tree.args.get("order") is not None,
        shuffle=Shuffle(block=settings.get("shuffle_block", Shuffle.block),
                        window=settings.get("shuffle_window", Shuffle.window),
                        shards=settings.get("shuffle_shards", Shuffle.shards)),
        schedule=schedule, algorithm=algorithm, batch_size=settings.get("batch_size"),
    )


def explain(catalog, sql: str, params=None):
    """EXPLAIN MIX: one row per leaf group (see :mod:`mixsql.explain`)."""
    from ..explain import explain_table

    return explain_table(catalog, sql, params)


__all__ = ["MixPlan", "RegistrationRequest", "plan", "execute_plan", "registration_request", "explain",
           "SETTINGS", "DEFAULT_CHUNK_SIZE", "MAX_DISCOVERED_GROUPS", "known_algorithms"]
