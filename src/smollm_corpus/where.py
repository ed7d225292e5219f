r"""Row filters: the ``--where`` expressions that keep only the rows a fetch wants.

An expression compares columns with values, such as
``metadata.int_score >= 4 and metadata.language_score > 0.95`` or
``format == 'textbook' and audience in ('college_students', 'researchers')``::

    condition := term ("or" term)*
    term      := factor ("and" factor)*
    factor    := "not" factor | "(" condition ")" | predicate
    predicate := operand ("==" | "=" | "!=" | "<" | "<=" | ">" | ">=") operand
               | column ["not"] "in" "(" value ("," value)* ")"
               | column "is" ["not"] "null"
               | column                      (a boolean column)
    operand   := column | value
    column    := name ("." name)*            (struct fields as parent.child)
    value     := number | 'text' | "text" | true | false

Keywords are case-insensitive; quoted text takes backslash escapes (``\'``, ``\"``, ``\\``,
``\n``, ``\t``). A timestamp column compares with a quoted ISO date/time
(``metadata.date >= '2013-05-18'``); one without a UTC offset means UTC. Nulls follow SQL:
a comparison with null is null, and a row whose condition is null is dropped.

Expressions are parsed and checked against the dataset's schema once, and kept as plain
tuples so a filter pickles to worker processes; ``mask`` turns them into Arrow compute calls
over whole batches.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, NoReturn

import pyarrow as pa
import pyarrow.compute as pc

from .errors import UsageError

# A node is a tuple: ("and" | "or", *nodes), ("not", node), (comparison, node, node),
# ("in" | "not in", column, values), ("is null" | "is not null", column),
# ("col", path), ("lit", value), ("time", naive UTC datetime, time zone of the column).
Node = tuple

_TOKEN = re.compile(
    r"""\s*(?:(?P<num>-?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
    |(?P<str>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
    |(?P<name>[^\W\d]\w*(?:\.[^\W\d]\w*)*)
    |(?P<op>==|!=|<=|>=|[=<>(),]))""",
    re.X | re.S,
)
_KEYWORDS = {"and", "or", "not", "in", "is", "null", "true", "false"}
_COMPARE = {"==": "equal", "!=": "not_equal", "<": "less", "<=": "less_equal", ">": "greater", ">=": "greater_equal"}
_COMPARISONS = {*_COMPARE, "="}
_HINTS = {
    "number": "compare it with a number, like 4 or 0.95",
    "string": "compare it with quoted text, like 'abc'",
    "boolean": "compare it with true or false",
    "timestamp": "compare it with a quoted ISO date/time, like '2013-05-18' or '2013-05-18T05:48:00'",
}
_ESCAPES = str.maketrans({"\\": "\\\\", "'": "\\'", "\n": "\\n", "\t": "\\t"})
_EXCERPT = 76  # widest excerpt of an expression an error message shows
_INT64 = 2**63


@dataclass(frozen=True)
class RowFilter:
    """One or more ``--where`` expressions, ANDed, checked against a dataset's schema."""

    tree: Node

    @property
    def columns(self) -> tuple[str, ...]:
        """Top-level columns the filter reads, in order of first use."""
        return tuple(dict.fromkeys(_columns(self.tree)))

    @property
    def text(self) -> str:
        """The whole filter in canonical form: the same filter always renders the same text."""
        return _render(self.tree)

    def mask(self, batch: pa.RecordBatch | pa.Table) -> pa.BooleanArray:
        """Which rows of ``batch`` to keep.

        Args:
            batch: rows holding at least the filter's ``columns``.

        Returns:
            One boolean per row, without nulls: True keeps the row; a null condition drops it.
        """
        result = _evaluate(self.tree, batch)
        if isinstance(result, pa.ChunkedArray):
            result = result.combine_chunks()
        return pc.fill_null(result, False)

    def __call__(self, batch: pa.RecordBatch, rows: pa.Array) -> tuple[pa.RecordBatch, pa.Array, list]:
        """The filter as a stage of a chunk's work: the rows it keeps, and the others skipped as ``filtered``."""
        keep = self.mask(batch)
        if keep.true_count == len(keep):
            return batch, rows, []
        dropped = rows.filter(pc.invert(keep)).to_pylist()
        return batch.filter(keep), rows.filter(keep), [(row, "filtered", "") for row in dropped]


def parse(texts: Sequence[str], schema: pa.Schema) -> RowFilter:
    """Parse ``--where`` expressions, ANDed, and check them against ``schema``.

    Args:
        texts: one or more expressions (a single string is one expression).
        schema: the Arrow schema of the rows to filter.

    Returns:
        The filter, ready to ``mask`` batches with that schema.

    Raises:
        UsageError: a syntax error, an unknown column or a type mismatch; the message shows
            where in the expression, and lists the columns with their types.
    """
    texts = [texts] if isinstance(texts, str) else list(texts)
    if not texts:
        raise ValueError("parse needs at least one expression")
    return RowFilter(_join("and", [_Parser(text, schema).parse() for text in texts]))


def _join(head: str, nodes: list[Node]) -> Node:
    flat = [child for node in nodes for child in (node[1:] if node[0] == head else (node,))]
    return flat[0] if len(flat) == 1 else (head, *flat)


_KINDS = (
    (pa.types.is_boolean, "boolean"), (pa.types.is_integer, "number"), (pa.types.is_floating, "number"),
    (pa.types.is_string, "string"), (pa.types.is_large_string, "string"), (pa.types.is_timestamp, "timestamp"),
    (pa.types.is_struct, "struct"),
)


def _kind(type_: pa.DataType) -> str:
    return next((kind for test, kind in _KINDS if test(type_)), "other")


def _unescape(match: re.Match) -> str:
    return {"n": "\n", "t": "\t"}.get(match[1], match[1])


def _value_kind(value: Any) -> str:
    return "boolean" if isinstance(value, bool) else "string" if isinstance(value, str) else "number"


class _Token(NamedTuple):
    kind: str  # "val" (a number, text or boolean), "name", "kw" (lowercased), "op" or "end"
    value: Any
    start: int
    end: int


class _Operand(NamedTuple):
    node: Node
    type: pa.DataType | None  # None for a value
    start: int
    end: int


class _Parser:
    """Recursive descent over one expression; every column and value is checked as it is read."""

    def __init__(self, text: str, schema: pa.Schema):
        self.text = text
        self.types: dict[str, pa.DataType] = {}
        self._add_types("", schema)
        self.tokens = list(self._tokenize())
        self.i = 0

    def _add_types(self, prefix: str, fields: pa.Schema | pa.StructType) -> None:
        for field in fields:
            self.types[prefix + field.name] = field.type
            if pa.types.is_struct(field.type):
                self._add_types(prefix + field.name + ".", field.type)

    def _tokenize(self) -> Iterator[_Token]:
        pos = 0
        while match := _TOKEN.match(self.text, pos):
            kind, start, pos = match.lastgroup, match.start(match.lastgroup), match.end()
            word = match.group(kind)
            if kind == "num":
                value = float(word) if re.search("[.eE]", word) or abs(int(word)) >= _INT64 else int(word)
                yield _Token("val", value, start, pos)
            elif kind == "str":
                yield _Token("val", re.sub(r"\\(.)", _unescape, word[1:-1], flags=re.S), start, pos)
            elif kind == "name" and word.lower() in ("true", "false"):
                yield _Token("val", word.lower() == "true", start, pos)
            elif kind == "name" and word.lower() in _KEYWORDS:
                yield _Token("kw", word.lower(), start, pos)
            else:
                yield _Token(kind, word, start, pos)
        start = len(self.text) - len(self.text[pos:].lstrip())
        if start < len(self.text) and self.text[start] in "'\"":
            self.fail(start, len(self.text), f"unterminated text; close it with {self.text[start]}")
        if start < len(self.text):
            self.fail(start, start + 1, f"unexpected character {self.text[start]!r}")
        yield _Token("end", None, len(self.text), len(self.text))

    def fail(self, start: int, end: int, problem: str) -> NoReturn:
        where = f"character {start + 1}" if start < len(self.text) else "the end"
        lo = max(0, min(start - _EXCERPT // 3, len(self.text) - _EXCERPT))
        shown = ("..." if lo else "") + re.sub(r"\s", " ", self.text[lo : lo + _EXCERPT])
        shown += "..." if lo + _EXCERPT < len(self.text) else ""
        carets = " " * (start - lo + (3 if lo else 0)) + "^" * max(1, min(end, lo + _EXCERPT) - start)
        columns = ", ".join(f"{path} ({t})" for path, t in self.types.items() if not pa.types.is_struct(t))
        raise UsageError(f"--where expression, at {where}: {problem}\n  {shown}\n  {carets}\ncolumns: {columns}")

    def unexpected(self, expected: str, hint: str = "") -> NoReturn:
        token = self.tokens[self.i]
        found = "the end" if token.kind == "end" else repr(self.text[token.start : token.end])
        self.fail(token.start, token.end, f"expected {expected}, found {found}{hint}")

    def accept(self, kind: str, value: str) -> _Token | None:
        token = self.tokens[self.i]
        if token.kind == kind and token.value == value:
            self.i += 1
            return token
        return None

    def parse(self) -> Node:
        if self.tokens[0].kind == "end":
            self.fail(0, 0, "empty expression; write a condition, like column == value")
        node = self.condition()
        if self.tokens[self.i].kind != "end":
            self.unexpected("'and' or 'or' between conditions")
        return node

    def condition(self, joiner: str = "or") -> Node:
        """Terms joined by 'or', where a term is factors joined by 'and' (which binds tighter)."""
        part = (lambda: self.condition("and")) if joiner == "or" else self.factor
        parts = [part()]
        while self.accept("kw", joiner):
            parts.append(part())
        return _join(joiner, parts)

    def factor(self) -> Node:
        if self.accept("kw", "not"):
            return ("not", self.factor())
        if opening := self.accept("op", "("):
            node = self.condition()
            if not self.accept("op", ")"):
                self.unexpected(f"')' to close the '(' at character {opening.start + 1}")
            return node
        return self.predicate()

    def predicate(self) -> Node:
        left = self.operand()
        token = self.tokens[self.i]
        if token.kind == "op" and token.value in _COMPARISONS:
            self.i += 1
            return self.compare("==" if token.value == "=" else token.value, left, self.operand())
        negated_in = token.value == "not" and self.tokens[self.i + 1].value == "in"
        if token.kind == "kw" and (token.value in ("is", "in") or negated_in):
            if left.type is None:
                word = "not in" if negated_in else token.value
                self.fail(left.start, token.end, f"'{word}' needs a column on its left, not a value")
            if self.accept("kw", "is"):
                negated = self.accept("kw", "not")
                if not self.accept("kw", "null"):
                    self.unexpected("null after 'is'")
                return ("is not null" if negated else "is null", left.node)
            negated = self.accept("kw", "not")
            self.i += 1  # the 'in'
            return self.member(left, "not in" if negated else "in")
        if left.type is not None and _kind(left.type) == "boolean":
            return left.node
        written = self.text[left.start : left.end]
        self.unexpected(f"a comparison (==, !=, <, <=, >, >=, in, not in, is null) after {written!r}")

    def operand(self) -> _Operand:
        """The next column or value."""
        token = self.tokens[self.i]
        if token.kind == "val":
            self.i += 1
            return _Operand(("lit", token.value), None, token.start, token.end)
        if token.kind == "name" and token.value in self.types:
            self.i += 1
            return _Operand(("col", tuple(token.value.split("."))), self.types[token.value], token.start, token.end)
        if token.kind == "name":
            before = self.tokens[self.i - 1] if self.i else token
            quote = f"; to compare with text, quote it: '{token.value}'" if before.value in _COMPARISONS else ""
            self.fail(token.start, token.end, f"unknown column {token.value!r}{quote}")
        if token.value == "null":
            self.fail(token.start, token.end, "null is not a value; write 'column is null' or 'column is not null'")
        self.unexpected("a column or a value")

    def comparable(self, operand: _Operand) -> str:
        kind = _kind(operand.type) if operand.type is not None else _value_kind(operand.node[1])
        name = self.text[operand.start : operand.end]
        if kind == "struct":
            self.fail(operand.start, operand.end,
                      f"{name} is a struct, not a value; compare one of its fields ({name}.<field>, listed below)")
        if kind == "other":
            self.fail(operand.start, operand.end, f"{name} is {operand.type}, which --where cannot compare; "
                      "test it with 'is null' or 'is not null' only")
        return kind

    def compare(self, op: str, left: _Operand, right: _Operand) -> Node:
        kinds = self.comparable(left), self.comparable(right)
        if left.type is None and right.type is None:
            self.fail(left.start, right.end, "compare a column with a value, not two values")
        if left.type is None or right.type is None:
            column, value = (left, right) if right.type is None else (right, left)
            literal = self.coerce(column, value, left.start, right.end)
            return (op, left.node, literal) if right.type is None else (op, literal, right.node)
        if kinds[0] != kinds[1] or getattr(left.type, "tz", None) != getattr(right.type, "tz", None):
            self.fail(left.start, right.end, f"cannot compare {self.text[left.start:left.end]} ({left.type}) "
                      f"with {self.text[right.start:right.end]} ({right.type})")
        return (op, left.node, right.node)

    def coerce(self, column: _Operand, value: _Operand, start: int, end: int) -> Node:
        """The value as a literal node for ``column``; ``start:end`` is the span a mismatch points at."""
        name, written = self.text[column.start : column.end], self.text[value.start : value.end]
        literal, kind = value.node[1], _kind(column.type)
        if kind == "timestamp" and isinstance(literal, str):
            try:
                moment = dt.datetime.fromisoformat(re.sub("[Zz]$", "+00:00", literal))
            except ValueError:
                self.fail(value.start, value.end, f"{written} is not an ISO date/time for {name} ({column.type}); "
                          "write it like '2013-05-18' or '2013-05-18T05:48:00'")
            if moment.tzinfo is not None:
                moment = moment.astimezone(dt.timezone.utc).replace(tzinfo=None)
            return ("time", moment, column.type.tz)
        if _value_kind(literal) != kind:
            self.fail(start, end, f"cannot compare {name} ({column.type}) with {written}, "
                      f"a {_value_kind(literal)}; {_HINTS[kind]}")
        return value.node

    def member(self, column: _Operand, op: str) -> Node:
        self.comparable(column)
        if not self.accept("op", "("):
            self.unexpected(f"'(' after {op!r}")
        values = []
        while True:
            token = self.tokens[self.i]
            if token.kind != "val":
                self.unexpected(f"a value (number, quoted text, true or false) in the {op!r} list",
                                f"; quote text: '{token.value}'" if token.kind == "name" else "")
            self.i += 1
            value = _Operand(("lit", token.value), None, token.start, token.end)
            values.append(self.coerce(column, value, column.start, token.end))
            if self.accept("op", ")"):
                return (op, column.node, tuple(values))
            if not self.accept("op", ","):
                self.unexpected(f"',' or ')' in the {op!r} list")


def _columns(node: Node) -> Iterator[str]:
    head = node[0]
    if head == "col":
        yield node[1][0]
    elif head in ("in", "not in", "is null", "is not null"):
        yield from _columns(node[1])
    elif head not in ("lit", "time"):
        for child in node[1:]:
            yield from _columns(child)


def _render(node: Node, outer: int = 0) -> str:
    """Canonical text; ``outer`` is the binding strength around it (or 1, and 2, not 3)."""
    head = node[0]
    if head in ("and", "or"):
        strength = 1 if head == "or" else 2
        text = f" {head} ".join(_render(child, strength) for child in node[1:])
        return f"({text})" if outer > strength else text
    if head == "not":
        return "not " + _render(node[1], 3)
    if head == "col":
        return ".".join(node[1])
    if head == "time":
        return _render(("lit", node[1].isoformat(sep=" ")))
    if head == "lit":
        value = node[1]
        if isinstance(value, str):
            return "'" + value.translate(_ESCAPES) + "'"
        return str(value).lower() if isinstance(value, bool) else repr(value)
    if head in ("in", "not in"):
        return f"{_render(node[1])} {head} ({', '.join(_render(v) for v in node[2])})"
    if head in ("is null", "is not null"):
        return f"{_render(node[1])} {head}"
    return f"{_render(node[1])} {head} {_render(node[2])}"


def _evaluate(node: Node, batch: pa.RecordBatch | pa.Table) -> Any:
    head = node[0]
    if head in ("and", "or"):
        combine = pc.and_kleene if head == "and" else pc.or_kleene
        return functools.reduce(combine, (_evaluate(child, batch) for child in node[1:]))
    if head == "not":
        return pc.invert(_evaluate(node[1], batch))
    if head == "col":
        column = batch.column(node[1][0])
        return pc.struct_field(column, list(node[1][1:])) if len(node[1]) > 1 else column
    if head == "lit":
        return pa.scalar(node[1])
    if head == "time":
        return pa.scalar(node[1], pa.timestamp("us", node[2]))
    if head in ("is null", "is not null"):
        column = _evaluate(node[1], batch)
        return pc.is_null(column) if head == "is null" else pc.is_valid(column)
    if head in ("in", "not in"):
        column, values = _evaluate(node[1], batch), node[2]
        type_ = pa.timestamp("us", values[0][2]) if values[0][0] == "time" else None
        found = pc.is_in(column, value_set=pa.array([v[1] for v in values], type_))
        if column.null_count:  # SQL: null is neither in nor not in a list
            found = pc.if_else(pc.is_valid(column), found, pa.scalar(None, pa.bool_()))
        return found if head == "in" else pc.invert(found)
    return getattr(pc, _COMPARE[head])(_evaluate(node[1], batch), _evaluate(node[2], batch))
