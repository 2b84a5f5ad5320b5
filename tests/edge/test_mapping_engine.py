"""The press station's mapping against recorded sample sequences (no I/O)."""

from __future__ import annotations

from pathlib import Path

import pytest

from drivers.base import Quality, Sample
from mapping.engine import Engine
from mapping.load import load_mapping
from mapping.station import CounterTrack
from sync import packet as pk
from sync import packet_codec as codec

CONFIG = Path(__file__).resolve().parents[2] / "config" / "mapping.yaml"
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
        codec.decode(codec.render(draft, id="01JDA5Q1Y4S7M2R8K3VZC6TB9E", source="plant1/edge-07",
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


def _outage(rec: Recorder, order: int) -> None:
    """Order `order` runs with 10 parts counted, then the press's link goes down."""
    rec.feed("press.good", 0)
    rec.feed("press.scrap", 0)
    rec.feed("press.order", order)
    rec.feed("press.planned", 100)
    rec.feed("press.busy", False)
    rec.feed("press.busy", True)
    rec.feed("press.good", 10)
    for signal in ("press.good", "press.scrap", "press.order", "press.busy"):
        rec.feed(signal, None, Quality.BAD)


def _told(rec: Recorder) -> list[tuple[str, str, object]]:
    return [(d.type.rsplit(".", 1)[1], d.data["runId"],
             d.data["quantities"]["good"] if "quantities" in d.data else d.data["alarm"]["text"])
            for d in rec.packets]


def test_parts_counted_during_an_outage_never_go_to_a_run_started_after_it() -> None:
    rec = Recorder()
    _outage(rec, 1001)
    rec.feed("press.order", 1002)  # the reconnect batch: the new order first
    rec.feed("press.busy", False)
    rec.feed("press.busy", True)
    rec.feed("press.good", 17)  # seven parts made while the link was down, under run 1
    rec.feed("press.good", 18)  # the new run's first part
    first, second = "WO-1001.OP10.press-1.1", "WO-1002.OP10.press-1.2"
    assert _told(rec)[-3:] == [
        ("started", second, 0),
        ("alarm", second, f"7 good parts counted while the link was down (under run {first}) "
                          "are credited to no run"),
        ("alarm", second, f"counting into {second}"),
    ]
    run = rec.engine.states["press-1"].run
    assert run is not None and (run.run_id, run.good) == (second, 1)


def test_parts_counted_during_an_outage_go_to_the_run_active_then() -> None:
    rec = Recorder()
    _outage(rec, 1001)
    rec.feed("press.good", 17)  # the reconnect batch: the counter first
    rec.feed("press.order", 1002)
    told = _told(rec)
    assert ("aborted", "WO-1001.OP10.press-1.1", 17) in told
    assert not [t for t in told if t[0] == "alarm"]


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
    from common import yamlsrc
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
    from common import yamlsrc
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
    # A code arriving as plain text is a scan too: the matching one says what is at the station.
    assert [p.data["scan"]["code"] for p in packets if p.type == "keyop.station.context"] == [
        "WO777/Q3"]
    assert [(p.type.rsplit(".", 1)[1], p.data["workOrder"]["id"],
             p.data["quantities"].get("planned")) for p in packets
            if p.type.startswith("keyop.operation.")] == [
        ("started", "WO-777", 3), ("completed", "WO-777", 3)]


def _hub_accepts(drafts: list[pk.Draft]) -> None:
    for seq, draft in enumerate(drafts, start=1):
        codec.validate(codec.load_json(codec.render(
            draft, id="01JDA5Q1Y4S7M2R8K3VZC6TB9E", source="plant1/edge-07", sequence=seq,
            epoch="01JCZ0K3M9B4X2W7Q5N8D1F6HA", recorded=draft.time), "packet"))


def test_a_planned_value_out_of_range_is_a_bad_sample_with_a_reason() -> None:
    rec = Recorder()
    for signal, value in [("press.good", 0), ("press.scrap", 0), ("press.order", 1001),
                          ("press.planned", 20), ("press.busy", False)]:
        rec.feed(signal, value)
    sample = Sample("press.planned", 2**64 - 1, Quality.GOOD, rec.t, rec.t - T0)
    screened = rec.engine.screen(sample)
    assert screened.quality is Quality.BAD and screened.value == 2**64 - 1
    assert screened.reason == ("signal 'press.planned': value 18446744073709551615 is out of "
                               "range for planned (0..2^63-1)")
    assert rec.engine.refusals == {"press.planned": screened.reason}
    rec.feed("press.planned", 2**64 - 1)  # unscreened: `step` refuses it the same way
    assert rec.engine.values["press.planned"] == 20 and rec.engine.refused == 2
    rec.feed("press.busy", True)
    assert rec.summary() == [("started", "WO-1001", 0, 0, 20)]  # the last good planned value
    rec.feed("press.planned", 30)
    assert rec.engine.refusals == {}  # a good value ends the refusal
    _hub_accepts(rec.packets)


@pytest.mark.parametrize(("value", "problem"), [
    (2**64 - 1, "value 18446744073709551615 is out of range for a good count (0..2^63-1)"),
    (-3, "value -3 is out of range for a good count (0..2^63-1)"),
    (float("nan"), "value nan is not a finite number, as a good count needs"),
    (float("inf"), "value inf is not a finite number, as a good count needs"),
    (5.5, "value 5.5 is not a whole number, as a good count needs"),
    ("12", "value '12' is not a number, as a good count needs"),
    (None, "value None is not a number, as a good count needs"),
    (True, "value True is not a number, as a good count needs"),
    (10**400, "value an integer of 1329 bits is out of range for a good count (0..2^63-1)"),
])
def test_a_counter_value_out_of_range_is_a_bad_sample_not_production(value: object,
                                                                     problem: str) -> None:
    rec = Recorder()
    for signal, v in [("press.good", 10), ("press.scrap", 0), ("press.order", 1001),
                      ("press.planned", 100), ("press.busy", False), ("press.busy", True)]:
        rec.feed(signal, v)
    screened = rec.engine.screen(Sample("press.good", value, Quality.GOOD, rec.t, 1.0))  # type: ignore[arg-type]
    assert screened.quality is Quality.BAD
    assert screened.reason == f"signal 'press.good': {problem}"
    rec.feed("press.good", value)
    assert rec.engine.values["press.good"] == 10  # the last good value stands
    rec.feed("press.good", 15)
    rec.feed("press.good", 16.0)  # a whole float is a count
    assert [p[:3] for p in rec.summary()] == [("started", "WO-1001", 0), ("progress", "WO-1001", 5)]
    assert rec.engine.states["press-1"].run.good == 6  # type: ignore[union-attr]
    _hub_accepts(rec.packets)


def test_a_good_sample_in_range_is_passed_as_it_is() -> None:
    rec = Recorder()
    for value in (0, 2**63 - 1, 7.0):
        sample = Sample("press.good", value, Quality.GOOD, T0, 0.0)
        assert rec.engine.screen(sample) is sample
    other = Sample("press.busy", float("nan"), Quality.GOOD, T0, 0.0)
    assert rec.engine.screen(other) is other  # no count is made of it
    bad = Sample("press.good", None, Quality.BAD, T0, 0.0, "timeout")
    assert rec.engine.screen(bad) is bad
    assert rec.engine.refused == 0


def test_a_run_never_counts_beyond_what_a_packet_holds() -> None:
    rec = Recorder()
    for signal, value in [("press.good", 0), ("press.scrap", 0), ("press.order", 1001),
                          ("press.planned", 0), ("press.busy", False), ("press.busy", True)]:
        rec.feed(signal, value)
    run = rec.engine.states["press-1"].run
    assert run is not None
    run.planned = None
    run.good = 2**63 - 3
    rec.feed("press.good", 5)
    assert run.good == 2**63 - 3
    assert rec.engine.refusals["press.good"].startswith(
        "signal 'press.good': a count of 5 would take the run's produced quantity beyond")
    rec.feed("press.good", 7)  # two more fit
    assert run.good == 2**63 - 1
    _hub_accepts(rec.packets)


def _scan_engine(pattern: str) -> Engine:
    from common import yamlsrc
    from mapping.load import compile_document

    text = CONFIG.read_text().replace(
        'format: "WO-{value}"\n      planned: press.planned',
        f'pattern: "{pattern}"\n      format: "WO-{{value}}"')
    return Engine(compile_document(yamlsrc.load(text, "m.yaml")))


@pytest.mark.parametrize(("code", "problem"), [
    ("WO7/Q99999999999999999999", "its planned quantity is out of range (0..2^63-1)"),
    ("WO7/Q" + "9" * 5000, "its planned quantity is out of range (0..2^63-1)"),
    ("WO" + "7" * 130 + "/Q5", "makes an order id of 133 characters (at most 128)"),
])
def test_a_scanned_order_code_the_hub_would_refuse_is_a_bad_sample(code: str,
                                                                   problem: str) -> None:
    engine = _scan_engine("^WO(?P<order>\\\\d+)/Q(?P<planned>\\\\d+)$")
    screened = engine.screen(Sample("press.order", code, Quality.GOOD, T0, 0.0))
    assert screened.quality is Quality.BAD
    assert screened.reason is not None and screened.reason.endswith(problem)
    assert engine.step(Sample("press.order", code, Quality.GOOD, T0, 0.0)) == []
    assert engine.states["press-1"].order is None


def test_a_planned_group_of_other_digits_gives_no_planned_quantity() -> None:
    engine = _scan_engine("^WO(?P<order>\\\\d+)/Q(?P<planned>\\\\w+)$")
    packets = []
    for n, (signal, value) in enumerate([("press.good", 0), ("press.busy", False),
                                         ("press.order", "WO7/Q\u00b2"), ("press.busy", True)]):
        packets += engine.step(Sample(signal, value, Quality.GOOD, T0 + n, n))  # type: ignore[arg-type]
    assert [p.data["quantities"].get("planned") for p in packets
            if p.type.startswith("keyop.operation.")] == [None]


def test_params_and_reasons_a_packet_cannot_carry_are_left_out() -> None:
    from common import yamlsrc
    from mapping.load import compile_document

    text = (CONFIG.read_text()
            .replace("    progress: {every: 5}",
                     "    progress: {every: 5}\n    pause: {when: 'not press.busy', reason: "
                     "press.stop}\n    params:\n      force: {signal: press.force, class: public}")
            .replace("signals:\n", "signals:\n  press.stop: {source: press-1, address: 'hr:8', "
                     "type: uint16}\n  press.force: {source: press-1, address: 'hr:9', "
                     "type: float32}\n"))
    engine = Engine(compile_document(yamlsrc.load(text, "m.yaml")))
    packets = []
    for n, (signal, value) in enumerate([
            ("press.good", 0), ("press.order", 5), ("press.busy", False),
            ("press.force", float("nan")), ("press.stop", "x" * 200), ("press.busy", True),
            ("press.busy", False), ("press.force", 2.5), ("press.busy", True)]):
        packets += engine.step(Sample(signal, value, Quality.GOOD, T0 + n, n))  # type: ignore[arg-type]
    assert [(p.type.rsplit(".", 1)[1], p.data.get("params"), p.data["state"].get("reason"))
            for p in packets] == [
        ("started", None, None), ("paused", None, None),
        ("resumed", {"force": {"value": 2.5, "class": "public"}}, None)]
    _hub_accepts(packets)


def test_the_gateway_counts_a_refused_value_as_a_bad_sample() -> None:
    import asyncio

    from gateway.runtime import Pipeline

    async def run() -> Pipeline:
        pipeline = Pipeline(Recorder().engine, writer=None, source="plant1/edge-07")  # type: ignore[arg-type]
        await pipeline.samples.put([Sample("press.planned", v, Quality.GOOD, T0, 0.0)
                                    for v in (5, 2**64 - 1, -1, 6)])
        await pipeline.samples.put(None)
        await pipeline.map_samples()
        return pipeline

    pipeline = asyncio.run(run())
    assert (pipeline.stats.samples, pipeline.stats.bad_samples) == (4, 2)
    assert pipeline.engine.refused == 2 and pipeline.engine.values["press.planned"] == 6
