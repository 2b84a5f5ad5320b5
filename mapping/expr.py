"""Trigger expressions: `rising(press.busy) and not stop.request`, parsed once, never eval'ed.

Grammar (lowest precedence first):
    expr   := and ('or' and)*
    and    := not ('and' not)*
    not    := 'not' not | cmp
    cmp    := atom (('=='|'!='|'<'|'<='|'>'|'>=') atom)?
    atom   := NUMBER | STRING | 'true' | 'false' | SIGNAL | EDGE '(' SIGNAL ')' | '(' expr ')'
    EDGE   := 'rising' | 'falling' | 'changed' | 'arrival' | 'departure'
A parse error names the column inside the expression, which the loader turns into a YAML position.

When the loader knows the kind of each signal (`bool`, `number`, `text`, `scan`), expressions are
type-checked: a number compared with text, `rising` of a number, `<` on text are errors; a
conjunction that can never hold (`x == 1 and x == 4`) is a warning.
"""

from __future__ import annotations

import difflib
import operator
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from drivers.base import SampleValue as Value
from drivers.base import Scan

SIGNAL_NAME = r"[A-Za-z_][A-Za-z0-9_.]*"
EDGES = ("rising", "falling", "changed", "arrival", "departure")
_TOKEN = re.compile(
    r"\s*(?:(?P<num>-?\d+(?:\.\d+)?)|(?P<str>'[^']*'|\"[^\"]*\")|(?P<op>==|!=|<=|>=|<|>|\(|\))"
    rf"|(?P<name>{SIGNAL_NAME}))"
)
_COMPARE: dict[str, Callable[[Any, Any], Any]] = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


class ExpressionError(ValueError):
    def __init__(self, message: str, offset: int) -> None:
        super().__init__(message)
        self.offset = offset


@dataclass(frozen=True, slots=True)
class Event:
    """What the engine knows when it evaluates: the signal that just changed and its values."""

    signal: str
    value: Value
    previous: Value


Env = Mapping[str, Value]
Evaluator = Callable[[Env, Event], Value]
Kinds = Mapping[str, str | None]  # signal -> bool | number | text | scan (None: unknown)
_NO_CONST: tuple[()] = ()
_ARTICLE = {"bool": "a bool", "number": "a number", "text": "text", "scan": "a scan"}


def kind_words(kind: str) -> str:
    """`a number`, `text`: how a message names a kind of value."""
    return _ARTICLE.get(kind, kind)


class _Node(NamedTuple):
    """A parsed sub-expression: its evaluator, what kind of value it gives, where it stands;
    `signal`/`const` when it is a bare signal or a literal; `facts` the `signal == literal`
    equalities a conjunction requires (for the never-true warning)."""

    evaluate: Evaluator
    kind: str | None
    text: str
    pos: int
    signal: str | None = None
    const: tuple[Any] | tuple[()] = _NO_CONST
    facts: tuple[tuple[str, Any, int], ...] = ()

    def described(self) -> str:
        if self.signal is not None:
            return f"{self.signal!r} ({kind_words(self.kind)})" if self.kind else repr(self.signal)
        return f"{kind_words(self.kind or 'value')} {self.text or 'expression'}"


@dataclass(frozen=True, slots=True)
class Expression:
    text: str
    signals: frozenset[str]
    evaluate: Evaluator = field(compare=False)  # equal text means equal behaviour
    edges: bool = False  # uses rising/falling/changed: true only at the sample of the change
    warnings: tuple[tuple[str, int], ...] = field(default=(), compare=False)  # (text, offset)

    def __call__(self, env: Env, event: Event) -> bool:
        return bool(self.evaluate(env, event))


def _truthy(value: Value) -> bool:
    return bool(value) if value is not None else False


class _Parser:
    def __init__(self, text: str, known: Collection[str], kinds: Kinds) -> None:
        self.text = text
        self.known = known
        self.kinds = kinds
        self.tokens: list[tuple[str, str, int]] = []
        self.signals: set[str] = set()
        self.edges = False
        self.warnings: list[tuple[str, int]] = []
        pos = 0
        while pos < len(text):
            while pos < len(text) and text[pos].isspace():
                pos += 1
            if pos == len(text):
                break
            match = _TOKEN.match(text, pos)
            if not match:
                raise ExpressionError(f"unexpected character {text[pos]!r}", pos)
            kind = match.lastgroup or ""
            self.tokens.append((kind, match.group(kind), match.start(kind)))
            pos = match.end()
        self.index = 0

    def peek(self) -> tuple[str, str, int]:
        if self.index < len(self.tokens):
            return self.tokens[self.index]
        return ("end", "", len(self.text))

    def take(self) -> tuple[str, str, int]:
        token = self.peek()
        self.index += 1
        return token

    def expect(self, text: str) -> None:
        _kind, value, pos = self.take()
        if value != text:
            raise ExpressionError(f"expected {text!r}, found {value or 'end of expression'!r}", pos)

    def parse(self) -> Evaluator:
        result = self.parse_or()
        kind, value, pos = self.peek()
        if kind != "end":
            raise ExpressionError(f"unexpected {value!r}", pos)
        return result.evaluate

    def parse_or(self) -> _Node:
        left = self.parse_and()
        while self.peek()[1] == "or":
            self.take()
            right = self.parse_and()
            evaluate = (lambda a, b: lambda env, ev: _truthy(a(env, ev)) or _truthy(b(env, ev)))(
                left.evaluate, right.evaluate)
            left = _Node(evaluate, "bool", "", left.pos)
        return left

    def parse_and(self) -> _Node:
        left = self.parse_not()
        while self.peek()[1] == "and":
            self.take()
            right = self.parse_not()
            evaluate = (lambda a, b: lambda env, ev: _truthy(a(env, ev)) and _truthy(b(env, ev)))(
                left.evaluate, right.evaluate)
            left = _Node(evaluate, "bool", "", left.pos, facts=self._merge(left, right))
        return left

    def _merge(self, left: _Node, right: _Node) -> tuple[tuple[str, Any, int], ...]:
        """The equalities both sides require; two different values for one signal can never
        hold at once (a warning at the second)."""
        for signal, value, pos in right.facts:
            for known, other, _ in left.facts:
                if known == signal and other != value:
                    self.warnings.append((f"can never be true: {signal!r} cannot be {other!r} "
                                          f"and {value!r} at once", pos))
                    break
        return left.facts + right.facts

    def parse_not(self) -> _Node:
        if self.peek()[1] == "not":
            _, _, pos = self.take()
            inner = self.parse_not().evaluate
            return _Node(lambda env, ev: not _truthy(inner(env, ev)), "bool", "", pos)
        return self.parse_cmp()

    def parse_cmp(self) -> _Node:
        left = self.parse_atom()
        kind, value, _ = self.peek()
        if kind == "op" and value in _COMPARE:
            self.take()
            right = self.parse_atom()
            self._check_compare(left, value, right)
            compare = _COMPARE[value]
            a, b = left.evaluate, right.evaluate

            def evaluate(env: Env, ev: Event) -> bool:
                x, y = a(env, ev), b(env, ev)
                if x is None or y is None:
                    return False
                try:
                    return bool(compare(x, y))
                except TypeError:
                    return False

            facts: tuple[tuple[str, Any, int], ...] = ()
            if value == "==" and left.signal is not None and right.const:
                facts = ((left.signal, right.const[0], left.pos),)
            elif value == "==" and right.signal is not None and left.const:
                facts = ((right.signal, left.const[0], right.pos),)
            return _Node(evaluate, "bool", "", left.pos, facts=facts)
        return left

    def _check_compare(self, left: _Node, op: str, right: _Node) -> None:
        """Comparisons that can never be what the integrator meant are errors."""
        if op in ("==", "!="):
            kinds = {left.kind, right.kind}
            if None in kinds or len(kinds) == 1 or kinds == {"bool", "number"}:
                return
            raise ExpressionError(
                f"compares {left.described()} with {right.described()}: "
                f"{op} needs two values of one kind", right.pos)
        for side in (left, right):
            if side.kind not in (None, "number"):
                raise ExpressionError(f"{op} needs numbers, {side.described()} is not one",
                                      side.pos)

    def signal(self) -> tuple[str, int]:
        kind, value, pos = self.take()
        if kind != "name" or value in ("and", "or", "not", "true", "false"):
            raise ExpressionError(f"expected a signal name, found {value or 'end'!r}", pos)
        if value not in self.known:
            close = difflib.get_close_matches(value, list(self.known), n=1, cutoff=0.75)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ExpressionError(f"unknown signal {value!r}{hint}", pos)
        self.signals.add(value)
        return value, pos

    def parse_atom(self) -> _Node:
        kind, value, pos = self.peek()
        if kind == "num":
            self.take()
            number = float(value) if "." in value else int(value)
            return _Node(lambda env, ev: number, "number", value, pos, const=(number,))
        if kind == "str":
            self.take()
            text = value[1:-1]
            return _Node(lambda env, ev: text, "text", value, pos, const=(text,))
        if value == "(":
            self.take()
            inner = self.parse_or()
            self.expect(")")
            return inner._replace(pos=pos)
        if kind == "name" and value in ("true", "false"):
            self.take()
            flag = value == "true"
            return _Node(lambda env, ev: flag, "bool", value, pos, const=(flag,))
        if kind == "name" and self.index + 1 < len(self.tokens) and self.tokens[self.index + 1][
            1
        ] == "(":
            return self.parse_edge()
        if kind == "name":
            name, _ = self.signal()
            return _Node(lambda env, ev: env.get(name), self.kinds.get(name), name, pos,
                         signal=name)
        raise ExpressionError(f"expected a value, found {value or 'end of expression'!r}", pos)

    def parse_edge(self) -> _Node:
        _, function, pos = self.take()
        if function not in EDGES:
            raise ExpressionError(
                f"unknown function {function!r} (expected one of {', '.join(EDGES)})", pos
            )
        self.expect("(")
        name, at = self.signal()
        self.expect(")")
        self.edges = True
        kind = self.kinds.get(name)
        wanted = _EDGE_KIND.get(function)
        if wanted is not None and kind is not None and kind != wanted:
            hint = (f" (for a number, compare it: {name} > 0)"
                    if kind == "number" and wanted == "bool" else "")
            raise ExpressionError(f"{function}() needs {kind_words(wanted)} signal, {name!r} is "
                                  f"{kind_words(kind)}{hint}", at)
        return _Node(_edge(function, name), "bool", function, pos)


_EDGE_KIND = {"rising": "bool", "falling": "bool", "arrival": "scan", "departure": "scan"}


def _tag_event(ev: Event, name: str, event: str) -> bool:
    return ev.signal == name and isinstance(ev.value, Scan) and ev.value.event == event


def _edge(kind: str, name: str) -> Evaluator:
    if kind in ("arrival", "departure"):  # an RFID tag entering or leaving the reader's field
        return lambda env, ev: _tag_event(ev, name, kind)
    if kind == "rising":
        return lambda env, ev: (
            ev.signal == name and _truthy(ev.value) and not _truthy(ev.previous)
            and ev.previous is not None
        )
    if kind == "falling":
        return lambda env, ev: (
            ev.signal == name and not _truthy(ev.value) and _truthy(ev.previous)
        )
    return lambda env, ev: ev.signal == name and ev.previous is not None and ev.value != ev.previous


def compile_expression(text: str, known: Collection[str], kinds: Kinds | None = None) -> Expression:
    """Parse `text`; `known` holds the signal names that exist, `kinds` what kind of value each
    gives where that is known. Raises `ExpressionError`."""
    if not text.strip():
        raise ExpressionError("empty expression", 0)
    parser = _Parser(text, known, kinds or {})
    evaluate = parser.parse()
    return Expression(text, frozenset(parser.signals), evaluate, parser.edges,
                      tuple(parser.warnings))
