"""Webhooks through a real hub process: packets published to Mosquitto reach a loopback
receiver through the supplier feed; kill -9 of the hub with a batch in flight, a restart, and
delivery resumes from the saved cursor with nothing lost and the order kept."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from factories import BASE_TIME, progress_draft, render_event
from paho.mqtt.enums import CallbackAPIVersion
from webhook_receiver import Receiver

from devstack.mosquitto import PrivateBroker
from devstack.stack import wait_hub_online
from sync import topics

ROOT = Path(__file__).resolve().parents[2]
SECRET = "kill-test-secret-0123456789abcdef"
SOURCE, EPOCH, GATEWAY = "plant1/edge-07", "01JCZ0K3M9B4X2W7Q5N8D1F6HA", "edge-07"


def _event(seq: int) -> bytes:
    draft = progress_draft(work_order="WO-1001", operation="OP30", good=10 * seq, scrap=0,
                           planned=None, state="Running", params=None, time=BASE_TIME + seq)
    return render_event(draft, seq=seq, source=SOURCE, epoch=EPOCH,
                        id=f"01JDA5Q1Y4S7M2R8K{seq:09d}", recorded=BASE_TIME + seq)


def _wait(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def _hub(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-c", "import sys; from hub.service import main; "
             "sys.exit(main(sys.argv[1]))", str(config)],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_hub_kill_9_resumes_webhooks_from_the_cursor(
        broker: PrivateBroker, hub_db_url: str, tmp_path: Path) -> None:
    receiver = Receiver(SECRET).start()
    secret = tmp_path / "erp.secret"
    secret.write_text(SECRET)
    secret.chmod(0o600)
    config = tmp_path / "hub.yaml"
    config.write_text(f"""
hub: {{id: hub, database: "{hub_db_url}"}}
api: {{enabled: false}}
alerts: {{enabled: false}}
mqtt: {{host: {broker.host}, port: {broker.port}, client_id: keyop-hub-kill, share_group: kt}}
webhooks:
  allow: [127.0.0.1]
  timeout_s: 1
  retry_min_s: 0.05
  retry_max_s: 0.2
  poll_s: 0.1
suppliers:
  acme:
    webhooks:
      erp: {{url: "{receiver.url()}", secret_file: "{secret}", batch: 4, start: oldest}}
routes:
  - {{supplier: acme, work_orders: ["WO-*"]}}
""")
    edge = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"edge-{uuid.uuid4().hex[:6]}",
                       protocol=mqtt.MQTTv5)
    edge.connect(broker.host, broker.port)
    edge.loop_start()

    def publish(seqs: range) -> None:
        for seq in seqs:
            edge.publish(topics.up_events(GATEWAY), _event(seq), qos=1).wait_for_publish(5)

    def delivered() -> set[str]:
        return set(receiver.ids())

    log = tmp_path / "hub.log"
    hub = _hub(config, log)
    try:
        wait_hub_online(broker.host, broker.port)  # subscribed: its session keeps what follows
        publish(range(1, 11))
        _wait(lambda: len(delivered()) == 10, "the first 10 events at the receiver")
        # A batch in flight when the hub dies: the receiver holds it, unanswered.
        receiver.mode = "hang"
        publish(range(11, 21))
        arrived = receiver.arrivals
        _wait(lambda: receiver.arrivals > arrived, "a delivery in flight")
        hub.send_signal(signal.SIGKILL)
        hub.wait(10)
        receiver.release.set()
        receiver.mode = "ok"
        hub = _hub(config, log)
        _wait(lambda: len(delivered()) == 20, "all 20 events after the restart", 60)
        expected = [json.loads(_event(seq))["id"] for seq in range(1, 21)]
        assert list(dict.fromkeys(receiver.ids())) == expected
        assert all(d.signed for d in receiver.requests)
        hub.send_signal(signal.SIGTERM)
        assert hub.wait(20) == 0, log.read_text()[-3000:]
    finally:
        if hub.poll() is None:
            hub.kill()
            hub.wait()
        edge.loop_stop()
        edge.disconnect()
        receiver.stop()
