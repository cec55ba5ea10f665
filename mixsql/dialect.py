"""The mixsql SQL dialect: DuckDB's dialect plus MIX statements and source management.

``MixSQL`` follows sqlglot's dialect pattern (nested Tokenizer / Parser / Generator) and adds:

* query modifiers attached to a SELECT: ``MIX BY <expr> [WITH (...) | WITH NATURAL |
  WITH SCHEDULE (...)]``, ``USING <algorithm> (k = v, ...)``, ``LIMIT n SAMPLES|TOKENS|CHUNKS``
  and ``SETTINGS (k = v, ...)``;
* statements ``EXPLAIN MIX <select>``, ``CREATE [OR REPLACE] SOURCE [IF NOT EXISTS]``,
  ``REFRESH SOURCE``, ``DROP SOURCE``, ``SHOW SOURCES``, ``SHOW SOURCE <name>``.

Public functions: :func:`classify` (cheap, token based, never raises), :func:`parse` (raises
only :class:`mixsql.errors.SQLError`) and :func:`generate` (round-trips ``parse``).
The grammar is documented in ``grammar/GRAMMAR.md``.

Why one module of this size: sqlglot's dialect pattern keeps a dialect's Tokenizer, Parser and
Generator as nested classes of one ``Dialect`` subclass, with the declarative tables they share
(keywords, statement parsers, generator transforms) beside them; splitting them across files
would scatter one grammar over several places (sqlglot's own dialects are single modules too).
"""
from __future__ import annotations

import difflib
import re

from sqlglot import exp
from sqlglot.dialects.duckdb import DuckDB
from sqlglot.errors import ParseError, SqlglotError, TokenError
from sqlglot.tokens import Token, TokenType

from .errors import SQLError, position_of
from .gctools import gc_paused

UNITS = ("SAMPLES", "TOKENS", "CHUNKS")
MIX_KEYWORDS = (
    "MIX", "BY", "WITH", "NATURAL", "SCHEDULE", "AT", "STEP", "OTHER", "USING", "LIMIT",
    "SAMPLES", "TOKENS", "CHUNKS", "SETTINGS", "ORDER", "EXPLAIN", "SOURCE", "SOURCES",
    "FORMAT", "FROM", "WHERE", "SELECT", "CREATE", "REFRESH", "DROP", "SHOW", "GROUP", "AND", "OR",
)
FORMATS = ("jsonl", "parquet", "webdataset")
KINDS = ("duckdb", "mix", "explain_mix", "create_source", "refresh_source", "drop_source", "show_sources",
         "show_source")


# --------------------------------------------------------------------------- expressions
class MixBy(exp.Expression):
    """``MIX BY this [WITH (groups) | WITH NATURAL | WITH SCHEDULE (...)]``."""

    arg_types = {"this": True, "expressions": False, "natural": False, "schedule": False}


class MixGroup(exp.Expression):
    """One entry of a group list: values (or OTHER), a weight, an optional nested MixBy."""

    arg_types = {"expressions": False, "other": False, "wrapped": False, "weight": True, "mix": False}


class MixSchedule(exp.Expression):
    arg_types = {"expressions": True}


class MixStep(exp.Expression):
    """``AT STEP this (groups)``."""

    arg_types = {"this": True, "expressions": True}


class MixUsing(exp.Expression):
    """``USING this (options)``: a feedback-driven weighting algorithm."""

    arg_types = {"this": True, "expressions": False}


class MixLimit(exp.Expression):
    """``LIMIT expression unit`` with unit one of SAMPLES, TOKENS, CHUNKS."""

    arg_types = {"expression": True, "unit": True}


class MixSettings(exp.Expression):
    arg_types = {"expressions": True}


class MixOption(exp.Expression):
    """``this = expression`` inside SETTINGS, USING or CREATE SOURCE ... WITH."""

    arg_types = {"this": True, "expression": True}


class ExplainMix(exp.Expression):
    arg_types = {"this": True}


class CreateSource(exp.Expression):
    """``CREATE [OR REPLACE] SOURCE [IF NOT EXISTS] this FROM pattern [FORMAT f] [WITH (...)]``."""

    arg_types = {"this": True, "pattern": True, "format": False, "expressions": False, "replace": False,
                 "exists": False}


class RefreshSource(exp.Expression):
    arg_types = {"this": True}


class DropSource(exp.Expression):
    arg_types = {"this": True, "exists": False}


class ShowSources(exp.Expression):
    arg_types = {}


class ShowSource(exp.Expression):
    """``SHOW SOURCE this``: one row per property (type, path, non-null fraction)."""

    arg_types = {"this": True}


class _Located(Exception):
    """Internal: carries an SQLError message + token from inside the parser."""


# token type of a plain group value -> the node the group list parser makes of its text
_PLAIN_VALUES = {
    TokenType.VAR: lambda text: exp.Identifier(this=text, quoted=False),
    TokenType.IDENTIFIER: lambda text: exp.Identifier(this=text, quoted=True),
    TokenType.STRING: lambda text: exp.Literal(this=text, is_string=True),
    TokenType.NUMBER: lambda text: exp.Literal(this=text, is_string=False),
}


# --------------------------------------------------------------------------- dialect
class MixSQL(DuckDB):
    """DuckDB's dialect extended with mixsql's MIX clauses and source statements."""

    class Tokenizer(DuckDB.Tokenizer):
        # EXPLAIN is a raw COMMAND in DuckDB's tokenizer (the rest of the statement becomes
        # one string); mixsql tokenizes it normally so EXPLAIN MIX <select> can be parsed.
        KEYWORDS = {k: v for k, v in DuckDB.Tokenizer.KEYWORDS.items() if k != "EXPLAIN"}

    class Parser(DuckDB.Parser):
        QUERY_MODIFIER_PARSERS = {
            **DuckDB.Parser.QUERY_MODIFIER_PARSERS,
            TokenType.LIMIT: lambda self: ("limit", self._parse_mix_limit()),
            TokenType.USING: lambda self: self._parse_mix_using_modifier(),
            TokenType.SETTINGS: lambda self: ("mix_settings", self._parse_mix_settings()),
        }
        QUERY_MODIFIER_TOKENS = set(QUERY_MODIFIER_PARSERS)

        # ------------------------------------------------------------ errors
        def raise_error(self, message: str, token: Token | None = None) -> None:  # type: ignore[override]
            self.mix_error_token = token or self._curr or self._prev
            super().raise_error(message, token)

        def _mix_fail(self, message: str, token: Token | None = None, choices=()) -> None:
            token = token or self._curr or self._prev
            err = _Located(message)
            err.token = token
            err.choices = choices
            raise err

        def _at_mix_by(self) -> bool:
            return bool(
                self._curr and self._next
                and self._curr.token_type == TokenType.VAR and self._curr.text.upper() == "MIX"
                and self._next.text.upper() == "BY"
            )

        def _parse_table_alias(self, *args, **kwargs):
            if self._at_mix_by():  # `FROM samples MIX BY ...`: MIX is not an alias
                return None
            return super()._parse_table_alias(*args, **kwargs)

        def _parse_alias(self, this, explicit: bool = False):
            if not explicit and self._at_mix_by():
                return this
            return super()._parse_alias(this, explicit)

        # ------------------------------------------------------------ statements
        def _parse_statement(self):
            if not self._curr:
                return None
            if self._match_text_seq("EXPLAIN", "MIX"):
                return self._parse_explain_mix()
            if self._curr.token_type == TokenType.VAR and self._curr.text.upper() == "EXPLAIN":
                start = self._curr
                while self._curr and self._curr.token_type != TokenType.SEMICOLON:
                    self._advance()
                end = self._prev
                rest = self._find_sql(self._tokens[self._tokens.index(start) + 1], end) if end is not start else ""
                return self.expression(exp.Command(this="EXPLAIN", expression=exp.Literal.string(rest)))
            if self._match_text_seq("CREATE", "SOURCE"):
                return self._parse_create_source()
            if self._match_text_seq("CREATE", "OR", "REPLACE", "SOURCE"):
                return self._parse_create_source(replace=True)
            if self._match_text_seq("REFRESH", "SOURCE"):
                return self.expression(RefreshSource(this=self._parse_source_name()))
            if self._match_text_seq("DROP", "SOURCE"):
                exists = self._match_text_seq("IF", "EXISTS")
                return self.expression(DropSource(this=self._parse_source_name(), exists=exists or None))
            if self._match_text_seq("SHOW", "SOURCES"):
                return self.expression(ShowSources())
            if self._match_text_seq("SHOW", "SOURCE"):
                return self.expression(ShowSource(this=self._parse_source_name()))
            return super()._parse_statement()

        def _parse_explain_mix(self):
            if not self._curr:
                self._mix_fail("EXPLAIN MIX needs a SELECT ... MIX BY statement after it")
            query = super()._parse_statement()
            if not isinstance(query, exp.Query):
                self._mix_fail("EXPLAIN MIX needs a SELECT ... MIX BY statement after it", self._prev)
            return self.expression(ExplainMix(this=query))

        def _parse_source_name(self):
            tok = self._curr
            name = self._parse_id_var(any_token=False)
            if name is None:
                self._mix_fail("expected a source name", tok)
            return name

        def _parse_create_source(self, replace: bool = False):
            exists = self._match_text_seq("IF", "NOT", "EXISTS")
            if replace and exists:
                self._mix_fail("use either OR REPLACE or IF NOT EXISTS, not both", self._prev)
            name = self._parse_source_name()
            if not self._match(TokenType.FROM):
                self._mix_fail("expected FROM '<glob>' after CREATE SOURCE <name>", choices=("FROM",))
            tok = self._curr
            if not tok or tok.token_type != TokenType.STRING:
                self._mix_fail("expected a quoted file pattern, e.g. FROM 'data/*.jsonl'", tok)
            pattern = self._parse_string()
            fmt = None
            if self._match_text_seq("FORMAT"):
                tok = self._curr
                fmt = self._parse_id_var(any_token=False) or self._parse_string()
                if fmt is None or fmt.name.lower() not in FORMATS:
                    self._mix_fail(
                        f"unknown format {tok.text if tok else ''!r}; expected one of {', '.join(FORMATS)}",
                        tok, choices=FORMATS,
                    )
                fmt = exp.Var(this=fmt.name.lower())
            options = None
            if self._match(TokenType.WITH):
                options = self._parse_mix_options("WITH")
            return self.expression(CreateSource(this=name, pattern=pattern, format=fmt, expressions=options,
                                                replace=replace or None, exists=exists or None))

        # ------------------------------------------------------------ query modifiers
        def _parse_query_modifiers(self, this):
            this = super()._parse_query_modifiers(this)
            if isinstance(this, exp.Select):
                while self._at_mix_by():
                    tok = self._curr
                    if this.args.get("mix"):
                        self._mix_fail("found multiple MIX BY clauses", tok)
                    this.set("mix", self._parse_mix_by())
                    this = super()._parse_query_modifiers(this)
            return this

        def _parse_mix_by(self) -> MixBy:
            start = self._curr
            self._advance(2)  # MIX BY
            key = self._parse_disjunction()
            if key is None:
                self._mix_fail("expected an expression after MIX BY")
            mix = MixBy(this=key)
            if self._match(TokenType.WITH):
                if self._match(TokenType.NATURAL):
                    mix.set("natural", True)
                elif self._match_text_seq("SCHEDULE"):
                    mix.set("schedule", self._parse_mix_schedule())
                elif self._curr and self._curr.token_type == TokenType.L_PAREN:
                    mix.set("expressions", self._parse_mix_groups())
                else:
                    self._mix_fail("expected (<group> <weight>, ...), NATURAL or SCHEDULE after WITH",
                                   choices=("NATURAL", "SCHEDULE"))
            return self.expression(mix, start)

        def _parse_mix_groups(self) -> list[MixGroup]:
            if not self._match(TokenType.L_PAREN):
                self._mix_fail("expected ( to open a group list")
            groups: list[MixGroup] = []
            while True:
                if self._parse_plain_mix_groups(groups):   # the list ended after plain entries
                    break
                groups.append(self._parse_mix_group())
                if not self._match(TokenType.COMMA):
                    break
            if not self._match(TokenType.R_PAREN):
                self._mix_fail("expected , or ) in the group list")
            return groups

        def _parse_plain_mix_groups(self, out: list) -> bool:
            """Consume a run of plain entries ``value weight,`` (a name, quoted name, string or
            number, then a number, no comments) in one loop over the tokens: a list of thousands
            of groups is mostly such entries. Builds what :meth:`_parse_mix_group` builds for
            them. True when the run ended the list (the next token is ``)``)."""
            tokens, i = self._tokens, self._index
            last = len(tokens) - 2
            start = i
            ended = False
            number, plain = TokenType.NUMBER, _PLAIN_VALUES
            while i < last:
                v, w, sep = tokens[i], tokens[i + 1], tokens[i + 2]
                make = plain.get(v.token_type)
                if make is None or w.token_type != number or v.comments or w.comments or sep.comments \
                        or (v.token_type == TokenType.VAR and v.text.upper() == "OTHER"):
                    break
                if sep.token_type == TokenType.COMMA:
                    i += 3
                elif sep.token_type == TokenType.R_PAREN:
                    i += 2
                    ended = True
                else:
                    break
                value = make(v.text)
                value.update_positions(v)
                weight = exp.Literal(this=w.text, is_string=False)
                weight.update_positions(w)
                group = MixGroup(expressions=[value], weight=weight)
                group.update_positions(v)
                out.append(group)
                if ended:
                    break
            if i > start:
                self._advance(i - start)
            return ended

        def _parse_mix_group(self) -> MixGroup:
            tok = self._curr
            group = MixGroup()
            if self._match(TokenType.L_PAREN):
                values = [self._parse_mix_value()]
                while self._match(TokenType.COMMA):
                    values.append(self._parse_mix_value())
                if not self._match(TokenType.R_PAREN):
                    self._mix_fail("expected , or ) in the group's value list")
                group.set("expressions", values)
                group.set("wrapped", True)
            elif tok and tok.token_type == TokenType.VAR and tok.text.upper() == "OTHER":
                self._advance()
                group.set("other", True)
            else:
                group.set("expressions", [self._parse_mix_value()])
            group.set("weight", self._parse_mix_number("a weight after the group's value"))
            if self._at_mix_by():
                group.set("mix", self._parse_mix_by())
            return self.expression(group, tok)

        def _parse_mix_value(self) -> exp.Expr:
            tok = self._curr
            if tok is None:
                self._mix_fail("expected a group value")
            tt = tok.token_type
            if tt == TokenType.L_BRACE:   # CREATE SOURCE ... WITH (properties = {'name': 'path'})
                return self._parse_bitwise()
            if tt == TokenType.DASH and self._next and self._next.token_type == TokenType.NUMBER:
                self._advance()
                num = self._curr
                self._advance()
                return self.expression(exp.Neg(this=self.expression(exp.Literal.number(num.text), num)), tok)
            if tt == TokenType.NUMBER:
                self._advance()
                return self.expression(exp.Literal.number(tok.text), tok)
            if tt == TokenType.STRING:
                self._advance()
                return self.expression(exp.Literal.string(tok.text), tok)
            if tt in (TokenType.TRUE, TokenType.FALSE):
                self._advance()
                return self.expression(exp.Boolean(this=tt == TokenType.TRUE), tok)
            if tt == TokenType.NULL:
                self._advance()
                return self.expression(exp.Null(), tok)
            if tt == TokenType.NATURAL:
                self._advance()
                return self.expression(exp.Var(this="NATURAL"), tok)
            if tt in (TokenType.VAR, TokenType.IDENTIFIER):   # the common case, without the generic path
                self._advance()
                return self.expression(exp.Identifier(this=tok.text, quoted=tt == TokenType.IDENTIFIER), tok)
            if tt in (TokenType.L_PAREN, TokenType.R_PAREN, TokenType.COMMA, TokenType.SEMICOLON):
                self._mix_fail("expected a group value (a name, 'string', number or TRUE/FALSE)", tok)
            ident = self._parse_id_var(any_token=True)
            if ident is None:
                self._mix_fail("expected a group value (a name, 'string', number or TRUE/FALSE)", tok)
            return ident

        def _parse_mix_number(self, what: str) -> exp.Expr:
            tok = self._curr
            neg = tok is not None and tok.token_type == TokenType.DASH
            num = self._next if neg else tok
            if num is None or num.token_type != TokenType.NUMBER:
                self._mix_fail(f"expected {what}", num if neg else tok)
            self._advance(2 if neg else 1)
            lit = self.expression(exp.Literal.number(num.text), num)
            return self.expression(exp.Neg(this=lit), tok) if neg else lit

        def _parse_mix_schedule(self) -> MixSchedule:
            if not self._match(TokenType.L_PAREN):
                self._mix_fail("expected ( after SCHEDULE")
            steps = [self._parse_mix_step()]
            while self._match(TokenType.COMMA):
                steps.append(self._parse_mix_step())
            if not self._match(TokenType.R_PAREN):
                self._mix_fail("expected , or ) in SCHEDULE")
            return self.expression(MixSchedule(expressions=steps))

        def _parse_mix_step(self) -> MixStep:
            tok = self._curr
            if not self._match_text_seq("AT", "STEP"):
                self._mix_fail("expected AT STEP <n> (<group> <weight>, ...)", tok, choices=("AT",))
            step = self._parse_mix_number("a step number after AT STEP")
            return self.expression(MixStep(this=step, expressions=self._parse_mix_groups()), tok)

        def _parse_mix_options(self, where: str) -> list[MixOption]:
            if not self._match(TokenType.L_PAREN):
                self._mix_fail(f"expected ( after {where}")
            opts = []
            if self._match(TokenType.R_PAREN):
                return opts
            while True:
                tok = self._curr
                key = self._parse_id_var(any_token=True)
                if key is None or not self._match(TokenType.EQ):
                    self._mix_fail(f"expected <name> = <value> in {where} (...)", self._curr or tok)
                opts.append(self.expression(MixOption(this=key, expression=self._parse_mix_value()), tok))
                if self._match(TokenType.COMMA):
                    continue
                if not self._match(TokenType.R_PAREN):
                    self._mix_fail(f"expected , or ) in {where} (...)")
                return opts

        def _parse_mix_settings(self) -> MixSettings:
            tok = self._curr
            self._advance()  # SETTINGS
            return self.expression(MixSettings(expressions=self._parse_mix_options("SETTINGS")), tok)

        def _parse_mix_using_modifier(self):
            if self._next and self._next.text.upper() == "SAMPLE":
                return DuckDB.Parser.QUERY_MODIFIER_PARSERS[TokenType.USING](self)
            tok = self._curr
            self._advance()  # USING
            name_tok = self._curr
            name = self._parse_id_var(any_token=False)
            if name is None:
                self._mix_fail("expected an algorithm name after USING, e.g. USING ADO (...)", name_tok)
            opts = self._parse_mix_options("USING " + name.name) if self._curr and self._curr.token_type == TokenType.L_PAREN else None
            return "mix_using", self.expression(MixUsing(this=name, expressions=opts), tok)

        def _parse_mix_limit(self):
            tok = self._curr
            limit = self._parse_limit()
            unit = self._curr
            if (
                isinstance(limit, exp.Limit)
                and unit is not None
                and unit.token_type == TokenType.VAR
                and unit.text.upper() in UNITS
                and not limit.args.get("offset")
                and not limit.args.get("expressions")
            ):
                self._advance()
                return self.expression(MixLimit(expression=limit.expression, unit=unit.text.upper()), tok)
            return limit

    class Generator(DuckDB.Generator):
        AFTER_HAVING_MODIFIER_TRANSFORMS = {
            **DuckDB.Generator.AFTER_HAVING_MODIFIER_TRANSFORMS,
            "mix": lambda self, e: self.sql(e, "mix"),
            "mix_using": lambda self, e: self.sql(e, "mix_using"),
        }

        # sqlglot dispatches only its own classes by method name; register ours explicitly.
        TRANSFORMS = {
            **DuckDB.Generator.TRANSFORMS,
            MixBy: lambda self, e: self.mixby_sql(e),
            MixGroup: lambda self, e: self.mixgroup_sql(e),
            MixSchedule: lambda self, e: self.mixschedule_sql(e),
            MixStep: lambda self, e: self.mixstep_sql(e),
            MixUsing: lambda self, e: self.mixusing_sql(e),
            MixLimit: lambda self, e: self.mixlimit_sql(e),
            MixSettings: lambda self, e: self.mixsettings_sql(e),
            MixOption: lambda self, e: self.mixoption_sql(e),
            ExplainMix: lambda self, e: self.explainmix_sql(e),
            CreateSource: lambda self, e: self.createsource_sql(e),
            RefreshSource: lambda self, e: self.refreshsource_sql(e),
            DropSource: lambda self, e: self.dropsource_sql(e),
            ShowSources: lambda self, e: self.showsources_sql(e),
            ShowSource: lambda self, e: f"SHOW SOURCE {self.sql(e, 'this')}",
        }

        def after_limit_modifiers(self, expression):
            return [*super().after_limit_modifiers(expression), self.sql(expression, "mix_settings")]

        def _mix_body(self, e: MixBy) -> str:
            text = f"MIX BY {self.sql(e, 'this')}"
            if e.args.get("natural"):
                text += " WITH NATURAL"
            elif e.args.get("schedule"):
                text += f" WITH {self.sql(e, 'schedule')}"
            elif e.expressions:
                text += " WITH (" + ", ".join(self.sql(g) for g in e.expressions) + ")"
            return text

        def mixby_sql(self, e: MixBy) -> str:
            return self.seg(self._mix_body(e))

        def mixgroup_sql(self, e: MixGroup) -> str:
            if e.args.get("other"):
                key = "OTHER"
            else:
                vals = ", ".join(self.sql(v) for v in e.expressions)
                key = f"({vals})" if e.args.get("wrapped") else vals
            text = f"{key} {self.sql(e, 'weight')}"
            if e.args.get("mix"):
                text += " " + self._mix_body(e.args["mix"])
            return text

        def mixschedule_sql(self, e: MixSchedule) -> str:
            return "SCHEDULE (" + ", ".join(self.sql(s) for s in e.expressions) + ")"

        def mixstep_sql(self, e: MixStep) -> str:
            return f"AT STEP {self.sql(e, 'this')} (" + ", ".join(self.sql(g) for g in e.expressions) + ")"

        def mixusing_sql(self, e: MixUsing) -> str:
            opts = f" ({', '.join(self.sql(o) for o in e.expressions)})" if e.args.get("expressions") is not None else ""
            return self.seg(f"USING {self.sql(e, 'this')}{opts}")

        def mixlimit_sql(self, e: MixLimit) -> str:
            return self.seg(f"LIMIT {self.sql(e, 'expression')} {e.args['unit']}")

        def mixsettings_sql(self, e: MixSettings) -> str:
            return self.seg(f"SETTINGS ({', '.join(self.sql(o) for o in e.expressions)})")

        def mixoption_sql(self, e: MixOption) -> str:
            return f"{self.sql(e, 'this')} = {self.sql(e, 'expression')}"

        def explainmix_sql(self, e: ExplainMix) -> str:
            return f"EXPLAIN MIX {self.sql(e, 'this')}"

        def createsource_sql(self, e: CreateSource) -> str:
            text = (f"CREATE {'OR REPLACE ' if e.args.get('replace') else ''}SOURCE "
                    f"{'IF NOT EXISTS ' if e.args.get('exists') else ''}{self.sql(e, 'this')} "
                    f"FROM {self.sql(e, 'pattern')}")
            if e.args.get("format"):
                text += f" FORMAT {e.args['format'].name}"
            if e.args.get("expressions") is not None:
                text += f" WITH ({', '.join(self.sql(o) for o in e.expressions)})"
            return text

        def refreshsource_sql(self, e: RefreshSource) -> str:
            return f"REFRESH SOURCE {self.sql(e, 'this')}"

        def dropsource_sql(self, e: DropSource) -> str:
            return f"DROP SOURCE {'IF EXISTS ' if e.args.get('exists') else ''}{self.sql(e, 'this')}"

        def showsources_sql(self, e: ShowSources) -> str:
            return "SHOW SOURCES"


_DIALECT = MixSQL()
_QUICK = re.compile(r"\b(mix|source|sources)\b", re.IGNORECASE)


# --------------------------------------------------------------------------- public API
def classify(sql: str) -> str:
    """Kind of statement, from tokens only: one of :data:`KINDS`. Never raises.

    Anything that is not mixsql-specific is ``"duckdb"`` and should go to DuckDB verbatim.
    """
    if not isinstance(sql, str) or not _QUICK.search(sql):
        return "duckdb"
    try:
        tokens = _DIALECT.tokenize(sql)
    except Exception:  # not our syntax; DuckDB will judge it
        return "duckdb"
    words = [t.text.upper() if t.token_type not in (TokenType.STRING, TokenType.IDENTIFIER) else None for t in tokens]
    if len(words) >= 2:
        first = (words[0], words[1])
        if first == ("EXPLAIN", "MIX"):
            return "explain_mix"
        if first == ("CREATE", "SOURCE") or words[:4] == ["CREATE", "OR", "REPLACE", "SOURCE"]:
            return "create_source"
        if first == ("REFRESH", "SOURCE"):
            return "refresh_source"
        if first == ("DROP", "SOURCE"):
            return "drop_source"
        if first == ("SHOW", "SOURCES"):
            return "show_sources"
        if first == ("SHOW", "SOURCE"):
            return "show_source"
    for a, b in zip(words, words[1:]):
        if a == "MIX" and b == "BY":
            return "mix"
    return "duckdb"


def suggest(word: str, choices, cutoff: float = 0.6) -> str | None:
    """The closest of ``choices`` to ``word`` (difflib), or None."""
    if not word:
        return None
    lookup = {str(c).lower(): str(c) for c in choices}
    hit = difflib.get_close_matches(str(word).lower(), list(lookup), n=1, cutoff=cutoff)
    return lookup[hit[0]] if hit else None


def error_at(sql: str, message: str, start: int | None, end: int | None = None, suggestion=None) -> SQLError:
    """An SQLError at character offsets [start, end] (0-based, inclusive) of ``sql``."""
    if start is None:
        return SQLError(message, sql, suggestion=suggestion)
    line, col = position_of(sql, start)
    length = (end - start + 1) if end is not None and end >= start else 1
    return SQLError(message, sql, line, col, length=length, suggestion=suggestion)


def node_error(sql: str, message: str, node, suggestion=None) -> SQLError:
    """An SQLError anchored at an expression's first token (uses sqlglot position meta)."""
    span = node_span(node)
    return error_at(sql, message, span[0] if span else None, span[1] if span else None, suggestion)


def node_span(node) -> tuple[int, int] | None:
    """(start, end) offsets of the tokens under ``node``, or None when unknown."""
    if node is None:
        return None
    starts, ends = [], []
    for n in node.walk():
        meta = n._meta if hasattr(n, "_meta") else None
        if meta and "start" in meta:
            starts.append(meta["start"])
            ends.append(meta["end"])
    if not starts:
        return None
    return min(starts), max(ends)


def _token_error(sql: str, message: str, token: Token | None, choices=()) -> SQLError:
    if token is None or not token.text:
        return error_at(sql, message, len(sql.rstrip()) if sql.strip() else 0)
    word = token.text
    suggestion = None
    if token.token_type not in (TokenType.STRING, TokenType.NUMBER):
        pool = choices or MIX_KEYWORDS
        hit = suggest(word, pool, cutoff=0.7)
        if hit and hit.upper() != word.upper():
            suggestion = hit
    return error_at(sql, message, token.start, token.end, suggestion)


def _unterminated(sql: str) -> int:
    """Offset of the quote or comment opener left open in ``sql`` (best effort), else -1."""
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if sql.startswith("--", i):
            j = sql.find("\n", i)
            i = n if j < 0 else j + 1
        elif sql.startswith("/*", i):
            j = sql.find("*/", i + 2)
            if j < 0:
                return i
            i = j + 2
        elif c in "'\"":
            j = i + 1
            while True:
                j = sql.find(c, j)
                if j < 0:
                    return i
                if sql.startswith(c * 2, j):
                    j += 2
                    continue
                break
            i = j + 1
        else:
            i += 1
    return -1


_LONG_STATEMENT = 20_000   # characters: the collector is paused while longer ones are parsed


def parse(sql: str) -> exp.Expr:
    """Parse one mixsql statement. Raises :class:`mixsql.errors.SQLError` (and nothing else)."""
    if not isinstance(sql, str):
        raise SQLError(f"expected a SQL string, got {type(sql).__name__}")
    with gc_paused(len(sql) >= _LONG_STATEMENT):
        return _parse(sql)


def _parse(sql: str) -> exp.Expr:
    try:
        tokens = _DIALECT.tokenize(sql)
    except TokenError as exc:
        pos = _unterminated(sql)
        raise error_at(sql, "cannot tokenize the statement (unterminated string or comment?)",
                       pos if pos >= 0 else max(len(sql) - 1, 0)) from None
    except Exception as exc:  # pragma: no cover - defensive
        raise SQLError(f"cannot tokenize the statement: {exc}", sql) from None
    parser = _DIALECT.parser()
    try:
        statements = [s for s in parser.parse(tokens, sql) if s is not None and not isinstance(s, exp.Semicolon)]
    except _Located as exc:
        raise _token_error(sql, str(exc), exc.token, exc.choices) from None
    except ParseError as exc:
        info = exc.errors[0] if exc.errors else {}
        desc = info.get("description") or str(exc).split(". Line")[0]
        tok = getattr(parser, "mix_error_token", None)
        if desc.startswith("Invalid expression / Unexpected token") and tok is not None:
            desc = f"unexpected {tok.text!r}"
        raise _token_error(sql, f"syntax error: {desc}", getattr(parser, "mix_error_token", None)) from None
    except SQLError:
        raise
    except (SqlglotError, RecursionError, ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        raise _token_error(sql, f"syntax error: {exc}", getattr(parser, "mix_error_token", None) or parser._curr) from None
    if not statements:
        raise SQLError("empty statement", sql)
    if len(statements) > 1:
        raise SQLError("one statement at a time, please (found several separated by ';')", sql)
    return statements[0]


def generate(expr: exp.Expr) -> str:
    """SQL text for a parsed mixsql expression; ``parse(generate(e)) == e``."""
    return _DIALECT.generate(expr)


__all__ = [
    "MixSQL", "classify", "parse", "generate", "suggest", "node_error", "node_span", "error_at",
    "MixBy", "MixGroup", "MixSchedule", "MixStep", "MixUsing", "MixLimit", "MixSettings", "MixOption",
    "ExplainMix", "CreateSource", "RefreshSource", "DropSource", "ShowSources", "KINDS", "UNITS",
]
