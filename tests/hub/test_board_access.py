"""The progress board's access rules and what it shows, through the real app on SQLite and
PostgreSQL: sessions, CSRF, login limits, the audit log, one supplier never seeing another's
orders, the same redaction as the API."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from factories import operation_event
from fastapi.testclient import TestClient

from hub.api import ApiContext, create_app
from hub.board.passwords import hash_password, verify_password
from hub.config import HubConfig, hash_key, parse_config
from hub.store import Incoming, Store
from sync import packet_codec

ACME_KEY = "acme-key-" + "a" * 32
ADMIN_KEY = "admin-key-" + "b" * 32
PASSWORD = "correct horse battery"
HASH = hash_password(PASSWORD)  # once: scrypt is slow on purpose
BOLT_SECRET = "PO-BOLT-ONLY-91"
ROUTES = ["/board/", "/board/s/acme", "/board/s/acme/rows?o=WO-1001", "/board/s/acme/alerts",
          "/board/s/acme/orders/WO-1001", "/board/s/acme/stream", "/board/plant",
          "/board/plant/health"]


def config_for(db_url: str, **board: Any) -> HubConfig:
    extra = "".join(f"\n  {k}: {json.dumps(v)}" for k, v in board.items())
    return parse_config(f"""
hub: {{database: "{db_url}"}}
api: {{port: 0, audit_flush_s: 0.05, admin_key_hash: "{hash_key(ADMIN_KEY)}"}}
suppliers:
  acme: {{api_key_hash: "{hash_key(ACME_KEY)}",
         station_names: {{plant1/body/line-3/welder-2: "Welding cell 2"}}}}
  bolt: {{}}
routes:
  - {{supplier: acme, work_orders: ["WO-1*"]}}
  - {{supplier: bolt, work_orders: ["WO-2*"]}}
orders:
  WO-1001: {{due: "2099-12-05T16:00:00Z"}}
  WO-1002: {{due: "2020-01-01T00:00:00Z"}}
board:
  timezone: Asia/Shanghai{extra}
  users:
    alice: {{supplier: acme, password_hash: "{HASH}"}}
    bob: {{supplier: bolt, password_hash: "{HASH}"}}
    coord: {{plant: true, password_hash: "{HASH}"}}
""", "board-test.yaml")


def incoming(body: bytes, customer_orders: list[str] | None = None) -> Incoming:
    raw = json.loads(body)
    if customer_orders:
        raw["data"]["workOrder"]["customerOrders"] = customer_orders
    return Incoming(packet_codec.from_obj(raw), raw)


def stored(store: Store) -> None:
    now = time.time()
    store.store_batch([
        incoming(operation_event(1, type="started", time=now - 600)),
        incoming(operation_event(2, good=40, time=now - 300)),
        incoming(operation_event(3, type="paused", state="Paused", good=40, time=now - 200,
                                 reason={"code": "material", "text": "waiting for steel"})),
        incoming(operation_event(4, type="started", work_order="WO-1002", time=now - 100)),
        incoming(operation_event(5, type="started", work_order="WO-2001", time=now - 100),
                 customer_orders=[BOLT_SECRET]),
    ])


class Board:
    def __init__(self, client: TestClient, store: Store, config: HubConfig) -> None:
        self.client = client
        self.store = store
        self.config = config

    def login(self, user: str = "alice", password: str = PASSWORD, key: str | None = None,
              **headers: str) -> Any:
        form = self.client.get("/board/login", headers=headers)
        csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
        assert csrf is not None
        fields = {"csrf": csrf[1], "next": "/board/"}
        fields.update({"key": key} if key else {"user": user, "password": password})
        return self.client.post("/board/login", data=fields, follow_redirects=False,
                                headers=headers)

    def csrf(self, path: str) -> str:
        found = re.search(r'name="csrf" value="([^"]+)"', self.client.get(path).text)
        assert found is not None
        return found[1]

    def audit(self, timeout: float = 5.0) -> list[Any]:
        deadline = time.monotonic() + timeout
        rows = self.store.list_audit()
        while time.monotonic() < deadline:
            time.sleep(0.06)
            newer = self.store.list_audit()
            if len(newer) == len(rows):
                return newer
            rows = newer
        return rows


@pytest.fixture
def board(hub_db_url: str) -> Iterator[Board]:
    config = config_for(hub_db_url)
    store = Store(hub_db_url, config)
    stored(store)
    with TestClient(create_app(ApiContext(config, store))) as client:
        yield Board(client, store, config)
    store.close()


@pytest.mark.parametrize("path", ROUTES)
def test_every_board_route_without_a_session_redirects_to_the_login(board: Board,
                                                                    path: str) -> None:
    for cookies in ({}, {"keyop_board": "forged-token"}):
        board.client.cookies.clear()
        board.client.cookies.update(cookies)
        response = board.client.get(path, follow_redirects=False)
        assert response.status_code == 303, (path, response.text)
        assert response.headers["location"].startswith("/board/login?next=")
    board.client.cookies.clear()
    assert board.client.post("/board/logout", follow_redirects=False).status_code == 303


def test_a_supplier_sees_its_orders_and_never_anothers(board: Board) -> None:
    response = board.login()
    assert response.status_code == 303 and response.headers["location"] == "/board/"
    cookie = response.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/board" in cookie
    page = board.client.get("/board/s/acme?show=all")
    assert page.status_code == 200
    assert "WO-1001" in page.text and "WO-1002" in page.text
    assert "WO-2001" not in page.text and BOLT_SECRET not in page.text
    # The same station name as acme's API answer (its public name, never the path).
    api = board.client.get("/v1/orders/WO-1001",
                           headers={"Authorization": f"Bearer {ACME_KEY}"}).json()
    assert api["operations"][0]["station"] == "Welding cell 2"
    assert 'title="Welding cell 2"' in page.text and "welder-2\"" not in page.text
    # bolt's board, rows, order and stream by URL: not found, like an order that never was.
    for path in ("/board/s/bolt", "/board/s/bolt/rows?o=WO-2001", "/board/s/bolt/alerts",
                 "/board/s/bolt/orders/WO-2001", "/board/s/bolt/stream",
                 "/board/s/acme/orders/WO-2001", "/board/s/nobody", "/board/plant/health"):
        answer = board.client.get(path, follow_redirects=False)
        assert answer.status_code == 404, path
        assert "WO-2001" not in answer.text and BOLT_SECRET not in answer.text
    rows = board.client.get("/board/s/acme/rows", params={"o": ["WO-2001", "WO-1001"]})
    assert rows.status_code == 200
    assert "row-WO-1001" in rows.text and "WO-2001" not in rows.text
    # The coordinator's page sends a supplier back to its own board.
    plant = board.client.get("/board/plant", follow_redirects=False)
    assert plant.headers["location"] == "/board/s/acme"


def test_the_board_shows_state_reason_progress_risk_and_the_timeline(board: Board) -> None:
    board.login()
    page = board.client.get("/board/s/acme").text
    row = page[page.index('id="row-WO-1001"'):page.index('id="row-WO-1002"')]
    assert "state-Paused" in row and "waiting for steel" in row
    assert '<span class="p40"></span>' in row and '<span class="good">40</span>' in row
    assert 'data-risk="on_track"' in row
    late = page[page.index('id="row-WO-1002"'):]
    assert 'data-risk="late"' in late[:200]
    # Times in the plant's zone, with its offset.
    assert "Asia/Shanghai (UTC+08:00)" in page and "2099-12-06T00:00:00+08:00" in page
    # Filters: at risk only keeps the late order; a search keeps what it names.
    risky = board.client.get("/board/s/acme?risk=true").text
    assert "row-WO-1002" in risky and "row-WO-1001" not in risky
    found = board.client.get("/board/s/acme?q=1001").text
    assert "row-WO-1001" in found and "row-WO-1002" not in found
    closed = board.client.get("/board/s/acme?show=closed").text
    assert "row-WO-1001" not in closed
    timeline = board.client.get("/board/s/acme/orders/WO-1001").text
    assert 'class="span-running"' in timeline and 'class="span-paused"' in timeline
    assert 'class="due"' in timeline and "waiting for steel" in timeline
    # Nothing the page loads may come from elsewhere.
    assert "default-src 'none'" in board.client.get("/board/s/acme").headers[
        "content-security-policy"]


def test_chinese_by_accept_language_and_the_switch(board: Board) -> None:
    board.login()
    zh = board.client.get("/board/s/acme", headers={"Accept-Language": "zh-CN,zh;q=0.9,en;q=0.5"})
    assert '<html lang="zh-CN">' in zh.text and "已暂停" in zh.text and "12月" in zh.text
    en = board.client.get("/board/s/acme", headers={"Accept-Language": "en-US"})
    assert '<html lang="en">' in en.text and "Paused" in en.text
    switched = board.client.get("/board/s/acme?lang=zh-CN", headers={"Accept-Language": "en"})
    assert '<html lang="zh-CN">' in switched.text
    # The switch (back to English now) keeps the page's filters.
    filtered = board.client.get("/board/s/acme?show=all&q=10", headers={"Accept-Language": "en"})
    assert 'href="/board/s/acme?show=all&amp;q=10&amp;lang=en"' in filtered.text
    # The choice is remembered for the fragments the page fetches.
    rows = board.client.get("/board/s/acme/rows?o=WO-1001", headers={"Accept-Language": "en"})
    assert "已暂停" in rows.text


def test_csrf_on_every_form(board: Board) -> None:
    # A login form posted without the login page's token is refused.
    response = board.client.post("/board/login", data={"user": "alice", "password": PASSWORD},
                                 follow_redirects=False)
    assert response.status_code == 403 and "keyop_board=" not in response.headers.get(
        "set-cookie", "")
    board.login()
    assert board.client.post("/board/logout", data={"csrf": "wrong"},
                             follow_redirects=False).status_code == 403
    assert board.client.get("/board/s/acme").status_code == 200  # still logged in
    token = board.csrf("/board/s/acme")
    out = board.client.post("/board/logout", data={"csrf": token}, follow_redirects=False)
    assert out.status_code == 303 and out.headers["location"] == "/board/login"


def test_logout_ends_the_session_even_for_a_kept_cookie(board: Board) -> None:
    board.login()
    cookie = board.client.cookies["keyop_board"]
    board.client.post("/board/logout", data={"csrf": board.csrf("/board/s/acme")})
    board.client.cookies.clear()
    board.client.cookies.set("keyop_board", cookie)
    assert board.client.get("/board/s/acme", follow_redirects=False).status_code == 303


def test_wrong_logins_are_refused_rate_limited_and_audited(board: Board) -> None:
    assert board.login(password="wrong password").status_code == 401
    assert board.login(user="mallory").status_code == 401
    assert board.login().status_code == 303
    statuses = [board.login(password="guess").status_code for _ in range(5)]
    assert statuses[-1] == 429, statuses
    rows = board.audit()
    logins = [(r.status, r.supplier, r.query) for r in rows if r.path == "/board/login"
              and r.method == "POST"]
    assert (303, "acme", "board login alice") in logins
    refusals = {q for status, _, q in logins if status != 303}
    assert "refused: board login: wrong credentials ('alice')" in refusals
    assert "refused: board login: wrong credentials ('mallory')" in refusals
    assert any("rate limit" in q for q in refusals)
    # Every page read is in the log with its supplier and user.
    board.client.get("/board/s/acme")
    assert any(r.path == "/board/s/acme" and r.supplier == "acme" and "alice" in r.query
               for r in board.audit())


def test_an_api_key_is_exchanged_for_a_session(board: Board) -> None:
    assert board.login(key="not a key").status_code == 401
    assert board.login(key=ACME_KEY).status_code == 303
    assert "WO-1001" in board.client.get("/board/s/acme").text
    assert board.client.get("/board/s/bolt").status_code == 404
    board.client.cookies.clear()
    assert board.login(key=ADMIN_KEY).status_code == 303
    assert board.client.get("/board/", follow_redirects=False).headers[
        "location"] == "/board/plant"


def test_the_coordinator_sees_every_supplier_and_the_edge(board: Board) -> None:
    board.login(user="coord")
    plant = board.client.get("/board/plant")
    assert plant.status_code == 200
    assert "/board/s/acme" in plant.text and "/board/s/bolt" in plant.text
    assert "plant1/edge-07" in plant.text
    bolt = board.client.get("/board/s/bolt")
    assert "WO-2001" in bolt.text and "WO-1001" not in bolt.text
    assert board.client.get("/board/plant/health").status_code == 200


def test_a_session_outlives_a_hub_restart(board: Board) -> None:
    board.login()
    cookie = board.client.cookies["keyop_board"]
    with TestClient(create_app(ApiContext(board.config, board.store))) as again:
        again.cookies.set("keyop_board", cookie)
        assert again.get("/board/s/acme", follow_redirects=False).status_code == 200


def test_the_stream_follows_the_supplier_feed_from_a_cursor(board: Board) -> None:
    board.login()
    with board.client.stream("GET", "/board/s/acme/stream?after=0") as stream:
        seen: list[str] = []
        for line in stream.iter_lines():
            if line.startswith("id: "):
                seen.append(line[4:])
            if len(seen) == 4:
                break
    # acme's four events, never bolt's (in bolt's feed); each id its feed position.
    assert seen == ["1", "2", "3", "4"]
    with board.client.stream("GET", "/board/s/acme/stream",
                             headers={"Last-Event-ID": "3"}) as stream:
        for line in stream.iter_lines():
            if line.startswith("id: "):
                assert line == "id: 4"
                break


def test_passwords_hash_slowly_and_verify() -> None:
    assert HASH.startswith("scrypt$n=131072,r=8,p=1$")
    assert verify_password(PASSWORD, HASH)
    assert not verify_password(PASSWORD + "x", HASH)
    assert not verify_password(PASSWORD, None)
    assert hash_password(PASSWORD) != HASH  # salted


def test_keyop_hub_user_add_prints_the_entry(tmp_path: Path, hub_db_url: str) -> None:
    hub_yaml = tmp_path / "hub.yaml"
    hub_yaml.write_text("suppliers: {acme: {}}\n")
    done = subprocess.run([sys.executable, "-m", "cli", "hub", "user", "add", "alice",
                           "--supplier", "acme", "-c", str(hub_yaml)],
                          input="a long password\n", capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    entry = done.stdout.splitlines()[-1]
    assert entry.strip().startswith('"alice": {supplier: acme, password_hash: "scrypt$')
    stored_hash = entry.split('password_hash: "')[1].rstrip('"}')
    assert verify_password("a long password", stored_hash)
    wrong = subprocess.run([sys.executable, "-m", "cli", "hub", "user", "add", "eve",
                            "--supplier", "nobody", "-c", str(hub_yaml)], input="x" * 12,
                           capture_output=True, text=True, timeout=60, check=False)
    assert wrong.returncode != 0 and "nobody" in wrong.stderr


def test_board_config_errors_name_the_place() -> None:
    with pytest.raises(ValueError, match=r"board\.users\.x\.supplier: unknown supplier 'nope'"):
        parse_config(f'suppliers: {{acme: {{}}}}\nboard: {{users: {{x: {{supplier: nope, '
                     f'password_hash: "{HASH}"}}}}}}\n')
    with pytest.raises(ValueError, match=r"board\.timezone"):
        parse_config("board: {timezone: Mars/Olympus}\n")


def test_open_boards_per_user_are_bounded_like_an_api_keys_streams(board: Board) -> None:
    board.login()
    limit = board.config.api.max_streams_per_key
    with contextlib.ExitStack() as open_streams:
        for _ in range(limit):
            response = open_streams.enter_context(
                board.client.stream("GET", "/board/s/acme/stream"))
            assert response.status_code == 200
        refused = board.client.get("/board/s/acme/stream")
        assert refused.status_code == 429 and refused.headers["retry-after"] == "5"
    # A closed board frees its slot as soon as the stream notices (bounded wait).
    deadline = time.monotonic() + 10
    while True:
        with board.client.stream("GET", "/board/s/acme/stream") as again:
            if again.status_code == 200:
                break
        assert time.monotonic() < deadline, "the closed streams never freed their slots"
        time.sleep(0.1)
