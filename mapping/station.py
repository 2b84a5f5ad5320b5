"""One station's state machine: order context, triggers, counters, timers, its packets.

    idle ─start→ running ─pause→ paused ─resume→ running ─planned reached / complete→ completed
                    └──────── abort / new order context ──────→ aborted

Pure like the engine that drives it: time comes from the samples.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from drivers.base import Sample, Scan
from drivers.base import SampleValue as Value
from mapping.expr import Event
from mapping.materials import scan_json
from mapping.model import Counter, Station
from mapping.triggers import FIRED, NEVER, RELEASED, CompiledTrigger, TriggerState
from sync.packet import MAX_INT, NAME_MAX, ORDER_ID_MAX, Draft, param_problem

if TYPE_CHECKING:
    from mapping.engine import Engine

# A gateway clock before this instant has not been set (the "1970 after boot" failure).
EARLIEST_TRUSTED_TIME = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
PRIORITY_TELEMETRY = 0
PRIORITY_KEY_EVENT = 1
_ACTIVE = frozenset({"Running", "Paused"})

START, COMPLETE, ABORT, PAUSE, RESUME = "start", "complete", "abort", "pause", "resume"
COUNT_GOOD, COUNT_SCRAP = "count:good", "count:scrap"
ALARM_PREFIX = "alarm:"
WRONG_TRAVELLER = "wrong_traveller"
COUNT_GAP = "count_gap"  # parts counted during a link loss that no run may take


@dataclass(slots=True)
class CounterTrack:
    """Turns raw device counter readings into non-negative increments.

    A reading below the last one is a rollover when the wrapped distance is small (at most
    `max_step`), otherwise a reset of the device counter: then the new reading itself is what
    was produced since the reset. A forward jump beyond `max_step` is a preset, not production.
    """

    bits: int
    max_step: int
    last: int | None = None

    def advance(self, raw: int) -> int:
        previous, self.last = self.last, raw
        if previous is None or raw == previous:
            return 0
        if raw > previous:
            step = raw - previous
            return step if step <= self.max_step else 0
        wrapped = (raw - previous) % (1 << self.bits)
        if wrapped <= self.max_step:
            return wrapped
        return raw if raw <= self.max_step else 0


@dataclass(slots=True)
class Run:
    """One execution of a work order's operation on this station."""

    run_id: str
    work_order: str
    planned: int | None
    good: int = 0
    scrap: int = 0
    state: str = "Running"
    last_count: float = 0.0  # monotonic time of the last counted part
    progress_at: float = 0.0  # monotonic time of the last progress packet
    progress_good: int = 0
    progress_scrap: int = 0
    stalled: bool = False
    emitted_at: float = 0.0  # monotonic time of the run's last packet (for `keepalive`)

    @property
    def active(self) -> bool:
        return self.state in ("Running", "Paused")


@dataclass(slots=True)
class StationState:
    """Everything a station remembers; kept across a reload when its definition is unchanged."""

    order: str | None = None
    run: Run | None = None
    runs_started: int = 0
    good: CounterTrack | None = None
    scrap: CounterTrack | None = None
    triggers: dict[str, TriggerState] = field(default_factory=dict)
    alarms_active: set[str] = field(default_factory=set)
    scanned_planned: int | None = None
    counted_at: dict[str, float] = field(default_factory=dict)  # last counted edge (debounce)


@dataclass(frozen=True)
class CompiledStation:
    id: str
    spec: Station
    equipment_path: str
    triggers: dict[str, CompiledTrigger]
    order_pattern: re.Pattern[str] | None = None

    @property
    def signals(self) -> frozenset[str]:
        spec = self.spec
        names = {spec.order.signal}
        if spec.counters:
            for counter in (spec.counters.good, spec.counters.scrap):
                if counter is not None and counter.signal is not None:
                    names.add(counter.signal)
        for trigger in self.triggers.values():
            names |= trigger.signals
        return frozenset(names)


def _new_track(counter: Counter | None) -> CounterTrack | None:
    if counter is None or counter.signal is None:
        return None  # no register: an edge-counted counter or none at all
    return CounterTrack(counter.bits, counter.max_step)


def _as_int(value: Value) -> int | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _drop_none(values: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None}


# Why a signal's value cannot be used; the engine names the signal (`Engine.screen`).
ValueCheck = Callable[[Value], "str | None"]
_COUNT_RANGE = "(0..2^63-1)"


def shown(value: Value) -> str:
    """A value as a reason quotes it: numbers as they are, anything else short."""
    if type(value) is int and value.bit_length() > 128:
        return f"an integer of {value.bit_length()} bits"
    text = str(value) if type(value) in (int, float) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def count_problem(value: Value, what: str) -> str | None:
    """Why `value` cannot be a count for `what`: a packet carries whole numbers 0..2^63-1."""
    kind = type(value)
    if kind is int:
        if 0 <= value <= MAX_INT:  # type: ignore[operator]
            return None
    elif kind is float:
        number = float(value)  # type: ignore[arg-type]
        if number.is_integer() and 0 <= number <= MAX_INT:
            return None
        if not math.isfinite(number):
            return f"value {shown(value)} is not a finite number, as {what} needs"
        if not number.is_integer():
            return f"value {shown(value)} is not a whole number, as {what} needs"
    else:
        return f"value {shown(value)} is not a number, as {what} needs"
    return f"value {shown(value)} is out of range for {what} {_COUNT_RANGE}"


def _good_count(value: Value) -> str | None:
    return count_problem(value, "a good count")


def _scrap_count(value: Value) -> str | None:
    return count_problem(value, "a scrap count")


def _planned_value(value: Value) -> str | None:
    return None if value is None else count_problem(value, "planned")


def _scanned_planned(text: str | None) -> int | None:
    """The `planned` group of an order code: ASCII digits, else no planned quantity."""
    if not text or not (text.isascii() and text.isdigit()):
        return None
    return int(text) if len(text) <= 19 else MAX_INT + 1  # past 19 digits: out of range


class StationRuntime:
    """One station's compiled rules bound to its state."""

    def __init__(
        self, engine: Engine, compiled: CompiledStation, state: StationState | None
    ) -> None:
        self.engine = engine
        self.compiled = compiled
        spec = compiled.spec
        self.spec = spec
        counters = spec.counters
        if state is None:
            state = StationState(good=_new_track(counters.good if counters else None),
                                 scrap=_new_track(counters.scrap if counters else None))
            state.triggers = {key: TriggerState(t) for key, t in compiled.triggers.items()}
        self.state = state
        self.order_signal = spec.order.signal
        self._every = spec.progress.every
        self._operation = _drop_none({"id": spec.operation.id, "name": spec.operation.name})
        self._interval = spec.progress.interval
        self.good_signal = counters.good.signal if counters else None
        self.scrap_signal = counters.scrap.signal if counters and counters.scrap else None
        self._keepalive = spec.progress.keepalive
        self._stall_paused = spec.stalled is not None and spec.stalled.while_paused
        self.triggers_by_signal: dict[str, list[tuple[str, TriggerState]]] = {}
        for key, trigger_state in state.triggers.items():
            for name in trigger_state.trigger.signals:
                self.triggers_by_signal.setdefault(name, []).append((key, trigger_state))
        self._now = 0.0
        self._time = 0.0
        self._origin_signal = ""
        # Counter signals read bad (link down) -> the run active then ("" for none); kept in
        # the engine's snapshot (mapping/snapshot.py).
        self.lost_runs: dict[str, str] = {}

    # -- dispatch ------------------------------------------------------------------------------

    def on_sample(
        self, name: str, value: Value, previous: Value, sample: Sample, out: list[Draft]
    ) -> None:
        self._now, self._time, self._origin_signal = sample.monotonic, sample.time, name
        if name == self.order_signal:
            self._order_changed(value, previous, out)
        triggers = self.triggers_by_signal.get(name)
        if triggers:
            env = self.engine.values
            event = Event(name, value, previous)
            now = sample.monotonic
            for key, trigger_state in triggers:
                result = trigger_state.update(env, event, now)
                if result:
                    self._on_trigger(key, result, out)
                if trigger_state.deadline < NEVER:
                    self.engine.wake_at(trigger_state.deadline)
        # Counter values passed `value_checks`: whole numbers in 0..2^63-1.
        if name == self.good_signal:
            good = self.state.good
            if good is not None:
                raw = value if type(value) is int else _as_int(value) or 0
                delta = good.advance(raw)
                if delta or self.lost_runs:
                    self._counted(name, delta, 0, out)
        elif name == self.scrap_signal:
            scrap = self.state.scrap
            if scrap is not None:
                raw = value if type(value) is int else _as_int(value) or 0
                delta = scrap.advance(raw)
                if delta or self.lost_runs:
                    self._counted(name, 0, delta, out)

    # -- counts across a link loss -------------------------------------------------------------

    def counter_lost(self, name: str) -> None:
        """Counter `name` read bad (its link is down): what it advances by until it reads again
        was produced under the run active now, whatever starts in between."""
        if name not in self.lost_runs:
            run = self.state.run
            self.lost_runs[name] = run.run_id if run is not None and run.active else ""

    def _counted(self, name: str, good: int, scrap: int, out: list[Draft]) -> None:
        """Credit a counter's advance: to the current run, unless it was counted during a link
        loss under another run (or none), then it is a `count_gap` alarm with its count."""
        then = self.lost_runs.pop(name, None)
        if not good + scrap:
            return
        run = self.state.run
        now = run.run_id if run is not None and run.active else ""
        if then is None or then == now:
            self._count(good, scrap, out)
            if now and COUNT_GAP in self.state.alarms_active:
                self._alarm(COUNT_GAP, False, "warning", f"counting into {now}", out)
            return
        self.state.alarms_active.discard(COUNT_GAP)  # each gap is told, with its count
        kind = "good" if good else "scrap"
        under = f"under run {then}" if then else "with no run active"
        self._alarm(COUNT_GAP, True, "warning",
                    f"{good + scrap} {kind} parts counted while the link was down ({under}) "
                    "are credited to no run", out)

    def _at(self, deadline: float, now: float, time: float) -> None:
        """A timed event carries the instant its time elapsed, not the tick that noticed it
        (the state it reports held since then: callers pass a later instant when not)."""
        self._now, self._time = deadline, time - (now - deadline)

    def on_time(self, now: float, time: float, out: list[Draft]) -> None:
        self._origin_signal = ""
        for key, trigger_state in self.state.triggers.items():
            deadline = trigger_state.deadline
            if trigger_state.tick(now) == FIRED:
                self._at(deadline, now, time)
                self._on_trigger(key, FIRED, out)
        run = self.state.run
        if run is None or not self._timers_run(run):
            return
        stalled = self.spec.stalled
        if stalled and not run.stalled and now >= run.last_count + stalled.after:
            self._at(run.last_count + stalled.after, now, time)
            run.stalled = True
            self._alarm("stalled", True, stalled.severity,
                        f"running without a count for {stalled.after:g} s", out)
        if run.state != "Running":
            return
        interval = self.spec.progress.interval
        if interval and now >= run.progress_at + interval and (
            run.good, run.scrap) != (run.progress_good, run.progress_scrap):
            # Due at the interval's end, or at the last count if that came later: the
            # quantities it reports are those since then.
            self._at(max(run.progress_at + interval, run.last_count), now, time)
            self._progress(run, None, out)
        keepalive = self._keepalive
        if keepalive and now >= run.emitted_at + keepalive:
            self._at(max(run.emitted_at + keepalive, run.last_count), now, time)
            self._progress(run, None, out)

    def _timers_run(self, run: Run) -> bool:
        return run.state == "Running" or (run.state == "Paused" and self._stall_paused)

    def next_deadline(self) -> float:
        deadline = min((t.deadline for t in self.state.triggers.values()), default=NEVER)
        run = self.state.run
        if run is not None and self._timers_run(run):
            if self.spec.stalled and not run.stalled:
                deadline = min(deadline, run.last_count + self.spec.stalled.after)
            if run.state == "Running":
                if self.spec.progress.interval:
                    deadline = min(deadline, run.progress_at + self.spec.progress.interval)
                if self._keepalive:
                    deadline = min(deadline, run.emitted_at + self._keepalive)
        return deadline

    def _on_trigger(self, key: str, result: int, out: list[Draft]) -> None:
        run = self.state.run
        if key == START and result == FIRED:
            self._start(out)
        elif key in (COUNT_GOOD, COUNT_SCRAP) and result == FIRED:
            self._edge_counted(key, out)
        elif key == PAUSE and run is not None:
            if result == FIRED and run.state == "Running":
                self._transition(run, "keyop.operation.paused", "Paused", out, self._reason())
            elif result == RELEASED and run.state == "Paused" and RESUME not in self.state.triggers:
                self._resume(run, out)
        elif key == RESUME and result == FIRED and run is not None and run.state == "Paused":
            self._resume(run, out)
        elif key == COMPLETE and result == FIRED and run is not None and run.active:
            self._transition(run, "keyop.operation.completed", "Completed", out)
        elif key == ABORT and result == FIRED and run is not None and run.active:
            self._transition(run, "keyop.operation.aborted", "Aborted", out,
                             {"code": "abort", "text": "abort trigger"})
        elif key.startswith(ALARM_PREFIX):
            code = key[len(ALARM_PREFIX):]
            spec = self.spec.alarms[code]
            self._alarm(code, result == FIRED, spec.severity, spec.text, out)

    def _resume(self, run: Run, out: list[Draft]) -> None:
        self._transition(run, "keyop.operation.resumed", "Running", out)
        if not self._stall_paused:
            run.last_count = self._now  # a pause is no stall

    def _edge_counted(self, key: str, out: list[Draft]) -> None:
        """One edge of a `count` expression is one part, unless it is contact bounce."""
        counters = self.spec.counters
        counter = None if counters is None else (
            counters.good if key == COUNT_GOOD else counters.scrap)
        debounce = counter.debounce if counter is not None else None
        last = self.state.counted_at.get(key)
        if debounce and last is not None and self._now - last < debounce:
            return
        self.state.counted_at[key] = self._now
        if key == COUNT_GOOD:
            self._count(1, 0, out)
        else:
            self._count(0, 1, out)

    # -- order context -------------------------------------------------------------------------

    def _parse_order(self, value: Value) -> tuple[str | None, int | None, bool] | None:
        """(order id, scanned planned quantity, whether the code gave one) for a value of the
        order signal; None when a pattern does not match (not an order code)."""
        if value in (None, 0, "", False):
            return None, None, False
        pattern = self.compiled.order_pattern
        scanned = False
        planned = None
        if pattern is not None:
            match = pattern.search(str(value))
            if match is None:
                return None
            groups = match.groupdict()
            value = groups.get("order") or match.group(0)
            planned, scanned = _scanned_planned(groups.get("planned")), True
        return self.spec.order.format.format(value=value), planned, scanned

    def _scanned_operation(self, value: Value) -> str | None:
        """The operation a scanned code names (its pattern's group `operation`), if any."""
        pattern = self.compiled.order_pattern
        if pattern is None or "operation" not in pattern.groupindex or value is None:
            return None
        match = pattern.search(str(value))
        return match.group("operation") if match is not None else None

    def _order_problem(self, value: Value) -> str | None:
        """Why a value of the order signal would make packets the hub must refuse."""
        parsed = self._parse_order(value)
        if parsed is None:
            return None
        order, planned, _ = parsed
        if order is not None and len(order) > ORDER_ID_MAX:
            return (f"value {shown(value)} makes an order id of {len(order)} characters "
                    f"(at most {ORDER_ID_MAX})")
        if order is not None and "\x00" in order:
            return f"value {shown(value)} makes an order id with a NUL character"
        if planned is not None and planned > MAX_INT:
            return f"value {shown(value)}: its planned quantity is out of range {_COUNT_RANGE}"
        return None

    def value_checks(self) -> list[tuple[str, ValueCheck]]:
        """The checks a good sample's value must pass before this station may use it: counts
        and planned quantities a packet can carry, order ids the hub accepts."""
        checks: list[tuple[str, ValueCheck]] = [(self.order_signal, self._order_problem)]
        if self.good_signal is not None:
            checks.append((self.good_signal, _good_count))
        if self.scrap_signal is not None:
            checks.append((self.scrap_signal, _scrap_count))
        planned = self.spec.order.planned
        if isinstance(planned, str):
            checks.append((planned, _planned_value))
        return checks

    def _order_of(self, value: Value) -> str | None:
        parsed = self._parse_order(value)
        if parsed is None:
            return self.state.order  # not an order code: the context stays as it is
        order, planned, scanned = parsed
        if scanned:
            self.state.scanned_planned = planned
        return order

    def _order_changed(self, value: Value, previous: Value, out: list[Draft]) -> None:
        operation = self._scanned_operation(value)
        if operation is not None and operation != self.spec.operation.id:
            self._alarm(WRONG_TRAVELLER, True, "warning",
                        f"wrong traveller scanned: {str(value)[:120]} is for operation "
                        f"{operation[:40]}, this station does {self.spec.operation.id}", out)
            return  # the order context stays what it was
        if operation is not None:
            self._alarm(WRONG_TRAVELLER, False, "warning", None, out)
        order = self._order_of(value)
        if order != self.state.order:
            run = self.state.run
            if run is not None and run.active and run.work_order != order:
                self._transition(
                    run, "keyop.operation.aborted", "Aborted", out,
                    {"code": "order_changed", "text": f"order context became {order}"})
            self.state.order = order
        if isinstance(value, str) and value != previous and value:
            # A code that arrives as plain text (a PLC string, a scanner behind a PLC).
            value = Scan(kind="barcode", code=value)
        if isinstance(value, Scan) and self._scan_matches(value):
            self._context(value, order, out)

    def _scan_matches(self, scan: Scan) -> bool:
        pattern = self.compiled.order_pattern
        return pattern is None or pattern.search(scan.code) is not None

    def _context(self, scan: Scan, order: str | None, out: list[Draft]) -> None:
        """A scan at the station: `keyop.station.context` says what is in front of it now."""
        data: dict[str, Any] = {"kopVersion": "1.0", "equipment": self._equipment()}
        if order is not None:
            data["workOrder"] = {"id": order}
            data["operation"] = dict(self._operation)
        data["scan"] = scan_json(scan)
        self._common(data)
        out.append(Draft("keyop.station.context", self.compiled.equipment_path, self._time,
                         data, PRIORITY_KEY_EVENT))

    def _planned(self) -> int | None:
        planned = self.spec.order.planned
        if planned is None:
            return self.state.scanned_planned  # a `planned` group of the order pattern
        if isinstance(planned, int):
            return planned
        return _as_int(self.engine.values.get(planned))

    def _reason(self) -> dict[str, str] | None:
        pause = self.spec.pause
        if pause is None or pause.reason is None:
            return None
        code = self.engine.values.get(pause.reason)
        if code is None:
            return None
        text = str(code)
        # A code the packet cannot carry is left out: the pause itself is still reported.
        return {"code": text} if 0 < len(text) <= NAME_MAX and "\x00" not in text else None

    # -- run lifecycle -------------------------------------------------------------------------

    def _start(self, out: list[Draft]) -> None:
        state = self.state
        if state.order is None or (state.run is not None and state.run.active):
            return  # no order to report against, or a run is already going
        state.runs_started += 1
        run = Run(
            run_id=f"{state.order}.{self.spec.operation.id}.{self.compiled.id}."
            f"{state.runs_started}",
            work_order=state.order,
            planned=self._planned(),
            last_count=self._now,
            progress_at=self._now,
        )
        state.run = run
        self._emit("keyop.operation.started", run, "Running", "Ready", out)
        self.engine.wake_at(self.next_deadline())

    def _transition(
        self, run: Run, type_: str, new_state: str, out: list[Draft],
        reason: dict[str, str] | None = None,
    ) -> None:
        previous, run.state = run.state, new_state
        self._emit(type_, run, new_state, previous, out, reason=reason)
        if not run.active and run.stalled:
            run.stalled = False
            self._alarm("stalled", False, self.spec.stalled.severity if self.spec.stalled
                        else "warning", "run ended", out)
        self.engine.wake_at(self.next_deadline())

    def _count(self, good: int, scrap: int, out: list[Draft]) -> None:
        run = self.state.run
        if run is None or run.state not in _ACTIVE:
            return
        if run.good + run.scrap + good + scrap > MAX_INT:
            self.engine.refuse(self._origin_signal, f"a count of {good + scrap} would take the "
                               f"run's produced quantity beyond 2^63-1")
            return
        before = run.good
        run.good += good
        run.scrap += scrap
        run.last_count = self._now
        if run.stalled:
            run.stalled = False
            self._alarm("stalled", False, self.spec.stalled.severity if self.spec.stalled
                        else "warning", "counting again", out)
        if scrap:
            self._emit("keyop.operation.scrapped", run, run.state, None, out,
                       delta={"scrap": scrap})
            return
        if run.planned is not None and run.good >= run.planned:
            run.progress_good, run.progress_scrap = run.good, run.scrap
            self._transition(run, "keyop.operation.completed", "Completed", out)
            return
        every = self._every
        if every and run.good // every > before // every:
            self._progress(run, {"good": good}, out)
        elif self._interval:
            self.engine.wake_at(run.progress_at + self._interval)

    def _progress(self, run: Run, delta: dict[str, int] | None, out: list[Draft]) -> None:
        if delta is None:
            delta = {"good": run.good - run.progress_good}
            if run.scrap != run.progress_scrap:
                delta["scrap"] = run.scrap - run.progress_scrap
        run.progress_at = self._now
        run.progress_good, run.progress_scrap = run.good, run.scrap
        self._emit("keyop.operation.progress", run, run.state, None, out, delta=delta,
                   priority=PRIORITY_TELEMETRY)

    # -- packet building -----------------------------------------------------------------------

    def _common(self, data: dict[str, Any]) -> None:
        self.engine.common_fields(data, self._origin_signal, self._time)

    def _equipment(self) -> dict[str, str]:
        return {"path": self.compiled.equipment_path, "level": self.spec.equipment.level}

    def _emit(
        self, type_: str, run: Run, state: str, previous: str | None, out: list[Draft], *,
        reason: dict[str, str] | None = None, delta: dict[str, int] | None = None,
        priority: int = PRIORITY_KEY_EVENT,
    ) -> None:
        state_obj: dict[str, Any] = {"value": state}
        if previous and previous != state:
            state_obj["previous"] = previous
        if reason:
            state_obj["reason"] = reason
        quantities: dict[str, Any] = {"uom": "C62"}
        if run.planned is not None:
            quantities["planned"] = run.planned
        quantities["produced"] = run.good + run.scrap
        quantities["good"] = run.good
        quantities["scrap"] = run.scrap
        quantities["rework"] = 0
        data: dict[str, Any] = {
            "kopVersion": "1.0",
            "workOrder": {"id": run.work_order},
            "operation": dict(self._operation),
            "runId": run.run_id,
            "equipment": self._equipment(),
            "state": state_obj,
            "quantities": quantities,
        }
        if delta:
            data["delta"] = delta
        if self.spec.params:
            params = self._params()
            if params:
                data["params"] = params
        run.emitted_at = self._now
        self._common(data)
        out.append(Draft(type_, f"{run.work_order}/{self._operation['id']}", self._time, data,
                         priority))

    def _alarm(
        self, code: str, active: bool, severity: str, text: str | None, out: list[Draft]
    ) -> None:
        if active == (code in self.state.alarms_active):
            return
        if active:
            self.state.alarms_active.add(code)
        else:
            self.state.alarms_active.discard(code)
        data: dict[str, Any] = {
            "kopVersion": "1.0",
            "equipment": self._equipment(),
            "alarm": _drop_none({"code": code, "severity": severity, "active": active,
                                 "text": text}),
        }
        run = self.state.run
        if run is not None:
            data["workOrder"] = {"id": run.work_order}
            data["operation"] = {"id": self.spec.operation.id}
            data["runId"] = run.run_id
        self._common(data)
        out.append(Draft("keyop.station.alarm", self.compiled.equipment_path, self._time, data,
                         PRIORITY_KEY_EVENT))

    def _params(self) -> dict[str, Any]:
        if not self.spec.params:
            return {}
        params: dict[str, Any] = {}
        values = self.engine.values
        for name, spec in self.spec.params.items():
            value = values.get(spec.signal)
            if value is None or param_problem(value) is not None:
                continue  # a value the packet cannot carry (NaN, too long) is left out
            params[name] = _drop_none({"value": value, "uom": spec.uom, "class": spec.class_})
        return params


_OFFSETS: dict[tuple[str, int], str] = {}


def tz_offset(zone: ZoneInfo, when: float) -> str:
    """The zone's UTC offset at `when`, cached per quarter hour (no zone changes offset
    between two UTC quarter hours)."""
    key = (zone.key, int(when // 900))
    cached = _OFFSETS.get(key)
    if cached is not None:
        return cached
    offset = datetime.fromtimestamp(when, tz=zone).utcoffset() or timedelta(0)
    minutes = int(offset.total_seconds()) // 60
    sign = "+" if minutes >= 0 else "-"
    minutes = abs(minutes)
    text = f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"
    if len(_OFFSETS) > 10_000:
        _OFFSETS.clear()
    _OFFSETS[key] = text
    return text
