"""The driver boundary types: `Sample`'s hand-written constructor, `make_samples`, batches."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import pickle
from collections.abc import AsyncIterator

import pytest

from drivers.base import (
    BatchDriver,
    Driver,
    Quality,
    Sample,
    Scan,
    make_samples,
    sample_batches,
)


def test_the_sample_constructor_takes_every_field_in_order_with_its_default() -> None:
    fields = dataclasses.fields(Sample)
    params = list(inspect.signature(Sample).parameters.values())
    assert [p.name for p in params] == [f.name for f in fields]
    for param, field in zip(params, fields, strict=True):
        expected = inspect.Parameter.empty if field.default is dataclasses.MISSING else (
            field.default)
        assert param.default == expected, field.name
    sample = Sample("a.b", 3, Quality.GOOD, 1.5, 2.5)
    assert dataclasses.astuple(sample) == ("a.b", 3, Quality.GOOD, 1.5, 2.5, None)
    assert sample == Sample("a.b", 3, Quality.GOOD, 1.5, 2.5, None)
    assert hash(sample) == hash(Sample("a.b", 3, Quality.GOOD, 1.5, 2.5, None))
    assert sample != Sample("a.b", 3, Quality.BAD, 1.5, 2.5, "comm_lost")
    assert repr(sample).startswith("Sample(signal='a.b', value=3, quality=")
    assert pickle.loads(pickle.dumps(sample)) == sample
    assert dataclasses.replace(sample, value=4).value == 4
    assert sample.good and not Sample("x", None, Quality.BAD, 0, 0, "r").good


def test_a_sample_stays_frozen() -> None:
    sample = Sample("a", 1, Quality.GOOD, 0.0, 0.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        sample.value = 2  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        del sample.reason  # type: ignore[misc]
    assert not hasattr(sample, "__dict__")  # slotted


def test_make_samples_equals_one_constructor_call_per_signal() -> None:
    signals = [f"s{i}" for i in range(130)]
    values: list[object] = [i if i % 3 else str(i) for i in range(130)]
    values[5] = Scan("barcode", "X1")
    got = make_samples(signals, values, Quality.UNCERTAIN, 10.0, 20.0)  # type: ignore[arg-type]
    assert got == [Sample(s, v, Quality.UNCERTAIN, 10.0, 20.0)  # type: ignore[arg-type]
                   for s, v in zip(signals, values, strict=True)]
    assert all(type(s) is Sample and s.reason is None for s in got)
    assert make_samples([], [], Quality.GOOD, 0, 0) == []
    for n in range(1, 20):  # both ways: one constructor call each below 16, columns above
        few = make_samples(signals[:n], values[:n], Quality.GOOD, 1.0, 2.0)  # type: ignore[arg-type]
        assert few == [dataclasses.replace(s, quality=Quality.GOOD, time=1.0, monotonic=2.0)
                       for s in got[:n]]
    with pytest.raises(ValueError, match="2 signals but 1 values"):
        make_samples(["a", "b"], [1], Quality.GOOD, 0, 0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        got[0].value = 1  # type: ignore[misc]


class _OneByOne:
    name = "plain"

    def __init__(self) -> None:
        self.closed = False

    async def samples(self) -> AsyncIterator[Sample]:
        try:
            for i in range(3):
                yield Sample(f"p{i}", i, Quality.GOOD, 0, 0)
            await asyncio.Event().wait()
        finally:
            self.closed = True

    async def close(self) -> None:
        pass


class _Batching(_OneByOne):
    name = "batching"

    async def batches(self) -> AsyncIterator[list[Sample]]:
        try:
            yield [Sample("b0", 0, Quality.GOOD, 0, 0), Sample("b1", 1, Quality.GOOD, 0, 0)]
            await asyncio.Event().wait()
        finally:
            self.closed = True


def test_sample_batches_uses_the_driver_batches_or_wraps_each_sample() -> None:
    async def take(driver: Driver, count: int) -> list[list[str]]:
        out: list[list[str]] = []
        batches = sample_batches(driver)
        async for batch in batches:
            out.append([s.signal for s in batch])
            if len(out) == count:
                break
        await batches.aclose()  # type: ignore[attr-defined]
        return out

    plain, batching = _OneByOne(), _Batching()
    assert isinstance(batching, BatchDriver) and not isinstance(plain, BatchDriver)
    assert asyncio.run(take(plain, 3)) == [["p0"], ["p1"], ["p2"]]
    assert asyncio.run(take(batching, 1)) == [["b0", "b1"]]
    # Closing the batches closes the driver's own generator at once (it releases the link).
    assert plain.closed and batching.closed
