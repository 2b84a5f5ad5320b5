"""Webhook delivery against a real loopback receiver: signatures checked by the documented
recipe, outages of every kind (down, 500, hang, redirect, huge body) lose nothing and keep the
order, the cursor moves only on a 2xx, a restart resumes from it, refused destinations get no
request, and hub.yaml mistakes are named at file:line:col."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from webhook_receiver import Receiver

from hub.api import ApiContext, create_app
from hub.config import HubConfig, HubConfigError, parse_config
from hub.store import Store
from hub.webhooks import deliverer as deliverer_module
from hub.webhooks.allow import AllowList
from hub.webhooks.cursors import Cursors
from hub.webhooks.deliverer import Deliverer
from hub.webhooks.metrics import webhook_metrics
from hub.webhooks.status import WebhookStatus

SECRET = "s3cret-for-webhook-tests-0123456789"


@dataclass(frozen=True, slots=True)
class Entry:
    supplier: str
    position: int
    event_id: str
    type: str
    body: bytes


class ListFeed:
    """The feed protocol over lists: a small real in-process implementation."""

    def __init__(self) -> None:
        self._entries: dict[str, list[Entry]] = {}
        self._lock = threading.Lock()

    def append(self, supplier: str, type_: str = "keyop.operation.progress") -> Entry:
        with self._lock:
            log = self._entries.setdefault(supplier, [])
            position = len(log) + 1
            event_id = f"{supplier}-{position:06d}"
            body = json.dumps({"specversion": "1.0", "id": event_id, "type": type_,
                               "source": "plant1/edge-01", "data": {"n": position}},
                              separators=(",", ":")).encode()
            entry = Entry(supplier, position, event_id, type_, body)
            log.append(entry)
            return entry

    def read(self, supplier: str, after: int, limit: int) -> list[Entry]:
        with self._lock:
            return list(self._entries.get(supplier, [])[after:after + limit])

    def head(self, supplier: str) -> int:
        with self._lock:
            return len(self._entries.get(supplier, []))

    def heads(self, suppliers: Iterable[str]) -> dict[str, int]:
        return {supplier: self.head(supplier) for supplier in suppliers}


def _secret_file(tmp_path: Path, mode: int = 0o600) -> Path:
    path = tmp_path / "acme-erp.secret"
    path.write_text(SECRET + "\n")
    path.chmod(mode)
    return path


def _config(url: str, db: str, secret: Path, *, allow: str = "[127.0.0.1]",
            extra: str = "", types: str = "['*']", batch: int = 5,
            failing_after_s: float = 60.0) -> HubConfig:
    return parse_config(f"""
hub: {{database: "{db}"}}
webhooks:
  allow: {allow}
  timeout_s: 0.5
  connect_timeout_s: 0.5
  retry_min_s: 0.02
  retry_max_s: 0.1
  poll_s: 0.05
  failing_after_s: {failing_after_s}
suppliers:
  acme:
    webhooks:
      erp:
        url: "{url}"
        secret_file: "{secret}"
        types: {types}
        batch: {batch}
        start: oldest
{extra}
""", "hub.yaml")


async def _until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def _running(deliverer: Deliverer) -> AsyncIterator[Deliverer]:
    stop = asyncio.Event()
    task = asyncio.ensure_future(deliverer.run(stop))
    try:
        yield deliverer
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        await deliverer.close()


def _cursor(store: Store) -> int:
    saved = Cursors(store).all().get(("acme", "erp"))
    return saved.position if saved is not None else 0


def _in_feed_order(receiver: Receiver, feed: ListFeed) -> None:
    """Every feed entry arrived, first arrivals in feed order, each batch gap-free."""
    ids = receiver.ids()
    first_seen = list(dict.fromkeys(ids))
    assert first_seen == [e.event_id for e in feed.read("acme", 0, 10_000)]
    for delivery in receiver.accepted:
        first = int(delivery.headers["keyop-feed-first"])
        last = int(delivery.headers["keyop-feed-last"])
        assert [e["data"]["n"] for e in delivery.events] == list(range(first, last + 1))


def test_outages_lose_nothing_and_the_cursor_moves_only_on_2xx(
        hub_db_url: str, tmp_path: Path) -> None:
    receiver = Receiver(SECRET).start()
    config = _config(receiver.url(), hub_db_url, _secret_file(tmp_path))
    store = Store(hub_db_url)
    feed = ListFeed()

    async def scenario() -> None:
        async with _running(Deliverer(config, store, feed)) as deliverer:
            endpoint = deliverer.endpoints[0]
            for _ in range(12):
                feed.append("acme")
            deliverer.wake()
            await _until(lambda: _cursor(store) == 12)
            settled = 12
            for mode in ("500", "down", "hang", "redirect"):
                requests = len(receiver.requests)
                if mode == "down":
                    receiver.stop()
                else:
                    receiver.mode = mode
                for _ in range(3):
                    feed.append("acme")
                deliverer.wake()
                failures = endpoint.state.failures
                await _until(lambda f=failures: endpoint.state.failures >= f + 2)
                assert _cursor(store) == settled  # no 2xx: the cursor stays
                if mode == "down":
                    assert len(receiver.requests) == requests
                    receiver.start()
                elif mode == "hang":
                    assert "no answer within 0.5s" in (endpoint.state.last_error or "")
                    receiver.release.set()
                elif mode == "redirect":
                    assert "redirect to" in (endpoint.state.last_error or "")
                    assert not any(d.path == "/elsewhere" for d in receiver.requests)
                receiver.mode = "ok"
                settled += 3
                await _until(lambda s=settled: _cursor(store) == s)
                assert endpoint.state.failing_since is None
            # A 2xx whose body never ends: the hub reads a bounded part and goes on.
            receiver.mode = "huge"
            for _ in range(2):
                feed.append("acme")
            deliverer.wake()
            await _until(lambda: _cursor(store) == settled + 2)
            assert receiver.huge_sent < 1 << 28

    try:
        asyncio.run(scenario())
        _in_feed_order(receiver, feed)
        assert all(d.signed for d in receiver.requests)
        batch = receiver.accepted[0]
        assert batch.headers["Content-Type"] == "application/cloudevents-batch+json"
        assert batch.headers["keyop-supplier"] == "acme"
        assert batch.headers["keyop-webhook"] == "erp"
        assert len(batch.events) == 5  # the endpoint's batch size
        # Bodies from the feed unchanged, in a JSON array.
        assert batch.body == b"[" + b",".join(e.body for e in feed.read("acme", 0, 5)) + b"]"
    finally:
        receiver.stop()
        store.close()


def _shell_recipe() -> str:
    """The openssl recipe of docs/webhooks.md, as written there."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "webhooks.md").read_text()
    return text.split("```sh\n", 1)[1].split("```", 1)[0]


def test_the_documented_openssl_recipe_verifies_a_delivery(tmp_path: Path) -> None:
    receiver = Receiver(SECRET).start()
    db = f"sqlite:///{tmp_path / 'hub.db'}"
    config = _config(receiver.url(), db, _secret_file(tmp_path))
    store = Store(db)
    feed = ListFeed()
    feed.append("acme")

    async def scenario() -> None:
        async with _running(Deliverer(config, store, feed)):
            await _until(lambda: _cursor(store) == 1)

    try:
        asyncio.run(scenario())
    finally:
        receiver.stop()
        store.close()
    (delivery,) = receiver.accepted
    (tmp_path / "body.json").write_bytes(delivery.body)
    env = {"PATH": os.environ["PATH"], "SECRET": SECRET,
           "SIG": delivery.headers["keyop-signature"]}
    done = subprocess.run(["sh", "-c", _shell_recipe()], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.stdout.strip() == "valid", done.stderr
    (tmp_path / "body.json").write_bytes(delivery.body.replace(b'"n":1', b'"n":2'))
    done = subprocess.run(["sh", "-c", _shell_recipe()], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.stdout.strip() == ""


def test_a_restart_resumes_from_the_saved_cursor(hub_db_url: str, tmp_path: Path) -> None:
    receiver = Receiver(SECRET).start()
    config = _config(receiver.url(), hub_db_url, _secret_file(tmp_path), batch=3)
    feed = ListFeed()
    for _ in range(7):
        feed.append("acme")

    async def first_run(store: Store) -> None:
        async with _running(Deliverer(config, store, feed)):
            await _until(lambda: _cursor(store) == 7)
            receiver.mode = "500"
            for _ in range(5):
                feed.append("acme")
            await _until(lambda: any(d.status == 500 for d in receiver.requests))

    async def second_run(store: Store) -> None:
        receiver.mode = "ok"
        async with _running(Deliverer(config, store, feed)):
            await _until(lambda: _cursor(store) == 12)

    store = Store(hub_db_url)
    try:
        asyncio.run(first_run(store))
        assert _cursor(store) == 7
        store.close()
        store = Store(hub_db_url)  # as a restarted hub would
        asyncio.run(second_run(store))
        _in_feed_order(receiver, feed)
        # Nothing delivered twice: a restart starts after the saved cursor.
        assert len(receiver.ids()) == 12
    finally:
        receiver.stop()
        store.close()


def test_the_type_filter_skips_without_holding_the_cursor(tmp_path: Path) -> None:
    receiver = Receiver(SECRET).start()
    db = f"sqlite:///{tmp_path / 'hub.db'}"
    config = _config(receiver.url(), db, _secret_file(tmp_path),
                     types="[keyop.alert.*, keyop.operation.completed]", batch=10)
    store = Store(db)
    feed = ListFeed()
    kinds = ["keyop.operation.progress", "keyop.alert.delay_risk", "keyop.operation.progress",
             "keyop.operation.completed", "keyop.alerts.other", "keyop.alert.stalled"]
    for kind in kinds:
        feed.append("acme", kind)
    feed.append("acme", "keyop.operation.progress")

    async def scenario() -> None:
        async with _running(Deliverer(config, store, feed)):
            await _until(lambda: _cursor(store) == 7)

    try:
        asyncio.run(scenario())
        (only,) = receiver.accepted
        assert [e["type"] for e in only.events] == [
            "keyop.alert.delay_risk", "keyop.operation.completed", "keyop.alert.stalled"]
        assert (only.headers["keyop-feed-first"], only.headers["keyop-feed-last"]) == ("2", "6")
    finally:
        receiver.stop()
        store.close()


def test_a_destination_outside_the_allow_list_gets_no_request(tmp_path: Path) -> None:
    receiver = Receiver(SECRET, host="127.0.0.2").start()
    db = f"sqlite:///{tmp_path / 'hub.db'}"
    config = _config(receiver.url(), db, _secret_file(tmp_path), allow="[127.0.0.1]")
    store = Store(db)
    feed = ListFeed()
    feed.append("acme")

    async def scenario() -> None:
        async with _running(Deliverer(config, store, feed)) as deliverer:
            state = deliverer.endpoints[0].state
            await _until(lambda: state.failures >= 3)
            assert "127.0.0.2 (127.0.0.2) is not in webhooks.allow" in (state.last_error or "")

    try:
        asyncio.run(scenario())
        assert receiver.requests == []
        assert _cursor(store) == 0
    finally:
        receiver.stop()
        store.close()


def test_allow_list_rules() -> None:
    allow = AllowList(["127.0.0.1", "10.1.0.0/16", "erp.example.com", "localhost"])
    ip = ipaddress.ip_address
    assert allow.allows("anything", ip("127.0.0.1"))
    assert allow.allows("anything", ip("::ffff:127.0.0.1"))
    assert not allow.allows("anything", ip("127.0.0.2"))
    assert allow.allows("x", ip("10.1.200.3"))
    # A listed name reaches public addresses only: never loopback, private or link-local.
    assert allow.allows("erp.example.com", ip("93.184.215.14"))
    assert allow.allows("ERP.example.com.", ip("93.184.215.14"))
    assert not allow.allows("erp.example.com", ip("10.2.0.1"))
    assert not allow.allows("erp.example.com", ip("169.254.169.254"))
    assert not allow.allows("localhost", ip("::1"))
    assert not allow.allows("other.example.com", ip("93.184.215.14"))
    assert not AllowList([]).allows("erp.example.com", ip("93.184.215.14"))


def test_an_endpoint_failing_long_enough_raises_the_alert_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    receiver = Receiver(SECRET).start()
    receiver.mode = "500"
    db = f"sqlite:///{tmp_path / 'hub.db'}"
    config = _config(receiver.url(), db, _secret_file(tmp_path), failing_after_s=0.3)
    store = Store(db)
    feed = ListFeed()
    feed.append("acme")

    async def scenario() -> None:
        async with _running(Deliverer(config, store, feed)) as deliverer:
            state = deliverer.endpoints[0].state
            await _until(lambda: state.failing)
            failures = state.failures
            await _until(lambda: state.failures >= failures + 3)
            (row,) = WebhookStatus(config, Cursors(store), feed).rows()
            assert row["failing"] and row["lag"] == 1 and row["last_status"] == 500
            assert row["cursor"] == 0 and row["head"] == 1 and "HTTP 500" in row["last_error"]
            receiver.mode = "ok"
            await _until(lambda: not state.failing and _cursor(store) == 1)
            (row,) = WebhookStatus(config, Cursors(store), feed).rows()
            assert not row["failing"] and row["lag"] == 0 and row["last_error"] is None

    try:
        with caplog.at_level(logging.INFO, logger="hub.webhooks"):
            asyncio.run(scenario())
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1 and "failing for" in errors[0].getMessage()
        assert any("recovered" in r.getMessage() for r in caplog.records)
    finally:
        receiver.stop()
        store.close()


def test_one_process_at_a_time_delivers(tmp_path: Path) -> None:
    receiver = Receiver(SECRET).start()
    db = f"sqlite:///{tmp_path / 'hub.db'}"
    config = _config(receiver.url(), db, _secret_file(tmp_path))
    store = Store(db)
    feed = ListFeed()

    async def scenario() -> None:
        first, second = Deliverer(config, store, feed), Deliverer(config, store, feed)
        async with _running(first), _running(second):
            await _until(lambda: first.holds_lease or second.holds_lease)
            for _ in range(20):
                feed.append("acme")
            await _until(lambda: _cursor(store) == 20)
            assert first.holds_lease != second.holds_lease

    try:
        asyncio.run(scenario())
        assert len(receiver.ids()) == 20
    finally:
        receiver.stop()
        store.close()


def test_a_secret_file_open_to_others_is_refused(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'hub.db'}"
    config = _config("http://127.0.0.1:9/hook", db, _secret_file(tmp_path, 0o640))
    store = Store(db)
    try:
        with pytest.raises(HubConfigError, match="mode 0640"):
            Deliverer(config, store, ListFeed())
    finally:
        store.close()
    assert os.stat(tmp_path / "acme-erp.secret").st_mode & 0o777 == 0o640


@pytest.mark.parametrize(("endpoint", "expected"), [
    ('url: "ftp://erp.example.com/x"',
     "hub.yaml:7:9: suppliers.acme.webhooks.erp.url: 'ftp://erp.example.com/x': the scheme "
     "must be http or https"),
    ('url: "https://user:pw@erp.example.com/x"',
     "hub.yaml:7:9: suppliers.acme.webhooks.erp.url: 'https://user:pw@erp.example.com/x': no "
     "credentials in the URL"),
    # The HTTP client takes ASCII URLs only: a non-ASCII host once stopped every endpoint.
    ('url: "https://\u00e9rp.example.com/x"',
     "hub.yaml:7:9: suppliers.acme.webhooks.erp.url: 'https://\u00e9rp.example.com/x': "
     "only printable ASCII without spaces"),
    ('url: "https://erp.example.com/b\u00f6m"',
     "hub.yaml:7:9: suppliers.acme.webhooks.erp.url: 'https://erp.example.com/b\u00f6m': "
     "only printable ASCII without spaces"),
    ('url: "https://erp example.com/x"',
     "hub.yaml:7:9: suppliers.acme.webhooks.erp.url: 'https://erp example.com/x': "
     "only printable ASCII without spaces"),
    ('url: "https://erp_1.example.com/x"',
     "hub.yaml:7:9: suppliers.acme.webhooks.erp.url: 'https://erp_1.example.com/x': "
     "the host is neither an IP address nor a host name"),
    ('url: "https://erp.example.com/x"\n        types: [keyop.alert*]',
     "hub.yaml:8:17: suppliers.acme.webhooks.erp.types.0: 'keyop.alert*' is not an event type"),
    ('url: "https://erp.example.com/x"\n        batch: 0',
     "hub.yaml:8:9: suppliers.acme.webhooks.erp.batch: Input should be greater than or "
     "equal to 1"),
    ('url: "https://erp.example.com/x"\n        secret: abc',
     "hub.yaml:8:9: suppliers.acme.webhooks.erp.secret: unknown key 'secret'"),
])
def test_config_errors_name_file_line_and_column(endpoint: str, expected: str) -> None:
    text = ("webhooks:\n  allow: [erp.example.com]\nsuppliers:\n  acme:\n    webhooks:\n"
            f"      erp:\n        {endpoint}\n        secret_file: s.secret\n")
    with pytest.raises(HubConfigError) as error:
        parse_config(text, "hub.yaml")
    assert str(error.value).startswith(expected)


def test_allow_list_errors_name_file_line_and_column() -> None:
    with pytest.raises(HubConfigError) as error:
        parse_config("webhooks:\n  allow: [127.0.0.1, 'Bad Host!']\n", "hub.yaml")
    assert str(error.value).startswith(
        "hub.yaml:2:22: webhooks.allow.1: 'Bad Host!' is not an IP address")


def test_the_admin_api_and_metrics_show_every_endpoint(tmp_path: Path) -> None:
    receiver = Receiver(SECRET).start()
    receiver.mode = "500"
    db = f"sqlite:///{tmp_path / 'hub.db'}"
    admin_key, acme_key = "admin-key-" + "a" * 32, "acme-key-" + "b" * 32
    (tmp_path / "admin.key").write_text(admin_key)
    (tmp_path / "acme.key").write_text(acme_key)
    config = _config(receiver.url(), db, _secret_file(tmp_path), failing_after_s=0, extra=f"""
    api_key_file: "{tmp_path / 'acme.key'}"
api: {{admin_key_file: "{tmp_path / 'admin.key'}"}}
""")
    store = Store(db)
    feed = ListFeed()
    for _ in range(3):
        feed.append("acme")
    deliverer = Deliverer(config, store, feed)

    async def scenario() -> None:
        async with _running(deliverer):
            await _until(lambda: deliverer.endpoints[0].state.failing)

    try:
        asyncio.run(scenario())
        status = WebhookStatus(config, Cursors(store), feed)
        context = ApiContext(config, store)
        context.webhook_status = status.rows
        try:
            with TestClient(create_app(context)) as client:
                refused = client.get("/v1/admin/webhooks",
                                     headers={"Authorization": f"Bearer {acme_key}"})
                answer = client.get("/v1/admin/webhooks",
                                    headers={"Authorization": f"Bearer {admin_key}"})
        finally:
            context.close()
        assert refused.status_code == 403
        assert answer.status_code == 200
        (row,) = answer.json()["webhooks"]
        assert row["supplier"] == "acme" and row["name"] == "erp" and row["failing"]
        assert (row["cursor"], row["head"], row["lag"], row["last_status"]) == (0, 3, 3, 500)
        families = {f.name: f for f in webhook_metrics("hub", deliverer, status.rows)}
        labels = {"hub": "hub", "supplier": "acme", "webhook": "erp"}

        def value(name: str) -> float:
            (sample,) = [s for s in families[name].samples if s.labels == labels]
            return sample.value

        assert value("keyop_hub_webhook_failing") == 1
        assert value("keyop_hub_webhook_lag") == 3
        assert value("keyop_hub_webhook_failures") >= 1
        assert value("keyop_hub_webhook_events") == 0
    finally:
        receiver.stop()
        store.close()


def test_the_documented_configuration_loads() -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "webhooks.md").read_text()
    example = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    config = parse_config(example, "docs/webhooks.md")
    (name, endpoint), = config.suppliers["acme"].webhooks.items()
    assert name == "erp" and endpoint.batch == 100 and endpoint.start == "head"
    assert endpoint.accepts("keyop.alert.stalled") and endpoint.accepts(
        "keyop.operation.completed") and not endpoint.accepts("keyop.operation.progress")
    assert config.webhooks.allow == ["erp.acme.example", "10.20.0.0/24"]


class FlakyFeed(ListFeed):
    """A feed whose reads fail for one supplier a few times (as a database error would)."""

    def __init__(self, failing: str, failures: int) -> None:
        super().__init__()
        self.failing, self.failures = failing, failures

    def read(self, supplier: str, after: int, limit: int) -> list[Entry]:
        if supplier == self.failing and self.failures > 0:
            self.failures -= 1
            raise OSError("disk I/O error")
        return super().read(supplier, after, limit)


def test_one_endpoints_failure_never_stops_the_others(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(deliverer_module, "RESTART_MIN_S", 0.05)
    receiver = Receiver(SECRET).start()
    db = f"sqlite:///{tmp_path / 'hub.db'}"
    secret = _secret_file(tmp_path)
    bolt = (f"  bolt:\n    webhooks:\n      erp:\n        url: \"{receiver.url()}\"\n"
            f"        secret_file: \"{secret}\"\n        start: oldest\n")
    config = _config(receiver.url(), db, secret, extra=bolt)
    store = Store(db)
    feed = FlakyFeed("acme", failures=3)
    for _ in range(6):
        feed.append("acme", "keyop.operation.progress")
        feed.append("bolt", "keyop.operation.progress")

    def delivered(supplier: str) -> int:
        return sum(len(d.events) for d in receiver.accepted
                   if d.headers["keyop-supplier"] == supplier)

    async def scenario() -> None:
        async with _running(Deliverer(config, store, feed)):
            # bolt is served while acme's loop fails and restarts.
            await _until(lambda: delivered("bolt") == 6)
            await _until(lambda: delivered("acme") == 6)

    try:
        asyncio.run(scenario())
        assert feed.failures == 0
        failed = [r for r in caplog.records if "delivery loop failed" in r.getMessage()]
        assert len(failed) == 3 and all("webhook acme/erp" in r.getMessage() for r in failed)
        assert [e["id"] for e in receiver.accepted[0].events]  # real deliveries, signed
        assert len(set(receiver.ids())) == 12
    finally:
        receiver.stop()
        store.close()
