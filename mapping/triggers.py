"""Compiled triggers and their per-station state: pulses, levels, hold times, hysteresis.

A trigger built from an expression that uses `rising`, `falling` or `changed` is a *pulse*: it
fires each time it evaluates true. Any other trigger is a *level*: it turns on when its
condition becomes true (after its hold time, past its hysteresis threshold) and off when the
condition ends. Time comes only from the samples (monotonic seconds), never from a clock.
"""

from __future__ import annotations

from dataclasses import dataclass

from mapping.expr import Env, Event, Expression

NEVER = float("inf")
FIRED = 1
RELEASED = -1
UNCHANGED = 0


@dataclass(frozen=True)
class CompiledTrigger:
    text: str
    signals: frozenset[str]
    expression: Expression | None = None
    hold: float | None = None
    signal: str | None = None
    on_above: float | None = None
    off_below: float | None = None
    on_below: float | None = None
    off_above: float | None = None

    @property
    def pulse(self) -> bool:
        return self.expression is not None and self.expression.edges


class TriggerState:
    """One trigger's memory inside one station."""

    __slots__ = ("deadline", "level", "raw", "trigger")

    def __init__(self, trigger: CompiledTrigger) -> None:
        self.trigger = trigger
        self.raw = False  # the condition itself, before the hold time
        self.level = False  # the trigger's output for level triggers
        self.deadline = NEVER

    def _condition(self, env: Env, event: Event) -> bool:
        trigger = self.trigger
        if trigger.expression is not None:
            return trigger.expression(env, event)
        value = env.get(trigger.signal or "")
        if not isinstance(value, int | float) or isinstance(value, bool):
            return self.raw
        if trigger.on_above is not None and trigger.off_below is not None:
            return value > trigger.on_above if not self.raw else value >= trigger.off_below
        if trigger.on_below is not None and trigger.off_above is not None:
            return value < trigger.on_below if not self.raw else value <= trigger.off_above
        return self.raw

    def update(self, env: Env, event: Event, now: float) -> int:
        """Re-evaluate on a sample of one of the trigger's signals."""
        raw = self._condition(env, event)
        if self.trigger.pulse:
            self.raw = raw
            return FIRED if raw else UNCHANGED
        if raw == self.raw:
            return self.tick(now)
        self.raw = raw
        if not raw:
            self.deadline = NEVER
            if self.level:
                self.level = False
                return RELEASED
            return UNCHANGED
        if self.trigger.hold:
            self.deadline = now + self.trigger.hold
            return UNCHANGED
        self.level = True
        return FIRED

    def tick(self, now: float) -> int:
        """Time passed: a held condition turns the level on once its hold time is over."""
        if self.raw and not self.level and now >= self.deadline:
            self.level = True
            self.deadline = NEVER
            return FIRED
        return UNCHANGED
