"""Replay: run the engine over recorded samples with the recording's own time. Pure.

Between two samples more than `tick` apart, time advances in `tick` steps, as the live gateway's
ticker does, so hold times, stalled alarms and timed progress fire at the same points on every
replay.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

from drivers.base import Quality, Sample, SampleValue, Scan
from mapping.engine import CompiledMapping, Engine
from sync.packet import Draft, format_time

DEFAULT_TICK_S = 0.1


def _scan_from_json(obj: dict[str, Any]) -> Scan:
    fields = obj.get("fields") or {}
    return Scan(
        kind=str(obj["kind"]), code=str(obj["code"]),
        fields=tuple(sorted((str(k), str(v)) for k, v in fields.items())),
        epc=obj.get("epc"), event=str(obj.get("event", "read")), antenna=obj.get("antenna"),
        rssi=obj.get("rssi"),
    )


def _scan_to_json(scan: Scan) -> dict[str, Any]:
    record: dict[str, Any] = {"kind": scan.kind, "code": scan.code, "event": scan.event}
    if scan.fields:
        record["fields"] = scan.field_map
    for name in ("epc", "antenna", "rssi"):
        if getattr(scan, name) is not None:
            record[name] = getattr(scan, name)
    return record


def sample_from_json(obj: dict[str, Any], first_time: float | None = None) -> Sample:
    """A recorded sample; `monotonic` defaults to seconds since the recording's first sample.
    A scan is recorded as `{"scan": {...}}` in place of a plain value."""
    time = float(obj["time"])
    monotonic = obj.get("monotonic")
    if monotonic is None:
        monotonic = time - (first_time if first_time is not None else time)
    raw = obj.get("value")
    value: SampleValue
    if isinstance(raw, dict) and "scan" in raw:
        value = _scan_from_json(raw["scan"])
    elif raw is None or isinstance(raw, bool | int | float | str):
        value = raw
    else:
        raise ValueError(f"value must be a number, text, boolean, null or a scan: {raw!r}")
    return Sample(
        signal=str(obj["signal"]),
        value=value,
        quality=Quality(obj.get("quality", "good")),
        time=time,
        monotonic=float(monotonic),
        reason=obj.get("reason"),
    )


def sample_to_json(sample: Sample) -> str:
    value = sample.value
    record: dict[str, Any] = {
        "signal": sample.signal,
        "value": {"scan": _scan_to_json(value)} if isinstance(value, Scan) else value,
        "quality": str(sample.quality),
        "time": round(sample.time, 6),
        "monotonic": round(sample.monotonic, 6),
    }
    if sample.reason:
        record["reason"] = sample.reason
    return json.dumps(record, separators=(",", ":"))


def replay(
    mapping: CompiledMapping, samples: Iterable[Sample], tick: float = DEFAULT_TICK_S
) -> Iterator[Draft]:
    """The drafts the engine emits for `samples`, in order."""
    engine = Engine(mapping)
    last: Sample | None = None
    for sample in samples:
        if last is not None and tick > 0:
            # Multiples of `tick` from the last sample: no drift accumulates over a long gap.
            steps = 1
            while (offset := steps * tick) + last.monotonic < sample.monotonic:
                yield from engine.tick(last.monotonic + offset, last.time + offset)
                steps += 1
        yield from engine.step(sample)
        last = sample


def draft_to_json(seq: int, draft: Draft) -> str:
    """One replayed packet as a stable JSON line (no id: ids are minted at capture)."""
    return json.dumps(
        {"sequence": seq, "type": draft.type, "subject": draft.subject,
         "time": format_time(draft.time), "data": draft.data},
        sort_keys=True, separators=(",", ":"),
    )
