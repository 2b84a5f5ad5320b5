"""`keyop bench board`: the progress board in headless Chromium with 500 orders of 10
operations: time to first render, and the live update rate the page sustains.

The hub's API (and board) is served in this process on a temporary SQLite database filled
with the orders' start and progress events. Live phases then store progress events at rising
rates (each store appends to the supplier's feed and wakes its streams, as ingest does); the
page records when it drew each event, by feed position (`window.keyopBoard.appliedAt`). A
rate is sustained when every event was drawn and 99 % of them within 1 s of being stored.
"""

from __future__ import annotations

import asyncio
import json
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from devstack import browser
from hub.api.context import ApiContext
from hub.config import hash_key, parse_config
from hub.server import ApiServer
from hub.store import Incoming, Store
from sync import packet as pk
from sync import packet_codec

KEY = "bench-board-acme-key-" + "x" * 24
SUPPLIER = "acme"
SOURCE = "plant1/edge-bench"
EPOCH = "01JCZ0K3M9B4X2W7Q5N8D1F6HA"
STEP_S = 0.05
ULID_DIGITS = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# The page's own count of row redraws and the script time they took, reset for each phase.
DRAWS = ("var b = window.keyopBoard; var r = [b.draws || 0, Math.round(b.drawMs || 0)];"
         "b.draws = 0; b.drawMs = 0; return r")


def _ulid(n: int) -> str:
    digits = []
    for _ in range(16):
        n, rest = divmod(n, 32)
        digits.append(ULID_DIGITS[rest])
    return "01JDA5Q1Y4" + "".join(reversed(digits))


class Plant:
    """The orders and the next packet of each operation."""

    def __init__(self, orders: int, operations: int) -> None:
        self.orders = [f"WO-{100000 + i}" for i in range(orders)]
        self.operations = [f"OP{10 * (j + 1)}" for j in range(operations)]
        self.good: dict[tuple[str, str], int] = {}
        self.seq = 0

    def packet(self, order: str, operation: str, kind: str, at: float) -> Incoming:
        self.seq += 1
        good = self.good[(order, operation)] = self.good.get((order, operation), -1) + 1
        data = {
            "kopVersion": "1.0", "workOrder": {"id": order}, "operation": {"id": operation},
            "runId": f"{order}.{operation}.bench.1",
            "equipment": {"path": f"plant1/body/line-1/{operation.lower()}"},
            "state": {"value": "Running"},
            "quantities": {"uom": "C62", "planned": 1_000_000, "produced": good, "good": good,
                           "scrap": 0, "rework": 0},
            "tzOffset": "+08:00", "timeQuality": "synced",
        }
        draft = pk.Draft(f"keyop.operation.{kind}", f"{order}/{operation}", at, data)
        raw = packet_codec.render(draft, id=_ulid(self.seq), source=SOURCE, sequence=self.seq,
                        epoch=EPOCH, recorded=at)
        obj = json.loads(raw)
        return Incoming(packet_codec.from_obj(obj), obj)


def _config(db_url: str) -> Any:
    return parse_config(f"""
hub: {{database: "{db_url}"}}
api: {{port: 0, rate_per_s: 100000, burst: 100000, threads: 2}}
alerts: {{enabled: false}}
suppliers: {{acme: {{api_key_hash: "{hash_key(KEY)}"}}}}
routes: [{{supplier: acme, work_orders: ["WO-*"]}}]
board: {{timezone: Asia/Shanghai, login_rate_per_s: 100, login_burst: 100}}
""", "bench-board.yaml")


def _fill(store: Store, plant: Plant) -> None:
    now = time.time() - 3600
    batch = []
    for order in plant.orders:
        for operation in plant.operations:
            batch.append(plant.packet(order, operation, "started", now))
            batch.append(plant.packet(order, operation, "progress", now + 60))
            if len(batch) >= 1000:
                store.store_batch(batch)
                batch = []
    if batch:
        store.store_batch(batch)


def _login(driver: Any, base: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(f"{base}/board/login")
    driver.find_element(By.TAG_NAME, "summary").click()
    driver.find_element(By.ID, "key").send_keys(KEY)
    driver.find_element(By.ID, "login").click()


def _first_render(driver: Any, url: str) -> dict[str, float]:
    driver.get(url)
    timing = driver.execute_script(
        "var n = performance.getEntriesByType('navigation')[0];"
        "var p = performance.getEntriesByName('first-contentful-paint')[0];"
        "return {server: n.responseStart - n.requestStart, html: n.responseEnd - n.startTime,"
        " dom: n.domContentLoadedEventEnd - n.startTime, paint: p ? p.startTime : null,"
        " rows: document.querySelectorAll('#order-rows .row').length};")
    return dict(timing)


async def _phase(rate: float, seconds: float, store: Store, context: ApiContext,
                 plant: Plant, driver: Any, rng: random.Random) -> dict[str, Any]:
    """Store `rate` events/s for `seconds`; how far behind the page drew them."""
    stored_at: dict[int, float] = {}
    loop = asyncio.get_running_loop()
    begin = loop.time()
    sent = 0
    while loop.time() - begin < seconds:
        # As many as the rate asks by now: a slow store call does not lower the rate.
        count = int(rate * (loop.time() - begin)) - sent
        sent += count
        batch = [plant.packet(rng.choice(plant.orders), rng.choice(plant.operations),
                              "progress", time.time()) for _ in range(count)]
        if batch:
            before = await asyncio.to_thread(context.feed.head, SUPPLIER)
            await asyncio.to_thread(store.store_batch, batch)
            after = await asyncio.to_thread(context.feed.head, SUPPLIER)
            now = time.time()
            stored_at.update((p, now) for p in range(before + 1, after + 1))
        await asyncio.sleep(STEP_S)
    deadline = loop.time() + 5
    applied: dict[str, float] = {}
    while loop.time() < deadline:
        applied = await asyncio.to_thread(driver.execute_script,
                                          "return window.keyopBoard.appliedAt")
        drawn = {int(k) for k in applied}
        if set(stored_at) <= drawn:
            break
        await asyncio.sleep(0.2)
    fetches = await asyncio.to_thread(driver.execute_script, """
        var r = performance.getEntriesByType('resource').filter(function (e) {
          return e.name.indexOf('/rows?') >= 0; });
        performance.clearResourceTimings();
        performance.setResourceTimingBufferSize(100000);
        return r.map(function (e) { return [e.responseStart - e.requestStart, e.duration]; });""")
    arrived = await asyncio.to_thread(driver.execute_script,
                                      "return window.keyopBoard.arrivedAt")
    came = {int(k): v / 1000 for k, v in arrived.items()}
    stream_lags = sorted(came[p] - t for p, t in stored_at.items() if p in came)
    by_position = {int(k): v / 1000 for k, v in applied.items()}
    lags = sorted(by_position[p] - t for p, t in stored_at.items() if p in by_position)
    missing = len(stored_at) - len(lags)
    p99 = lags[int(0.99 * (len(lags) - 1))] if lags else None
    return {"rate": rate, "events": len(stored_at), "missing": missing,
            "lag_p50_ms": round(1000 * lags[len(lags) // 2]) if lags else None,
            "lag_p99_ms": round(1000 * p99) if p99 is not None else None,
            "lag_max_ms": round(1000 * lags[-1]) if lags else None,
            "stream_lag_p50_ms": _median([1000 * x for x in stream_lags]),
            "draws": await asyncio.to_thread(driver.execute_script, DRAWS),
            "row_fetches": len(fetches),
            "row_fetch_server_p50_ms": _median([f[0] for f in fetches]),
            "row_fetch_p50_ms": _median([f[1] for f in fetches]),
            "sustained": missing == 0 and p99 is not None and p99 <= 1.0}


def _median(values: list[float]) -> int | None:
    return round(sorted(values)[len(values) // 2]) if values else None


async def _bench(orders: int, operations: int, rates: list[float], seconds: float,
                 workdir: Path) -> dict[str, Any]:
    db = f"sqlite:///{workdir / 'hub.db'}"
    config = _config(db)
    store = Store(db, config)
    plant = Plant(orders, operations)
    await asyncio.to_thread(_fill, store, plant)
    context = ApiContext(config, store)
    server = ApiServer(config.api, context)
    assert await server.start()
    stop = asyncio.Event()
    serving = asyncio.create_task(server.run(stop))
    driver = await asyncio.to_thread(browser.chromium, 1920, 1080)
    try:
        base = f"http://127.0.0.1:{server.port}"
        await asyncio.to_thread(_login, driver, base)
        url = f"{base}/board/s/acme?show=all"
        await asyncio.to_thread(_first_render, driver, url)  # warm: templates, caches
        render = await asyncio.to_thread(_first_render, driver, url)
        deadline = time.monotonic() + 10
        while not await asyncio.to_thread(driver.execute_script,
                                          "return window.keyopBoard.connected"):
            if time.monotonic() > deadline:
                raise RuntimeError("the board's stream did not connect")
            await asyncio.sleep(0.1)
        rng = random.Random(17)
        phases = [await _phase(rate, seconds, store, context, plant, driver, rng)
                  for rate in rates]
        outside = browser.off_loopback(await asyncio.to_thread(browser.requests, driver))
    finally:
        await asyncio.to_thread(driver.quit)
        stop.set()
        await serving
        context.close()
        store.close()
    sustained = [p["rate"] for p in phases if p["sustained"]]
    return {
        "bench": "board", "orders": orders, "operations": operations,
        "rows_rendered": render["rows"],
        "first_render_ms": round(render["paint"] or render["dom"]),
        "dom_ready_ms": round(render["dom"]), "server_ms": round(render["server"]),
        "live_events_per_s": max(sustained) if sustained else 0,
        "phases": phases, "requests_off_loopback": len(outside),
    }


def run_bench_board(orders: int = 500, operations: int = 10,
                    rates: tuple[float, ...] = (50, 100, 200), seconds: float = 6.0,
                    workdir: Path | None = None) -> dict[str, Any]:
    """One JSON-ready dict of figures (see the module docstring)."""
    why = browser.available()
    if why is not None:
        raise RuntimeError(f"keyop bench board needs headless Chromium: {why}")
    with tempfile.TemporaryDirectory(prefix="keyop-bench-board-") as tmp:
        return asyncio.run(_bench(orders, operations, list(rates), seconds,
                                  Path(workdir or tmp)))
