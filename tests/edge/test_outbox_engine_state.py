"""The engine state stored with the outbox commit: same transaction, latest wins, old files
gain the table, and a gateway start restores it (or refuses it with one clear line)."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from pathlib import Path

import pytest
from factories import outbox_entry
from ulid import ULID

from common import yamlsrc
from drivers.base import Quality, Sample
from edge_store import Bounds, Entry, GroupWriter, Outbox, OutboxFull, RenderError
from edge_store.store import engine_state_table
from gateway.resume import encode_state, restored_engine
from mapping.engine import Engine
from mapping.load import compile_document

SOURCE = "plant1/edge-07"
MAPPING = """\
version: 1
plant: {site: plant1}
sources:
  io: {protocol: modbus_tcp, host: 127.0.0.1}
signals:
  busy:  {source: io, address: "co:0"}
  order: {source: io, address: "hr:2"}
  good:  {source: io, address: "hr:3"}
stations:
  s1:
    operation: {id: OP10}
    order: {signal: order, format: "WO-{value}"}
    start: rising(busy)
    counters:
      good: {signal: good, bits: 16}
"""


def _failing() -> Entry:
    def render(seq: int, epoch: str) -> bytes:
        raise ValueError("cannot encode")

    return Entry(id=str(ULID()), render=render)


def test_the_state_goes_with_the_commit_and_the_latest_wins(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db", SOURCE) as outbox:
        assert outbox.engine_state() is None
        outbox.commit([outbox_entry(source=SOURCE)], state=b'{"n":1}')
        outbox.commit([outbox_entry(source=SOURCE)])  # no state given: the last one stays
        saved = outbox.engine_state()
        assert saved is not None and saved[0] == b'{"n":1}'
        outbox.commit([], state=b'{"n":2}')  # a state alone is a commit too
        assert outbox.engine_state() is not None
        assert outbox.engine_state()[0] == b'{"n":2}'  # type: ignore[index]
    with Outbox(tmp_path / "o.db", SOURCE) as again:
        assert again.engine_state()[0] == b'{"n":2}'  # type: ignore[index]


def test_a_failed_commit_stores_neither_packets_nor_state(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db", SOURCE, bounds=Bounds(max_packets=1, policy="refuse")
                ) as outbox:
        outbox.commit([outbox_entry(source=SOURCE)], state=b"1")
        with pytest.raises(RenderError):
            outbox.commit([outbox_entry(source=SOURCE), _failing()], state=b"2")
        with pytest.raises(OutboxFull):
            outbox.commit([outbox_entry(source=SOURCE)], state=b"3")
        assert outbox.last_seq == 1
        assert outbox.engine_state()[0] == b"1"  # type: ignore[index]


def test_a_file_from_before_the_state_table_gains_it(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    with Outbox(path, SOURCE) as outbox:
        outbox.append([outbox_entry(source=SOURCE)])
    with sqlite3.connect(path) as raw:
        raw.execute(f"DROP TABLE {engine_state_table.name}")
    with Outbox(path, SOURCE) as outbox:
        assert outbox.engine_state() is None
        assert outbox.commit([outbox_entry(source=SOURCE)], state=b"s").rows[0].seq == 2
        assert outbox.engine_state()[0] == b"s"  # type: ignore[index]


def test_a_group_commit_stores_its_newest_unit_state(tmp_path: Path) -> None:
    async def run() -> tuple[list[list[int]], int]:
        with Outbox(tmp_path / "o.db", SOURCE) as outbox:
            async with GroupWriter(outbox) as writer:
                done = await asyncio.gather(*(
                    writer.append_many([outbox_entry(source=SOURCE)], f"{n}".encode())
                    for n in range(20)))
                transactions = writer.transactions
            assert outbox.engine_state()[0] == b"19"  # type: ignore[index]
        return done, transactions

    done, transactions = asyncio.run(run())
    assert [seqs[0] for seqs in done] == list(range(1, 21))
    assert transactions < 20  # grouped, and still the newest state


def _engine() -> Engine:
    return Engine(compile_document(yamlsrc.load(MAPPING, "m.yaml")))


def test_a_gateway_start_continues_from_the_stored_state(tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture
                                                          ) -> None:
    engine = _engine()
    for signal, value, t in (("order", 7, 0.0), ("good", 10, 0.0), ("busy", False, 0.0),
                             ("busy", True, 1.0), ("good", 12, 2.0)):
        engine.step(Sample(signal, value, Quality.GOOD, 1_795_154_400 + t, t))
    with Outbox(tmp_path / "o.db", SOURCE) as outbox:
        outbox.commit([outbox_entry(source=SOURCE)], state=encode_state(engine.snapshot()))
        with caplog.at_level(logging.INFO, logger="gateway.resume"):
            restored = restored_engine(engine.mapping, outbox, 500.0, 1_795_154_410.0)
    run = restored.states["s1"].run
    assert run is not None and (run.run_id, run.good) == ("WO-7.OP10.s1.1", 2)
    restored_line = [r for r in caplog.records if r.getMessage() == "engine state restored"]
    assert restored_line and restored_line[0].active_runs == ["WO-7.OP10.s1.1"]


@pytest.mark.parametrize("body", [b"\xff\xfe", b"{not json", b"[]", b'{"version": 1}',
                                  b"[" * 100_000])
def test_a_corrupt_stored_state_is_refused_with_one_line(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, body: bytes) -> None:
    with Outbox(tmp_path / "o.db", SOURCE) as outbox:
        outbox.commit([], state=body)
        with caplog.at_level(logging.INFO, logger="gateway.resume"):
            engine = restored_engine(_engine().mapping, outbox, 0.0, 0.0)
    assert engine.states["s1"].run is None
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert errors[0].getMessage() == "engine state refused: the stations start idle"
    assert errors[0].error  # type: ignore[attr-defined]
    assert json.dumps(errors[0].error)  # type: ignore[attr-defined]


@pytest.mark.timeout(60)
def test_every_pipeline_commit_carries_the_state_right_after_its_last_packet(
        tmp_path: Path) -> None:
    from gateway.runtime import COMMIT_BATCH, Pipeline

    doc = yamlsrc.load((Path(__file__).parents[2] / "config" / "mapping.yaml").read_text(),
                       "mapping.yaml")
    doc.value["stations"]["press-1"]["progress"]["every"] = 1  # a packet per part
    mapping = compile_document(doc)
    parts = 2 * COMMIT_BATCH + 500
    commits: list[tuple[int, int | None]] = []

    class Recording(GroupWriter):
        async def append_many(self, entries: list[Entry], state: bytes | None = None
                              ) -> list[int]:
            seqs = await super().append_many(entries, state)
            good = None
            if state is not None:
                engine = Engine(mapping)
                engine.restore(json.loads(state), 0.0)
                run = engine.states["press-1"].run
                good = run.good if run else None
            last = (json.loads(entries[-1].render(seqs[-1], "e"))["data"]["quantities"]["good"]
                    if entries else -1)
            commits.append((last, good))
            return seqs

    async def run() -> None:
        with Outbox(tmp_path / "o.db", SOURCE) as outbox:
            writer = Recording(outbox)
            pipeline = Pipeline(Engine(mapping), writer, SOURCE)
            values = [("press.order", 42), ("press.planned", parts + 10), ("press.good", 0),
                      ("press.busy", False), ("press.busy", True),
                      *(("press.good", n) for n in range(1, parts + 1))]

            async def feed() -> None:
                for n, (signal, value) in enumerate(values):
                    await pipeline.samples.put(
                        [Sample(signal, value, Quality.GOOD, 1_795_154_400 + n, float(n))])
                await pipeline.close()

            # The engine maps everything first: a backlog the committer must cut.
            await asyncio.wait_for(asyncio.gather(feed(), pipeline.map_samples()), 20)
            await asyncio.wait_for(pipeline.commit_drafts(), 20)
            await pipeline.save_state()
            await writer.close()

    asyncio.run(run())
    packets = [c for c in commits if c[0] >= 0]
    assert len(packets) >= 2 and packets[0][0] >= COMMIT_BATCH - 10  # a cut backlog
    for last_good, state_good in packets:
        assert state_good == last_good  # the state right after the commit's last packet
    assert commits[-1] == (-1, parts)  # the stop stores the final state alone
