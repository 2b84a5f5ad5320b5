"""The hub's retained status on MQTT (keyop/v1/hub/status): online, when it last stored an
event and how late events reach it, republished while it runs; the same document as
GET /v1/hub/status."""

from __future__ import annotations

import pytest
from hubkit import GATEWAY, Client, RunningHub, hub_config, make_event, wait_until

from devstack.mosquitto import PrivateBroker
from sync import topics


@pytest.mark.timeout(60)
def test_the_retained_status_tells_the_last_ingest(broker: PrivateBroker, hub_db_url: str
                                                   ) -> None:
    config = hub_config(broker, hub_db_url)
    config = config.model_copy(update={"hub": config.hub.model_copy(
        update={"status_interval_s": 0.2})})
    edge = Client(broker, topics.down_ack(GATEWAY))
    hub = RunningHub(config, broker)
    watcher = Client(broker, topics.hub_status())
    try:
        wait_until(lambda: any(p.get("online") and "lastIngest" in p
                               for p in watcher.payloads()), "a periodic status")
        assert watcher.payloads()[-1]["lastIngest"] is None  # nothing stored yet
        edge.publish(topics.up_events(GATEWAY), make_event(1))
        wait_until(lambda: watcher.payloads()[-1].get("lastIngest") is not None,
                   "the status after the first event")
        status = watcher.payloads()[-1]
        assert status["online"] is True and status["hub"] == "hub"
        # make_event's times are in 2026-11: stored long after their event time.
        assert status["ingestLagSeconds"] > 0
        assert set(status) == {"hub", "online", "lastIngest", "ingestLagSeconds", "asOf", "ts"}
    finally:
        watcher.close()
        hub.close()
        edge.close()
    late = Client(broker, topics.hub_status())
    try:
        # A clean stop leaves "offline" retained.
        wait_until(lambda: bool(late.payloads()), "the retained status")
        assert late.payloads()[-1]["online"] is False
    finally:
        late.close()
