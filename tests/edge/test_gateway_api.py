"""The gateway's local API refuses foreign Host and Origin headers (DNS rebinding, a browser
page on the box), takes an optional bearer token, and needs one beyond loopback. Real uvicorn
on a free loopback port (gateway/api.py's own start), real HTTP requests."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import httpx
import pytest

from gateway.api import LocalApi, start_local_api, stop_local_api
from gateway.config import load_gateway_config
from gateway.runtime import Gateway
from mapping.errors import MappingError
from mapping.load import load_mapping

ROOT = Path(__file__).resolve().parents[2]
PATHS = ["/api/health", "/api/status", "/api/mapping", "/metrics"]


def write_config(tmp_path: Path, api: str) -> Path:
    example = ROOT / "config" / "mapping.yaml"
    (tmp_path / "mapping.yaml").write_text(example.read_text())
    path = tmp_path / "gateway.yaml"
    path.write_text(f"""
gateway: {{site: plant1, id: edge-07}}
mapping: mapping.yaml
outbox: {{path: outbox.db}}
api: {{port: 0{api}}}
""")
    return path


async def running(tmp_path: Path, api: str = "") -> tuple[Gateway, LocalApi]:
    config = load_gateway_config(write_config(tmp_path, api))
    _, compiled = load_mapping(config.mapping_path)
    gateway = Gateway(config, compiled, [])  # not started: the API alone is under test
    served = start_local_api(gateway)
    assert served.server is not None and gateway.api_port
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while not served.server.started:
        assert loop.time() < deadline, "local API did not start"
        await asyncio.sleep(0.01)
    return gateway, served


def test_host_and_origin_must_name_this_gateway(tmp_path: Path) -> None:
    asyncio.run(_host_and_origin(tmp_path))


async def _host_and_origin(tmp_path: Path) -> None:
    gateway, served = await running(tmp_path, ", allowed_hosts: [edge-07.plant.example]")
    url = f"http://127.0.0.1:{gateway.api_port}"
    client = httpx.AsyncClient(timeout=10)
    try:
        for path in PATHS:
            assert (await client.get(url + path)).status_code == 200, path
            for host in ("localhost", "LOCALHOST:80", "[::1]:8471", "127.0.0.2",
                         "edge-07.plant.example:8471"):
                answer = await client.get(url + path, headers={"Host": host})
                assert answer.status_code == 200, (path, host)
            # A rebinding DNS name pointing at 127.0.0.1 is still a foreign Host.
            for host in ("evil.example", "evil.example:8471", "127.0.0.1.evil.example", ""):
                answer = await client.get(url + path, headers={"Host": host})
                assert answer.status_code == 403, (path, host)
                assert "Host" in answer.json()["detail"]
        # A page on another site, open in a browser on this machine, cannot reload.
        for origin in ("http://evil.example", "null", "http://localhost.evil.example:8471",
                       "file://"):
            answer = await client.post(url + "/api/mapping/reload", headers={"Origin": origin})
            assert answer.status_code == 403, origin
            assert "Origin" in answer.json()["detail"]
        for origin in (f"http://127.0.0.1:{gateway.api_port}", "http://localhost:3000",
                       "https://edge-07.plant.example"):
            answer = await client.get(url + "/api/mapping", headers={"Origin": origin})
            assert answer.status_code == 200, origin
    finally:
        await client.aclose()
        await stop_local_api(served)


def test_a_token_is_required_when_configured(tmp_path: Path) -> None:
    asyncio.run(_token_required(tmp_path))


async def _token_required(tmp_path: Path) -> None:
    token = secrets.token_urlsafe(32)
    (tmp_path / "api.token").write_text(token + "\n")
    gateway, served = await running(tmp_path, ", token_file: api.token")
    url = f"http://127.0.0.1:{gateway.api_port}"
    client = httpx.AsyncClient(timeout=10)
    try:
        for path in PATHS:
            for headers in ({}, {"Authorization": f"Bearer {token}x"},
                            {"Authorization": f"Basic {token}"}, {"Authorization": "Bearer"}):
                answer = await client.get(url + path, headers=headers)
                assert answer.status_code == 401, (path, headers)
                assert answer.headers["www-authenticate"] == "Bearer"
            ok = await client.get(url + path, headers={"Authorization": f"Bearer {token}"})
            assert ok.status_code == 200, path
        # The token does not make a foreign Origin acceptable.
        refused = await client.post(url + "/api/mapping/reload", headers={
            "Authorization": f"Bearer {token}", "Origin": "http://evil.example"})
        assert refused.status_code == 403
    finally:
        await client.aclose()
        await stop_local_api(served)


def test_an_unreadable_token_file_serves_no_api(tmp_path: Path) -> None:
    config = load_gateway_config(write_config(tmp_path, ", token_file: missing.token"))
    _, compiled = load_mapping(config.mapping_path)
    served = start_local_api(Gateway(config, compiled, []))
    assert served.server is None  # fail closed: no API rather than an open one


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10", "edge-07.plant.example"])
def test_binding_beyond_loopback_needs_a_token(tmp_path: Path, host: str) -> None:
    with pytest.raises(MappingError, match=r"api.*token_file: required when host"):
        load_gateway_config(write_config(tmp_path, f', host: "{host}"'))
    (tmp_path / "api.token").write_text(secrets.token_urlsafe(32))
    config = load_gateway_config(write_config(tmp_path, f', host: "{host}", '
                                                        "token_file: api.token"))
    assert config.settings.api.token_file == "api.token"
    for loopback in ("127.0.0.1", "::1", "localhost"):
        assert load_gateway_config(write_config(tmp_path, f', host: "{loopback}"'))
