"""The supplier API cannot be abused: the key before the body, bounded bodies, per-key rate and
stream limits, the audit's client address, one key per account. Real uvicorn on a free
loopback port (hub/server.py), the store on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import secrets
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_hub_service import wait_until
from test_hub_store import incoming

from hub.api import ApiContext
from hub.api.auth import Keys
from hub.config import HubConfig, HubConfigError, hash_key, parse_config
from hub.server import ApiServer
from hub.store import Store


class Served:
    """The hub's API server on its own thread and event loop, over a store."""

    def __init__(self, config: HubConfig, store: Store) -> None:
        self.context = ApiContext(config, store)
        self.server = ApiServer(config.api, self.context)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self._thread.start()
        assert self._ready.wait(10), "API server did not start"
        assert self.server.port is not None
        self.url = f"http://127.0.0.1:{self.server.port}"

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        assert await self.server.start()
        self._ready.set()
        await self.server.run(self._stop)

    @property
    def limits(self) -> Any:
        assert self.server.app is not None
        return self.server.app.state.limits

    def close(self) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(15)
        assert not self._thread.is_alive(), "API server did not stop"
        self.context.close()


def config_for(db_url: str, keys: dict[str, str], api: str = "") -> HubConfig:
    return parse_config(f"""
hub: {{database: "{db_url}"}}
api: {{port: 0, audit_flush_s: 0.05, admin_key_hash: "{hash_key(keys['admin'])}"{api}}}
suppliers:
  acme: {{api_key_hash: "{hash_key(keys['acme'])}"}}
  bolt: {{api_key_hash: "{hash_key(keys['bolt'])}"}}
routes:
  - {{supplier: acme, types: ["*"]}}
""", "guard-test.yaml")


@pytest.fixture
def keys() -> dict[str, str]:
    return {name: secrets.token_urlsafe(32) for name in ("acme", "bolt", "admin")}


@pytest.fixture
def store(hub_db_url: str, keys: dict[str, str]) -> Iterator[Store]:
    # With the config: ingest appends to acme's feed, which the streams read.
    made = Store(hub_db_url, config_for(hub_db_url, keys))
    made.store_batch([incoming(seq) for seq in range(1, 4)])
    yield made
    made.close()


def serve(store: Store, keys: dict[str, str], api: str = "") -> Served:
    return Served(config_for(str(store.url.render_as_string(hide_password=False)), keys, api),
                  store)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _raw_response(port: int, head: bytes) -> bytes:
    """Send only a request head on a real socket; the answer as it comes back."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head)
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
        return answer


def test_the_key_is_checked_before_the_body_and_bodies_are_bounded(
        store: Store, keys: dict[str, str]) -> None:
    served = serve(store, keys, ", max_body_bytes: 2048")
    path = "/v1/admin/orders/WO-1/assignment"
    try:
        # Headers announcing 10 MB, and no body sent at all: the answer comes without it.
        head = (f"PUT {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                "Content-Length: 10000000\r\n").encode()
        assert _raw_response(served.server.port or 0, head + b"\r\n").startswith(
            b"HTTP/1.1 401 ")
        with_key = head + f"Authorization: Bearer {keys['admin']}\r\n\r\n".encode()
        assert _raw_response(served.server.port or 0, with_key).startswith(b"HTTP/1.1 413 ")

        body = b'{"suppliers": ["acme"]' + b" " * 4000 + b"}"
        big = httpx.put(served.url + path, content=body, headers=bearer(keys["admin"]))
        assert big.status_code == 413 and "2048" in big.json()["detail"]

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
            yield b'{"suppliers": ["acme"]'
            for _ in range(10):
                yield b" " * 500
            yield b"}"

        chunked = httpx.put(served.url + path, content=chunks(), headers=bearer(keys["admin"]))
        assert chunked.request.headers.get("transfer-encoding") == "chunked"
        assert chunked.status_code == 413, chunked.text
        small = httpx.put(served.url + path, json={"suppliers": ["acme"]},
                          headers=bearer(keys["admin"]))
        assert small.status_code == 200, small.text
    finally:
        served.close()


def test_each_key_has_a_request_rate(store: Store, keys: dict[str, str]) -> None:
    served = serve(store, keys, ", rate_per_s: 0.5, burst: 3")
    try:
        with httpx.Client(base_url=served.url) as client:
            answers = [client.get("/v1/events", headers=bearer(keys["acme"])) for _ in range(4)]
            assert [a.status_code for a in answers] == [200, 200, 200, 429]
            # One token every 2 s: the client is told to come back in whole seconds.
            assert answers[-1].headers["retry-after"] == "2"
            # Another key has a bucket of its own.
            assert client.get("/v1/events", headers=bearer(keys["bolt"])).status_code == 200
        wait_until(lambda: any(r.status == 429 for r in store.list_audit()), "429 audited")
        (refused,) = [r for r in store.list_audit() if r.status == 429]
        assert refused.supplier == "acme" and refused.query == "refused: rate limit"
    finally:
        served.close()


async def _open_stream(client: httpx.AsyncClient, key: str) -> httpx.Response:
    request = client.build_request("GET", "/v1/stream", params={"after": 0},
                                   headers=bearer(key))
    return await client.send(request, stream=True)


def test_streams_per_key_are_bounded_and_released_when_the_client_goes(
        store: Store, keys: dict[str, str]) -> None:
    served = serve(store, keys, ", max_streams_per_key: 2, stream_poll_s: 0.05")

    async def body() -> None:
        # Each stream on a connection of its own, so closing one drops its socket.
        clients = [httpx.AsyncClient(base_url=served.url, timeout=10) for _ in range(4)]
        try:
            first = await _open_stream(clients[0], keys["acme"])
            second = await _open_stream(clients[1], keys["acme"])
            assert first.status_code == second.status_code == 200
            lines = first.aiter_lines()  # kept: a dropped iterator closes the response
            while not (await anext(lines)).startswith("id: "):
                pass  # a real stream: the catch-up has begun
            third = await _open_stream(clients[2], keys["acme"])
            assert third.status_code == 429 and third.headers["retry-after"] == "5"
            await third.aclose()
            # Other keys are not held back by acme's streams.
            other = await _open_stream(clients[3], keys["admin"])
            assert other.status_code == 403  # the admin key reads no supplier data
            await other.aclose()
            assert served.limits.streams("acme") == 2
            await first.aclose()
            await clients[0].aclose()  # the client is gone: its slot comes back
            deadline = asyncio.get_running_loop().time() + 10
            while served.limits.streams("acme") != 1:
                assert asyncio.get_running_loop().time() < deadline, "slot not released"
                await asyncio.sleep(0.02)
            again = await _open_stream(clients[2], keys["acme"])
            assert again.status_code == 200
            await again.aclose()
            await second.aclose()
        finally:
            for client in clients:
                await client.aclose()

    try:
        asyncio.run(body())
        wait_until(lambda: served.limits.streams("acme") == 0, "every slot released")
    finally:
        served.close()


@pytest.mark.parametrize(("trusted", "expected"), [
    ("", "127.0.0.1"), (", trusted_proxies: [127.0.0.1]", "203.0.113.9")])
def test_x_forwarded_for_counts_only_from_a_trusted_proxy(
        store: Store, keys: dict[str, str], trusted: str, expected: str) -> None:
    served = serve(store, keys, trusted)
    try:
        answer = httpx.get(served.url + "/v1/events", headers={
            **bearer(keys["acme"]), "X-Forwarded-For": "203.0.113.9"})
        assert answer.status_code == 200
        wait_until(lambda: any(r.path == "/v1/events" for r in store.list_audit()),
                   "the request audited")
        (row,) = [r for r in store.list_audit() if r.path == "/v1/events"]
        assert row.client == expected
    finally:
        served.close()


def test_trusted_proxies_must_be_addresses(tmp_path: Path) -> None:
    with pytest.raises(HubConfigError,
                       match=r"api.trusted_proxies.0: .*'proxy.local' is not an IP"):
        parse_config("api: {trusted_proxies: [proxy.local]}", "x.yaml")


def test_two_accounts_with_one_key_are_refused_at_start(tmp_path: Path) -> None:
    key = secrets.token_urlsafe(32)
    (tmp_path / "shared.key").write_text(key)
    suppliers = parse_config(f"""
suppliers:
  acme: {{api_key_hash: "{hash_key(key)}"}}
  bolt: {{api_key_file: "{tmp_path / 'shared.key'}"}}
""")
    with pytest.raises(HubConfigError, match=r"suppliers\.acme\.api_key_hash and "
                                          r"suppliers\.bolt\.api_key_file: the same API key"):
        Keys(suppliers)
    with_admin = parse_config(f"""
api: {{admin_key_file: "{tmp_path / 'shared.key'}"}}
suppliers:
  acme: {{api_key_hash: "{hash_key(key)}"}}
""")
    with pytest.raises(HubConfigError, match=r"suppliers\.acme\.api_key_hash and "
                                          r"api\.admin_key_file"):
        Keys(with_admin)
    # One account naming its key twice is no conflict.
    same = parse_config(f"""
suppliers:
  acme: {{api_key_hash: "{hash_key(key)}", api_key_file: "{tmp_path / 'shared.key'}"}}
""")
    assert Keys(same).principal(key) == "acme"
