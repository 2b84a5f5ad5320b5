"""The uplink against a real Mosquitto and a tiny fake hub that acks like the real one."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from edgekit import GATEWAY, SOURCE, FakeHub, until
from factories import outbox_entry
from ulid import ULID

from devstack.mosquitto import PrivateBroker
from edge_store import Entry, GroupWriter, Outbox
from sync import packet as pk
from sync import topics
from sync.uplink import Uplink, UplinkConfig

pytestmark = pytest.mark.timeout(30)

def packet_entry(good: int) -> Entry:
    return outbox_entry(source=SOURCE, good=good)


def _config(broker: PrivateBroker, **over: Any) -> UplinkConfig:
    values: dict[str, Any] = {
        "host": broker.host, "port": broker.port, "gateway": GATEWAY, "source": SOURCE,
        "ack_timeout_s": 2.0, "backoff_min_s": 0.1, "backoff_max_s": 0.5, "inflight_max": 20,
        "keepalive_s": 5,
    }
    values.update(over)
    return UplinkConfig(**values)


def _run_with_uplink(
    config: UplinkConfig, outbox: Outbox, body: Callable[[Uplink], Awaitable[None]]
) -> None:
    async def main() -> None:
        uplink = Uplink(config, outbox)
        task = asyncio.create_task(uplink.run())
        try:
            await body(uplink)
        finally:
            await asyncio.wait_for(uplink.stop(), 10)
            await task

    asyncio.run(main())


@pytest.fixture
def outbox(tmp_path: Path) -> Any:
    box = Outbox(tmp_path / "outbox.db", SOURCE)
    yield box
    box.close()


def test_packets_arrive_in_order_and_rows_go_only_on_ack(
    broker: PrivateBroker, outbox: Outbox
) -> None:
    n = 250
    outbox.append([packet_entry(i) for i in range(n)])
    hub = FakeHub(broker, ack=False)

    async def body(uplink: Uplink) -> None:
        assert await until(lambda: hub.seen() == set(range(1, n + 1)))
        # Everything arrived, nothing is acknowledged: every row is still there.
        assert outbox.stats().pending == n and uplink.acked_seq == 0
        hub.ack = True
        hub.send_ack()
        assert await uplink.wait_acked(n, 10)
        assert outbox.stats().pending == 0
        # A single new row, announced by wake(), goes out as a single event.
        async with GroupWriter(outbox) as writer:
            seq = await writer.append(packet_entry(n))
        uplink.wake()
        assert seq == n + 1
        assert await uplink.wait_acked(seq, 10)
        assert uplink.published_events >= n + 1

    try:
        _run_with_uplink(_config(broker), outbox, body)
    finally:
        hub.close()
    first_arrival = list(dict.fromkeys(hub.arrivals))
    assert first_arrival == list(range(1, n + 2)), "first arrivals must be in seq order"
    batches = [m for m in hub.messages if m[0] == pk.BATCH_CONTENT_TYPE]
    assert batches and all(count <= 100 for _, _, count in batches)
    # ~750-byte events: the 64 KiB cap, not batch_max_events, closes these batches.
    _, first_user, first_count = batches[0]
    assert 1 < first_count < 100
    assert first_user["sequence"] == (
        f"{pk.format_sequence(1)}-{pk.format_sequence(first_count)}"
    )
    assert max(hub.sizes) <= pk.MAX_EVENT_BYTES
    content_type, user, count = hub.messages[-1]
    assert (content_type, count) == (pk.CONTENT_TYPE, 1)
    assert user["sequence"] == pk.format_sequence(n + 1)
    assert user["type"] == "keyop.operation.progress"
    assert set(user) >= {"id", "type", "sequence"}


def test_unacked_rows_are_resent_with_the_same_bytes(
    broker: PrivateBroker, outbox: Outbox
) -> None:
    outbox.append([packet_entry(i) for i in range(3)])
    hub = FakeHub(broker, ack=False)

    async def body(uplink: Uplink) -> None:
        assert await until(lambda: all(len(hub.bodies.get(s, [])) >= 2 for s in (1, 2, 3)))
        assert uplink.resends >= 1
        assert outbox.stats().pending == 3
        hub.ack = True
        hub.send_ack()
        assert await uplink.wait_acked(3, 10)

    try:
        _run_with_uplink(_config(broker, ack_timeout_s=0.5), outbox, body)
    finally:
        hub.close()
    for seq in (1, 2, 3):
        copies = hub.bodies[seq]
        assert all(c == copies[0] for c in copies), "a resend carries the same identity"
    assert outbox.stats().pending == 0


def test_reconnects_after_broker_restart_and_loses_nothing(
    broker: PrivateBroker, outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sync.uplink")
    outbox.append([packet_entry(i) for i in range(50)])
    hub = FakeHub(broker)

    async def body(uplink: Uplink) -> None:
        assert await uplink.wait_acked(50, 10)
        broker.stop()
        assert await until(lambda: not uplink.connected)
        # Rows committed while the broker is away wait in the outbox.
        outbox.append([packet_entry(i) for i in range(50, 120)])
        uplink.wake()
        broker.start()
        assert await uplink.wait_acked(120, 12)
        assert uplink.reconnects >= 1

    try:
        _run_with_uplink(_config(broker, ack_timeout_s=1.0), outbox, body)
    finally:
        hub.close()
    assert hub.seen() == set(range(1, 121))
    assert outbox.stats().pending == 0
    messages = [r.getMessage() for r in caplog.records if r.name == "sync.uplink"]
    assert messages.count("uplink: connection to broker lost") == 1
    assert messages.count("uplink: connection recovered") == 1
    assert "uplink: cannot connect to broker" not in messages  # the loss was logged already


def test_birth_is_retained_and_will_fires_on_abrupt_loss(
    broker: PrivateBroker, outbox: Outbox
) -> None:
    outbox.append([packet_entry(1)])
    status_topic = topics.up_status(GATEWAY)

    async def body(uplink: Uplink) -> None:
        assert await until(lambda: uplink.connected)
        # A late subscriber gets the retained birth.
        hub = FakeHub(broker)
        try:
            assert await until(lambda: len(hub.status) >= 1)
            birth, retained = hub.status[0]
            assert retained and birth["online"] is True
            assert birth["sourceepoch"] == outbox.epoch
            assert birth["lastSequence"] == pk.format_sequence(1)
            assert birth["version"] == "0.1.0" and birth["ts"].endswith("Z")
            # Kill the TCP connection under paho: no DISCONNECT, so the broker sends the will.
            link = uplink.link
            assert link is not None
            link.client.socket().shutdown(socket.SHUT_RDWR)  # type: ignore[union-attr]
            assert await until(lambda: len(hub.status) >= 3)
            will, new_birth = hub.status[1][0], hub.status[2][0]
            assert will == {"online": False, "session": birth["session"]}
            assert new_birth["online"] is True and new_birth["session"] != birth["session"]
            assert await until(lambda: uplink.reconnects == 1)
            # A clean stop says offline with the current session, retained.
            await uplink.stop()
            assert await until(lambda: len(hub.status) >= 4)
            assert hub.status[3][0] == {"online": False, "session": new_birth["session"]}
        finally:
            hub.close()

    _run_with_uplink(_config(broker), outbox, body)

    late = FakeHub(broker)
    try:
        assert late.subscribed.wait(5)
        retained: list[tuple[dict[str, Any], bool]] = []

        async def wait_retained() -> bool:
            return await until(lambda: bool(late.status))

        assert asyncio.run(wait_retained())
        retained = late.status
        assert retained[0][1] is True and retained[0][0]["online"] is False
    finally:
        late.close()
    assert status_topic.endswith("/status")


def test_acks_for_another_epoch_or_older_sequence_are_ignored(
    broker: PrivateBroker, outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    outbox.append([packet_entry(i) for i in range(5)])
    hub = FakeHub(broker, ack=False)

    def ack(epoch: str, seq: int) -> None:
        body = {"sourceepoch": epoch, "sequence": pk.format_sequence(seq)}
        hub.client.publish(topics.down_ack(GATEWAY), json.dumps(body), qos=1)

    async def body(uplink: Uplink) -> None:
        assert await until(lambda: hub.seen() == {1, 2, 3, 4, 5})
        ack(str(ULID()), 5)  # another epoch: never deletes
        ack(outbox.epoch, 2)
        assert await uplink.wait_acked(2, 5)
        ack(outbox.epoch, 1)  # older than what is acked: no effect
        ack(outbox.epoch, 99)  # beyond anything allocated: refused
        ack(outbox.epoch, 4)
        assert await uplink.wait_acked(4, 5)
        assert uplink.acked_seq == 4
        assert [s for s, *_ in outbox.pending(0, 10)] == [5]

    caplog.set_level(logging.WARNING, logger="sync.uplink")
    try:
        _run_with_uplink(_config(broker), outbox, body)
    finally:
        hub.close()
    messages = [r.getMessage() for r in caplog.records]
    assert "uplink: hub ack for another epoch ignored" in messages
    assert "uplink: hub ack beyond the last allocated sequence ignored" in messages


def test_acks_sent_while_away_arrive_through_the_persistent_session(
    broker: PrivateBroker, outbox: Outbox
) -> None:
    outbox.append([packet_entry(i) for i in range(3)])
    hub = FakeHub(broker, ack=False)
    try:

        async def first_run(uplink: Uplink) -> None:
            assert await until(lambda: hub.seen() == {1, 2, 3})

        _run_with_uplink(_config(broker), outbox, first_run)
        # The gateway is down (stopped cleanly); the hub acks now. The broker keeps the ack
        # in the gateway's session (clean_start=False, session expiry > 0).
        hub.send_ack().wait_for_publish(5)  # the broker has it before the gateway returns

        async def second_run(uplink: Uplink) -> None:
            # The hub stays silent from here on: only the queued ack can delete the rows.
            assert await uplink.wait_acked(3, 10)

        _run_with_uplink(_config(broker), outbox, second_run)
    finally:
        hub.close()
    assert outbox.stats().pending == 0
