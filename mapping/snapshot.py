"""The engine's per-station state as a JSON-able dict, and back: what a restart continues from.

Pure like the engine: the caller passes the monotonic instant of the restore and decides where
the snapshot is kept (the gateway writes it with the outbox commit of the packets it produced).

Monotonic instants are stored relative to the snapshot's own instant (`at`, the last sample
the engine saw), and a restore places them relative to the restore's instant: the time the
gateway was down does not count towards a hold, a stall or a progress interval.

A restore is tolerant of a changed mapping: what still matches (same station id and operation,
same trigger text, same counter signal and width, alarm codes still defined) is restored, the
rest is named in the returned notes. A snapshot that is not one (wrong shape, wrong types,
another version) raises `SnapshotError`, and the engine is left as it was.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from drivers.base import SampleValue as Value
from mapping.station import (
    ALARM_PREFIX,
    COUNT_GAP,
    COUNT_GOOD,
    COUNT_SCRAP,
    WRONG_TRAVELLER,
    CounterTrack,
    Run,
    StationRuntime,
)
from mapping.triggers import NEVER

if TYPE_CHECKING:
    from mapping.engine import Engine

SNAPSHOT_VERSION = 1
_STATES = ("Running", "Paused", "Completed", "Aborted")
_RUN_COUNTS = ("good", "scrap", "progress_good", "progress_scrap")
_RUN_TIMES = ("last_count", "progress_at", "emitted_at")


class SnapshotError(ValueError):
    """The snapshot cannot be used: the message names the field and what was expected."""


# -- taking ----------------------------------------------------------------------------------


def _scalar(value: Value) -> bool:
    if value is None or isinstance(value, bool | int | str):
        return True
    return isinstance(value, float) and math.isfinite(value)


def _rel(instant: float, at: float) -> float | None:
    return None if instant == NEVER else instant - at


def take(engine: Engine) -> dict[str, Any]:
    """The engine's state now: signal values, and per station its order context, run,
    counter baselines, trigger levels and timers, active alarms."""
    at = engine.now
    return {
        "version": SNAPSHOT_VERSION,
        "mapping": engine.mapping.digest,
        "at": at,
        "values": {name: value for name, value in engine.values.items() if _scalar(value)},
        "stations": {runtime.compiled.id: _station(runtime, at) for runtime in engine.stations},
    }


def _station(runtime: StationRuntime, at: float) -> dict[str, Any]:
    state = runtime.state
    counters: dict[str, Any] = {}
    for name, track, signal in (("good", state.good, runtime.good_signal),
                                ("scrap", state.scrap, runtime.scrap_signal)):
        if track is not None and track.last is not None:
            counters[name] = {"signal": signal, "bits": track.bits, "last": track.last}
    run = state.run
    return {
        "operation": runtime.spec.operation.id,
        "order": state.order,
        "runs_started": state.runs_started,
        "scanned_planned": state.scanned_planned,
        "alarms": sorted(state.alarms_active),
        "counters": counters,
        "lost": dict(runtime.lost_runs),
        "triggers": {key: {"text": t.trigger.text, "raw": t.raw, "level": t.level,
                           "deadline": _rel(t.deadline, at)}
                     for key, t in state.triggers.items()},
        "counted_at": {key: when - at for key, when in state.counted_at.items()},
        "run": None if run is None else {
            "run_id": run.run_id, "work_order": run.work_order, "planned": run.planned,
            "state": run.state, "stalled": run.stalled,
            **{name: getattr(run, name) for name in _RUN_COUNTS},
            **{name: getattr(run, name) - at for name in _RUN_TIMES},
        },
    }


# -- reading (strict about shape and types) --------------------------------------------------


def _get(data: dict[str, Any], key: str, kinds: type | tuple[type, ...], where: str,
         *, optional: bool = False) -> Any:
    value = data.get(key)
    if value is None and optional:
        return None
    if isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)):
        value = None  # a bool is not a number here
    if not isinstance(value, kinds):
        names = kinds.__name__ if isinstance(kinds, type) else " or ".join(
            k.__name__ for k in kinds)
        raise SnapshotError(f"{where}.{key}: expected {names}, found {value!r:.60}")
    return value


def _count(data: dict[str, Any], key: str, where: str, *, optional: bool = False) -> Any:
    value = _get(data, key, int, where, optional=optional)
    if value is not None and value < 0:
        raise SnapshotError(f"{where}.{key}: expected a count >= 0, found {value}")
    return value


def _time(data: dict[str, Any], key: str, where: str) -> float | None:
    value = _get(data, key, (int, float), where, optional=True)
    if value is not None and not math.isfinite(value):
        raise SnapshotError(f"{where}.{key}: expected a finite number, found {value}")
    return None if value is None else float(value)


def _run(data: dict[str, Any], where: str, now: float) -> Run:
    state = _get(data, "state", str, where)
    if state not in _STATES:
        raise SnapshotError(f"{where}.state: expected one of {', '.join(_STATES)}, "
                            f"found {state!r:.40}")
    run = Run(_get(data, "run_id", str, where), _get(data, "work_order", str, where),
              _count(data, "planned", where, optional=True), state=state,
              stalled=_get(data, "stalled", bool, where))
    for name in _RUN_COUNTS:
        setattr(run, name, _count(data, name, where))
    for name in _RUN_TIMES:
        offset = _time(data, name, where)
        setattr(run, name, now + (offset or 0.0))
    return run


# -- restoring -------------------------------------------------------------------------------


def restore(engine: Engine, data: object, now: float) -> list[str]:
    """Put a snapshot's state into a fresh `engine`, its timers placed relative to `now` (the
    engine's monotonic instant). Return notes on what did not match the mapping and was left
    out; raise `SnapshotError` (engine untouched) for a snapshot that is not one."""
    if not isinstance(data, dict):
        raise SnapshotError(f"expected an object, found {type(data).__name__}")
    version = data.get("version")
    if version != SNAPSHOT_VERSION:
        raise SnapshotError(f"version: expected {SNAPSHOT_VERSION}, found {version!r:.20}")
    values = _get(data, "values", dict, "snapshot")
    stations = _get(data, "stations", dict, "snapshot")
    runtimes = {runtime.compiled.id: runtime for runtime in engine.stations}
    # Everything is read (and checked) before anything is applied.
    plans = [_plan(runtime, _get(stations, sid, dict, "stations"), f"stations.{sid}", now)
             for sid, runtime in runtimes.items() if sid in stations]
    notes = [f"station {sid!r} is not in the mapping any more: its state was dropped"
             for sid in stations if sid not in runtimes]
    notes += [f"station {sid!r} is new: it starts idle" for sid in runtimes
              if sid not in stations]
    for apply, dropped in plans:
        apply()
        notes += dropped
    known = engine.mapping.model.signals
    for name, value in values.items():
        # An edge-counted signal starts from a new baseline, as after a reconnect: an edge
        # between the snapshot and now cannot be told from the restart itself.
        if name in known and name not in engine.rebase_signals and _scalar(value):
            engine.values[name] = value
    engine.now = now
    for runtime in engine.stations:
        engine.wake_at(runtime.next_deadline())
    return notes


def _plan(runtime: StationRuntime, data: dict[str, Any], where: str, now: float
          ) -> tuple[Any, list[str]]:
    """Check one station's snapshot; return (apply, notes) without changing anything yet."""
    sid = runtime.compiled.id
    operation = _get(data, "operation", str, where)
    if operation != runtime.spec.operation.id:
        return (lambda: None), [f"station {sid!r}: its operation changed from {operation!r} to "
                                f"{runtime.spec.operation.id!r}: its state was dropped"]
    notes: list[str] = []
    order = _get(data, "order", str, where, optional=True)
    runs_started = _count(data, "runs_started", where)
    scanned = _count(data, "scanned_planned", where, optional=True)
    run_data = _get(data, "run", dict, where, optional=True)
    run = None if run_data is None else _run(run_data, f"{where}.run", now)
    counters = _counters(runtime, _get(data, "counters", dict, where), f"{where}.counters",
                         notes)
    triggers = _triggers(runtime, _get(data, "triggers", dict, where), f"{where}.triggers",
                         now, notes)
    lost = _lost(runtime, _get(data, "lost", dict, where, optional=True) or {},
                 f"{where}.lost")
    counted_data = _get(data, "counted_at", dict, where)
    counted = {key: now + (_time(counted_data, key, f"{where}.counted_at") or 0.0)
               for key in counted_data if key in (COUNT_GOOD, COUNT_SCRAP)}
    alarms = set()
    defined = {key[len(ALARM_PREFIX):] for key in runtime.compiled.triggers
               if key.startswith(ALARM_PREFIX)} | {WRONG_TRAVELLER, COUNT_GAP}
    if runtime.spec.stalled is not None:
        defined.add("stalled")
    for code in _get(data, "alarms", list, where):
        if not isinstance(code, str):
            raise SnapshotError(f"{where}.alarms: expected alarm codes, found {code!r:.40}")
        if code in defined:
            alarms.add(code)
        else:
            notes.append(f"station {sid!r}: alarm {code!r} is not defined any more: dropped "
                         "while active")

    def apply() -> None:
        state = runtime.state
        state.order, state.runs_started, state.scanned_planned = order, runs_started, scanned
        state.run, state.alarms_active, state.counted_at = run, alarms, counted
        for track, last in counters:
            track.last = last
        runtime.lost_runs = lost
        for trigger_state, (raw, level, deadline) in triggers:
            trigger_state.raw, trigger_state.level, trigger_state.deadline = raw, level, deadline

    return apply, notes


def _lost(runtime: StationRuntime, data: dict[str, Any], where: str) -> dict[str, str]:
    """The counters read bad when the snapshot was taken, each with the run active then; a
    signal that is no longer a counter of the station is left out."""
    counters = {runtime.good_signal, runtime.scrap_signal}
    found = {}
    for name in data:
        run = _get(data, name, str, where)
        if name in counters:
            found[name] = run
    return found


def _counters(runtime: StationRuntime, data: dict[str, Any], where: str, notes: list[str]
              ) -> list[tuple[CounterTrack, int]]:
    sid = runtime.compiled.id
    state = runtime.state
    found = []
    for name, track, signal in (("good", state.good, runtime.good_signal),
                                ("scrap", state.scrap, runtime.scrap_signal)):
        saved = _get(data, name, dict, where, optional=True)
        if saved is None:
            continue
        last = _count(saved, "last", f"{where}.{name}")
        bits = _count(saved, "bits", f"{where}.{name}")
        if track is None or saved.get("signal") != signal or bits != track.bits:
            notes.append(f"station {sid!r}: the {name} counter changed: its next reading is a "
                         "new baseline")
            continue
        found.append((track, last))
    return found


def _triggers(runtime: StationRuntime, data: dict[str, Any], where: str, now: float,
              notes: list[str]) -> list[tuple[Any, tuple[bool, bool, float]]]:
    sid = runtime.compiled.id
    found = []
    current = runtime.state.triggers
    for key, saved_any in data.items():
        saved = _get(data, key, dict, where)
        at = f"{where}.{key}"
        raw, level = _get(saved, "raw", bool, at), _get(saved, "level", bool, at)
        offset = _time(saved, "deadline", at)
        trigger_state = current.get(key)
        if trigger_state is None or saved_any.get("text") != trigger_state.trigger.text:
            notes.append(f"station {sid!r}: trigger {key!r} changed or went: it starts fresh")
            continue
        found.append((trigger_state, (raw, level, NEVER if offset is None else now + offset)))
    return found
