"""The API's routes read the supplier's feed: cursors are feed positions, the stream's ids
too, and one odd row never breaks a page (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hubkit import incoming
from test_hub_api import make_config
from test_hub_api_guard import Served

from hub.schema import feed, feed_heads
from hub.store import Store


@pytest.fixture
def served(tmp_path: Path, hub_db_url: str) -> Iterator[tuple[Served, dict[str, str]]]:
    config, keys = make_config(tmp_path, hub_db_url)
    config = config.model_copy(update={"api": config.api.model_copy(
        update={"stream_poll_s": 0.05})})
    store = Store(hub_db_url, config)
    store.store_batch([incoming(seq, work_order="WO-1001") for seq in (1, 2, 3)])
    server = Served(config, store)
    yield server, keys
    server.close()
    store.close()


def test_pages_streams_and_alerts_count_feed_positions(
        served: tuple[Served, dict[str, str]]) -> None:
    server, keys = served
    auth = {"Authorization": f"Bearer {keys['acme']}"}
    # WO-1002 is bolt's: it takes no position of acme's.
    server.context.store.store_batch([incoming(4, work_order="WO-1002"),
                                      incoming(5, work_order="WO-1001")])
    page = httpx.get(f"{server.url}/v1/events", params={"after": 1, "limit": 2},
                     headers=auth, timeout=5).json()
    assert [int(e["sequence"]) for e in page["events"]] == [2, 3] and page["next"] == "3"
    rest = httpx.get(f"{server.url}/v1/events", params={"after": 3}, headers=auth,
                     timeout=5).json()
    assert [int(e["sequence"]) for e in rest["events"]] == [5] and rest["next"] == "4"

    async def stream(headers: dict[str, str], want: int) -> list[tuple[int, dict[str, object]]]:
        got: list[tuple[int, dict[str, object]]] = []
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client, \
                client.stream("GET", "/v1/stream", headers={**auth, **headers}) as reply:
            position = 0
            async for line in reply.aiter_lines():
                if line.startswith("id: "):
                    position = int(line[4:])
                elif line.startswith("data: "):
                    got.append((position, json.loads(line[6:])))
                    if len(got) == want:
                        return got
        return got

    resumed = asyncio.run(stream({"Last-Event-ID": "2"}, 2))
    assert [(p, int(str(e["sequence"]))) for p, e in resumed] == [(3, 3), (4, 5)]
    assert resumed[0][1] == page["events"][1]  # the same event on both channels


def test_an_entry_that_is_not_json_is_left_out_of_a_page(
        served: tuple[Served, dict[str, str]]) -> None:
    server, keys = served
    auth = {"Authorization": f"Bearer {keys['acme']}"}
    with server.context.store.engine.begin() as conn:
        conn.execute(feed.insert().values(supplier="acme", position=4, event_id="0" * 26,
                                          type="keyop.operation.progress", stored_at=1.0,
                                          body="not json"))
        conn.execute(feed_heads.update().where(feed_heads.c.supplier == "acme")
                     .values(position=4))
    server.context.store.store_batch([incoming(5, work_order="WO-1001")])
    page = httpx.get(f"{server.url}/v1/events", params={"after": 2}, headers=auth,
                     timeout=5)
    assert page.status_code == 200
    assert [int(e["sequence"]) for e in page.json()["events"]] == [3, 5]
    assert page.json()["next"] == "5"
