"""Wall-clock jumps of +1 h and -1 h on the edge, mid-stream (an NTP step after a cold boot,
a technician fixing the time): order and dedupe follow `sequence`, never `recordedtime`, and the
uplink's timers (ack timeout, backoff) run on the monotonic clock, so a jump neither fires a
resend early nor stalls one.

The gateway side runs in this process (so its wall clock can be stepped: `time.time` is
patched, `time.monotonic` and the event loop's clock are left alone), against a real Mosquitto
and the test hub of test_uplink that acks the contiguous prefix.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from edgekit import FakeHub, until
from factories import progress_draft
from ulid import ULID

from devstack.mosquitto import PrivateBroker
from edge_store import Entry, GroupWriter, Outbox
from sync import packet as pk
from sync import packet_codec as codec
from sync.uplink import Uplink, UplinkConfig

pytestmark = pytest.mark.timeout(60)

GATEWAY = "edge-07"
SOURCE = f"plant1/{GATEWAY}"


def clocked_entry(good: int = 1) -> Entry:
    """As the gateway renders: `recordedtime` is the wall clock at commit."""
    draft, packet_id = progress_draft(good=good), str(ULID())

    def body(seq: int, epoch: str) -> bytes:
        return codec.render(draft, id=packet_id, source=SOURCE, sequence=seq, epoch=epoch,
                         recorded=time.time())

    return Entry(packet_id, body, 0, draft.type)


def test_clock_jumps_do_not_reorder_duplicate_or_misfire_timers(
    broker: PrivateBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_time = time.time
    offset = [0.0]
    monkeypatch.setattr(time, "time", lambda: real_time() + offset[0])
    hub = FakeHub(broker)
    outbox = Outbox(tmp_path / "o.db", SOURCE)

    async def main() -> Uplink:
        config = UplinkConfig(host=broker.host, port=broker.port, gateway=GATEWAY,
                              source=SOURCE, ack_timeout_s=4.0, backoff_min_s=0.1,
                              backoff_max_s=0.5)
        uplink = Uplink(config, outbox)
        task = asyncio.create_task(uplink.run())
        try:
            async with GroupWriter(outbox) as writer:
                seq = 0
                for step in (0.0, 3600.0, -3600.0, 0.0):
                    offset[0] = step
                    for i in range(50):
                        seq = await writer.append(clocked_entry(i))
                    assert await uplink.wait_acked(seq, 10)
                # A jump while rows are unacknowledged: the ack timeout must not fire at once.
                hub.ack = False
                offset[0] = -3600.0
                last = await writer.append(clocked_entry())
                offset[0] = +7200.0
                await asyncio.sleep(1.0)  # a quarter of the ack timeout, in monotonic time
                assert uplink.resends == 0, "a wall-clock jump fired the ack timeout"
                # ...and the timer still fires when its monotonic time has come.
                assert await until(lambda: uplink.resends >= 1, 15)
                assert last in hub.seen()
                hub.ack = True
                hub.send_ack()
                assert await uplink.wait_acked(last, 10)
        finally:
            await asyncio.wait_for(uplink.stop(), 10)
            await task
        return uplink

    try:
        uplink = asyncio.run(main())
    finally:
        hub.close()
        outbox.close()
    arrivals = list(dict.fromkeys(hub.arrivals))
    assert arrivals == list(range(1, 202)), "first arrivals follow seq, whatever the clock"
    assert len(arrivals) == 201
    assert uplink.resends >= 1  # only the one provoked on purpose at the end
    recorded = [pk.parse_time(json.loads(hub.bodies[s][0])["recordedtime"]) for s in (1, 51, 101)]
    # The stamps do jump (the packets say what the clock said); only seq orders them.
    assert recorded[1] - recorded[0] > 3000 and recorded[2] - recorded[1] < -6000
