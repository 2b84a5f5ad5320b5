"""Property tests of the engine: whatever the samples, the packets stay sensible."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.base import Quality, Sample
from mapping.load import load_mapping
from mapping.replay import replay
from mapping.station import CounterTrack

WELDER = Path(__file__).resolve().parent / "mapping_cases" / "welder" / "mapping.yaml"
_, COMPILED = load_mapping(WELDER)
T0 = 1_795_154_400.0

signal_values = st.one_of(
    st.tuples(st.just("w2.order"), st.sampled_from([0, 4711, 4712, 4713])),
    st.tuples(st.just("w2.planned"), st.integers(0, 30)),
    st.tuples(st.just("w2.busy"), st.booleans()),
    st.tuples(st.just("w2.done"), st.booleans()),
    st.tuples(st.just("w2.count"), st.integers(0, 2**16 - 1)),
    st.tuples(st.just("w2.reject"), st.integers(0, 2**16 - 1)),
    st.tuples(st.just("w2.stop"), st.integers(0, 40)),
    st.tuples(st.just("w2.temp"), st.integers(0, 120)),
    st.tuples(st.just("w2.current"), st.floats(-10, 400, allow_nan=False)),
)
steps = st.lists(
    st.tuples(signal_values, st.floats(0, 30, allow_nan=False), st.booleans()),
    max_size=120,
)


def _samples(raw: list[tuple[tuple[str, object], float, bool]]) -> list[Sample]:
    out, now = [], 0.0
    for (signal, value), gap, bad in raw:
        now += gap
        quality = Quality.BAD if bad and len(out) % 7 == 3 else Quality.GOOD
        out.append(Sample(signal, value, quality, T0 + now, now))  # type: ignore[arg-type]
    return out


@settings(max_examples=150, deadline=None)
@given(steps)
def test_runs_are_well_formed_whatever_the_samples(raw: list) -> None:  # type: ignore[type-arg]
    started: set[str] = set()
    last: dict[str, tuple[int, int]] = {}
    for draft in replay(COMPILED, _samples(raw)):
        data = draft.data
        run = data.get("runId")
        if draft.type == "keyop.operation.started":
            assert run not in started, "a run starts once"
            started.add(run)
        elif run is not None:
            assert run in started, f"{draft.type} for {run} without operation.started"
        quantities = data.get("quantities")
        if quantities is None:
            continue
        good, scrap = quantities["good"], quantities["scrap"]
        assert good >= 0 and scrap >= 0
        assert quantities["produced"] == good + scrap + quantities["rework"]
        before = last.get(run, (0, 0))
        assert good >= before[0] and scrap >= before[1], "cumulative counts never go back"
        last[run] = (good, scrap)


@settings(max_examples=60, deadline=None)
@given(steps)
def test_replay_is_deterministic(raw: list) -> None:  # type: ignore[type-arg]
    samples = _samples(raw)
    first = [(d.type, d.time, d.data) for d in replay(COMPILED, samples)]
    second = [(d.type, d.time, d.data) for d in replay(COMPILED, samples)]
    assert first == second


@settings(max_examples=300)
@given(
    st.sampled_from([16, 32, 64]),
    st.integers(0, 2**64 - 1),
    st.lists(st.integers(0, 1000), max_size=200),
)
def test_counter_increments_survive_rollover(bits: int, start: int, increments: list[int]) -> None:
    track = CounterTrack(bits, max_step=1000)
    raw = start % (1 << bits)
    track.advance(raw)
    counted = 0
    for step in increments:
        raw = (raw + step) % (1 << bits)
        counted += track.advance(raw)
    assert counted == sum(increments)


@settings(max_examples=200)
@given(
    # Near the top a jump to 0 is a rollover (within max_step): no reset to tell apart there.
    st.integers(1001, 2**16 - 1002),
    st.lists(st.integers(0, 50), max_size=50),
)
def test_counter_reset_is_not_a_negative_count(before: int, increments: list[int]) -> None:
    track = CounterTrack(16, max_step=1000)
    track.advance(before)
    counted = track.advance(0)  # the device counter was reset
    raw = 0
    for step in increments:
        raw += step
        counted += track.advance(raw)
    assert counted == sum(increments)
