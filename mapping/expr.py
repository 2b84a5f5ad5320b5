"""Trigger expressions: `rising(press.busy) and not stop.request`, parsed once, never eval'ed.

Grammar (lowest precedence first):
    expr   := and ('or' and)*
    and    := not ('and' not)*
    not    := 'not' not | cmp
    cmp    := atom (('=='|'!='|'<'|'<='|'>'|'>=') atom)?
    atom   := NUMBER | STRING | 'true' | 'false' | SIGNAL | EDGE '(' SIGNAL ')' | '(' expr ')'
    EDGE   := 'rising' | 'falling' | 'changed' | 'arrival' | 'departure'
A parse error names the column inside the expression, which the loader turns into a YAML position.
"""

from __future__ import annotations

import difflib
import operator
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

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


@dataclass(frozen=True, slots=True)
class Expression:
    text: str
    signals: frozenset[str]
    evaluate: Evaluator = field(compare=False)  # equal text means equal behaviour
    edges: bool = False  # uses rising/falling/changed: true only at the sample of the change

    def __call__(self, env: Env, event: Event) -> bool:
        return bool(self.evaluate(env, event))


def _truthy(value: Value) -> bool:
    return bool(value) if value is not None else False


class _Parser:
    def __init__(self, text: str, known: Collection[str]) -> None:
        self.text = text
        self.known = known
        self.tokens: list[tuple[str, str, int]] = []
        self.signals: set[str] = set()
        self.edges = False
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
        return result

    def parse_or(self) -> Evaluator:
        left = self.parse_and()
        while self.peek()[1] == "or":
            self.take()
            right = self.parse_and()
            left = (lambda a, b: lambda env, ev: _truthy(a(env, ev)) or _truthy(b(env, ev)))(
                left, right
            )
        return left

    def parse_and(self) -> Evaluator:
        left = self.parse_not()
        while self.peek()[1] == "and":
            self.take()
            right = self.parse_not()
            left = (lambda a, b: lambda env, ev: _truthy(a(env, ev)) and _truthy(b(env, ev)))(
                left, right
            )
        return left

    def parse_not(self) -> Evaluator:
        if self.peek()[1] == "not":
            self.take()
            inner = self.parse_not()
            return lambda env, ev: not _truthy(inner(env, ev))
        return self.parse_cmp()

    def parse_cmp(self) -> Evaluator:
        left = self.parse_atom()
        kind, value, _ = self.peek()
        if kind == "op" and value in _COMPARE:
            self.take()
            right = self.parse_atom()
            compare = _COMPARE[value]

            def evaluate(env: Env, ev: Event) -> bool:
                a, b = left(env, ev), right(env, ev)
                if a is None or b is None:
                    return False
                try:
                    return bool(compare(a, b))
                except TypeError:
                    return False

            return evaluate
        return left

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

    def parse_atom(self) -> Evaluator:
        kind, value, pos = self.peek()
        if kind == "num":
            self.take()
            number = float(value) if "." in value else int(value)
            return lambda env, ev: number
        if kind == "str":
            self.take()
            text = value[1:-1]
            return lambda env, ev: text
        if value == "(":
            self.take()
            inner = self.parse_or()
            self.expect(")")
            return inner
        if kind == "name" and value in ("true", "false"):
            self.take()
            flag = value == "true"
            return lambda env, ev: flag
        if kind == "name" and self.index + 1 < len(self.tokens) and self.tokens[self.index + 1][
            1
        ] == "(":
            self.take()
            if value not in EDGES:
                raise ExpressionError(
                    f"unknown function {value!r} (expected one of {', '.join(EDGES)})", pos
                )
            self.expect("(")
            name, _ = self.signal()
            self.expect(")")
            self.edges = True
            return _edge(value, name)
        if kind == "name":
            name, _ = self.signal()
            return lambda env, ev: env.get(name)
        raise ExpressionError(f"expected a value, found {value or 'end of expression'!r}", pos)


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


def compile_expression(text: str, known: Collection[str]) -> Expression:
    """Parse `text`; `known` holds the signal names that exist. Raises `ExpressionError`."""
    if not text.strip():
        raise ExpressionError("empty expression", 0)
    parser = _Parser(text, known)
    evaluate = parser.parse()
    return Expression(text, frozenset(parser.signals), evaluate, parser.edges)
