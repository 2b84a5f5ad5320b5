"""The press station's mapping against recorded sample sequences (no I/O)."""

from __future__ import annotations

from pathlib import Path

import pytest

from drivers.base import Quality, Sample
from mapping.engine import Engine
from mapping.load import load_mapping
from mapping.station import CounterTrack
from sync import packet as pk

CONFIG = Path(__file__).resolve().parent.parent / "config" / "mapping.yaml"
T0 = 1_795_000_000.0


class Recorder:
    """Feeds samples with increasing time, as a poll loop would."""

    def __init__(self) -> None:
        _, compiled = load_mapping(CONFIG)
        self.engine = Engine(compiled)
        self.t = T0
        self.packets: list[pk.Draft] = []

    def feed(self, signal: str, value: object, quality: Quality = Quality.GOOD) -> None:
        self.t += 0.02
        sample = Sample(signal, value, quality, self.t, self.t - T0)  # type: ignore[arg-type]
        self.packets += self.engine.step(sample)

    def summary(self) -> list[tuple[str, str, int, int, int | None]]:
        out = []
        for draft in self.packets:
            q = draft.data["quantities"]
            out.append((draft.type.rsplit(".", 1)[1], draft.data["workOrder"]["id"], q["good"],
                        q["scrap"], q.get("planned")))
        return out


def _run_order(rec: Recorder, number: int, planned: int, cycles: str, good: int, scrap: int) -> \
        tuple[int, int]:
    rec.feed("press.order", number)
    rec.feed("press.planned", planned)
    rec.feed("press.busy", True)
    for cycle in cycles:
        if cycle == "g":
            good = (good + 1) % 2**32
            rec.feed("press.good", good)
        else:
            scrap = (scrap + 1) % 2**16
            rec.feed("press.scrap", scrap)
    rec.feed("press.busy", False)
    return good, scrap


def test_press_orders_make_the_expected_packets_across_counter_rollover() -> None:
    rec = Recorder()
    # Idle readings first: baselines only, nothing emitted.
    rec.feed("press.busy", False)
    rec.feed("press.good", 2**32 - 3)
    rec.feed("press.scrap", 2**16 - 1)
    rec.feed("press.order", 0)
    good, scrap = _run_order(rec, 1001, 7, "ggsgggsgg", 2**32 - 3, 2**16 - 1)
    _run_order(rec, 1002, 5, "ggggg", good, scrap)
    assert rec.summary() == [
        ("started", "WO-1001", 0, 0, 7),
        ("scrapped", "WO-1001", 2, 1, 7),
        ("progress", "WO-1001", 5, 1, 7),
        ("scrapped", "WO-1001", 5, 2, 7),
        ("completed", "WO-1001", 7, 2, 7),
        ("started", "WO-1002", 0, 0, 5),
        ("completed", "WO-1002", 5, 0, 5),
    ]
    first = rec.packets[0]
    assert first.subject == "WO-1001/OP10"
    assert first.data["equipment"]["path"] == "plant1/body/line-3/press-1"
    assert first.data["runId"] == "WO-1001.OP10.press-1.1"
    assert first.data["tzOffset"] == "+01:00"  # Europe/Berlin in November
    assert first.data["timeQuality"] == "synced"
    # Every draft is a valid v1 packet once it gets its identity.
    for seq, draft in enumerate(rec.packets, start=1):
        pk.decode(pk.render(draft, id="01JDA5Q1Y4S7M2R8K3VZC6TB9E", source="plant1/edge-07",
                            sequence=seq, epoch="01JCZ0K3M9B4X2W7Q5N8D1F6HA", recorded=rec.t))


def test_bad_samples_change_nothing_and_counting_resumes() -> None:
    rec = Recorder()
    rec.feed("press.good", 10)
    rec.feed("press.scrap", 0)
    rec.feed("press.order", 1003)
    rec.feed("press.planned", 100)
    rec.feed("press.busy", False)
    rec.feed("press.busy", True)
    rec.feed("press.good", None, Quality.BAD)
    rec.feed("press.busy", None, Quality.BAD)
    rec.feed("press.good", 16)  # six parts made while the link was down
    rec.feed("press.busy", True)  # no new edge after an outage
    assert [p[0:3] for p in rec.summary()] == [
        ("started", "WO-1003", 0),
        ("progress", "WO-1003", 6),
    ]


def test_order_change_mid_run_aborts_the_run() -> None:
    rec = Recorder()
    rec.feed("press.good", 0)
    rec.feed("press.order", 1001)
    rec.feed("press.planned", 10)
    rec.feed("press.busy", False)
    rec.feed("press.busy", True)
    rec.feed("press.good", 3)
    rec.feed("press.order", 1002)
    assert [p[0] for p in rec.summary()] == ["started", "aborted"]
    assert rec.packets[-1].data["state"]["reason"]["code"] == "order_changed"


def test_first_reading_is_no_edge() -> None:
    rec = Recorder()
    rec.feed("press.order", 1001)
    rec.feed("press.busy", True)
    assert rec.packets == []


@pytest.mark.parametrize(
    ("bits", "readings", "deltas"),
    [
        (16, [65534, 65535, 0, 2], [0, 1, 1, 2]),  # rollover
        (16, [500, 501, 0, 3], [0, 1, 0, 3]),  # reset to zero, then counting again
        (32, [10, 5000], [0, 0]),  # a preset jump is not production
        (32, [2**32 - 1, 4], [0, 5]),
    ],
)
def test_counter_rollover_reset_and_preset(bits: int, readings: list[int], deltas: list[int]) \
        -> None:
    track = CounterTrack(bits, max_step=1000)
    assert [track.advance(r) for r in readings] == deltas


def test_reload_keeps_state_of_unchanged_stations_and_resets_changed_ones() -> None:
    from mapping import yamlsrc
    from mapping.load import compile_document

    rec = Recorder()
    for signal, value in [("press.good", 0), ("press.scrap", 0), ("press.order", 1001),
                          ("press.planned", 20), ("press.busy", False), ("press.busy", True),
                          ("press.good", 3)]:
        rec.feed(signal, value)
    text = CONFIG.read_text()

    same = Engine(compile_document(yamlsrc.load(text, "m.yaml")), previous=rec.engine)
    run = same.states["press-1"].run
    assert run is not None and run.good == 3 and run.state == "Running"
    assert same.values["press.good"] == 3

    changed_text = text.replace("progress: {every: 5}", "progress: {every: 2}")
    changed = Engine(compile_document(yamlsrc.load(changed_text, "m.yaml")),
                     previous=rec.engine)
    assert changed.states["press-1"].run is None  # its definition changed: a fresh start


def test_scanned_code_sets_order_and_planned_quantity() -> None:
    from mapping import yamlsrc
    from mapping.load import compile_document

    text = CONFIG.read_text().replace(
        'format: "WO-{value}"\n      planned: press.planned',
        'pattern: "^WO(?P<order>\\\\d+)/Q(?P<planned>\\\\d+)$"\n      format: "WO-{value}"')
    engine = Engine(compile_document(yamlsrc.load(text, "m.yaml")))
    packets = []
    for n, (signal, value) in enumerate([("press.good", 0), ("press.order", "PALLET-9"),
                                         ("press.busy", False), ("press.busy", True),
                                         ("press.order", "WO777/Q3"), ("press.busy", False),
                                         ("press.busy", True), ("press.good", 3)]):
        packets += engine.step(Sample(signal, value, Quality.GOOD, T0 + n, n))  # type: ignore[arg-type]
    assert [(p.type.rsplit(".", 1)[1], p.data["workOrder"]["id"],
             p.data["quantities"].get("planned")) for p in packets] == [
        ("started", "WO-777", 3), ("completed", "WO-777", 3)]
