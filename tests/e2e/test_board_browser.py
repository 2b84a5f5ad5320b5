"""The progress board in a real headless Chromium (Debian's chromium and chromium-driver,
driven by Selenium) against real processes: the Modbus simulator, Mosquitto, `keyop run`
and `keyop hub`. Screenshots of each view are saved under $KEYOP_ARTIFACTS (else the test's
tmp dir)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from devstack import browser
from devstack.stack import Stack
from hub.api.context import ApiContext
from hub.config import hash_key, load_config
from hub.store import Store

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(browser.available() is not None and not os.environ.get("CI"),
                                 reason=str(browser.available()))]

T = TypeVar("T")
ACME_KEY = "acme-board-test-key-" + "k" * 24
USERS: dict[str, tuple[str | None, str]] = {"planner": ("acme", "planner-password"),
                                            "coordinator": (None, "coordinator-password")}
HUB = {
    # acme follows the odd-numbered orders, bolt the even ones: each has orders the other
    # must never see.
    "routes": [{"supplier": "acme", "work_orders": ["WO-*[13579]"]},
               {"supplier": "bolt", "work_orders": ["WO-*[02468]"]}],
    "suppliers": {"acme": {"api_key_hash": hash_key(ACME_KEY)}, "bolt": {}},
    "alerts": {"interval_s": 0.5, "stall_after_s": 2.0},
    "board": {"stale_after_s": 3.0},
    "orders": {"WO-1001": {"due": "2099-01-01T00:00:00Z"}},
}


def artifacts(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("KEYOP_ARTIFACTS") or tmp_path / "artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


async def until(check: Callable[[], T], timeout: float, what: str) -> T:
    """Poll `check` (a blocking browser call, run off the loop the simulator serves on)."""
    deadline = time.monotonic() + timeout
    while True:
        value = await asyncio.to_thread(check)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        await asyncio.sleep(0.05)


def js(driver: Any, script: str) -> Any:
    return driver.execute_script(script)


def cell_good(driver: Any, order: str) -> str | None:
    return js(driver, f"var c = document.querySelector('#row-{order} [data-op=OP10] .good');"
                      "return c ? c.textContent : null;")


def login(driver: Any, base: str, user: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(f"{base}/board/")
    driver.find_element(By.ID, "user").send_keys(user)
    driver.find_element(By.ID, "password").send_keys(USERS[user][1])
    driver.find_element(By.ID, "login").click()


def keyboard_to_order(driver: Any, order: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    driver.get(driver.current_url)  # focus at the top of a fresh page
    ActionChains(driver).send_keys(Keys.TAB).perform()
    assert js(driver, "return document.activeElement.className") == "skip"
    for _ in range(40):
        ActionChains(driver).send_keys(Keys.TAB).perform()
        if js(driver, "return document.activeElement.getAttribute('href') || ''").endswith(
                f"/orders/{order}"):
            break
    else:
        raise AssertionError(f"Tab never reached {order}'s link")
    assert js(driver, "return getComputedStyle(document.activeElement).outlineStyle") != "none"
    ActionChains(driver).send_keys(Keys.ENTER).perform()


async def parts(stack: Stack, count: int) -> None:
    for _ in range(count):
        stack.device.count_good()
        await asyncio.sleep(0.1)  # the gateway polls every 20 ms: each part its own packet


async def run_order(stack: Stack, number: int, planned: int, good: int, *,
                    finish: bool) -> None:
    stack.device.set_order(number, planned)
    await asyncio.sleep(0.3)
    stack.device.set_busy(True)
    await asyncio.sleep(0.2)
    await parts(stack, good)
    if finish:
        stack.device.set_busy(False)
        await asyncio.sleep(0.3)


def feed_positions(stack: Stack, after: int) -> list[int]:
    """The positions of acme's feed after `after`, as /v1/events reads them."""
    config = load_config(stack.workdir / "hub.yaml")
    store = Store(stack.hub_db_url)
    context = ApiContext(config, store)
    try:
        found, _ = context.events_after("acme", after, 10_000)
        return [entry.position for entry in found]
    finally:
        context.close()
        store.close()


def with_stack(tmp_path: Path, body: Callable[[Stack, Any, str], Awaitable[None]]) -> None:
    async def main() -> None:
        stack = Stack(tmp_path / "stack", progress_every=1, hub_overrides=HUB,
                      board_users=USERS)
        driver = None
        try:
            await stack.start()
            await stack.wait_polled()
            driver = await asyncio.to_thread(browser.chromium, 1600, 1000)
            await body(stack, driver, f"http://127.0.0.1:{stack.hub_api_port}")
            urls = await asyncio.to_thread(browser.requests, driver)
            assert urls and all(u.startswith("http://127.0.0.1:") for u in urls
                                if not u.startswith("data:")), urls
            assert browser.off_loopback(urls) == []
        finally:
            if driver is not None:
                await asyncio.to_thread(driver.quit)
            await stack.close()

    asyncio.run(main())


def test_a_supplier_follows_its_orders_live_across_a_hub_restart(tmp_path: Path) -> None:
    shots = artifacts(tmp_path)

    async def body(stack: Stack, driver: Any, base: str) -> None:
        await asyncio.to_thread(driver.get, f"{base}/board/s/acme")
        assert "/board/login" in driver.current_url  # no session: the login
        await asyncio.to_thread(driver.save_screenshot, str(shots / "board-login.png"))
        # bolt's order, then acme's: the board of acme shows its own only.
        await run_order(stack, 1002, 2, 2, finish=True)
        await run_order(stack, 1001, 40, 3, finish=False)
        await asyncio.to_thread(login, driver, base, "planner")
        await until(lambda: driver.current_url.endswith("/board/s/acme"), 10, "acme's board")
        await until(lambda: cell_good(driver, "WO-1001") == "3", 10, "WO-1001 at 3 good")
        assert "WO-1002" not in driver.page_source
        start = int(js(driver, "return document.body.dataset.cursor"))
        await until(lambda: js(driver, "return window.keyopBoard.connected"), 5, "live")

        # A packet from the simulator shows within 2 s, without a reload.
        marker = js(driver, "window.notReloaded = true; return 1")
        began = time.monotonic()
        stack.device.count_good()
        await until(lambda: cell_good(driver, "WO-1001") == "4", 2.0, "the 4th part")
        assert time.monotonic() - began < 2.0
        assert js(driver, "return window.notReloaded === true") and marker == 1

        # The running operation goes silent: the stall alert shows on top.
        await until(lambda: js(driver, "return document.querySelectorAll("
                                       "'#alerts li.kind-stalled').length"), 15, "the alert")
        assert "row-WO-1001" in js(driver, "return document.querySelector('#orders')"
                                           ".innerHTML")
        await asyncio.to_thread(driver.save_screenshot, str(shots / "board-supplier.png"))

        # The hub stops: the page says so; parts made meanwhile show once it is back.
        assert stack.stop_hub() == 0
        await until(lambda: "status-off" in js(driver, "return document.getElementById("
                                                       "'status').className"), 10, "offline")
        await asyncio.to_thread(driver.save_screenshot, str(shots / "board-disconnected.png"))
        await parts(stack, 3)
        stack.start_hub()
        await until(lambda: cell_good(driver, "WO-1001") == "7", 30, "caught up to 7")
        await until(lambda: js(driver, "return window.keyopBoard.connected"), 5, "live again")
        # Every entry of acme's feed since the page loaded (its alerts too), once each, in
        # order; all drawn.
        seen = js(driver, "return window.keyopBoard.seen")
        applied = js(driver, "return window.keyopBoard.appliedAt")
        assert any(kind.startswith("keyop.alert.") for _, kind in seen)
        assert [int(c) for c, _ in seen] == await asyncio.to_thread(feed_positions, stack, start)
        await until(lambda: all(c in js(driver, "return window.keyopBoard.appliedAt")
                                for c, _ in seen), 3, "all drawn")
        assert applied

        # By keyboard alone: the skip link first, then on to the order, Enter opens its
        # timeline.
        await asyncio.to_thread(keyboard_to_order, driver, "WO-1001")
        await until(lambda: "/orders/WO-1001" in driver.current_url, 5, "the timeline")
        assert "span-running" in driver.page_source
        await asyncio.to_thread(driver.save_screenshot, str(shots / "board-order.png"))
        await asyncio.to_thread(driver.get, f"{base}/board/s/acme?show=all&lang=zh-CN")
        assert "生产进度看板" in driver.page_source
        await asyncio.to_thread(driver.save_screenshot, str(shots / "board-supplier-zh.png"))
        # acme's session cannot open bolt's board or order.
        await asyncio.to_thread(driver.get, f"{base}/board/s/bolt/orders/WO-1002")
        assert "WO-1002" not in driver.find_element("tag name", "body").text

    with_stack(tmp_path, body)


def test_the_coordinator_sees_a_stopped_gateway_go_stale(tmp_path: Path) -> None:
    shots = artifacts(tmp_path)

    async def body(stack: Stack, driver: Any, base: str) -> None:
        await run_order(stack, 1001, 1000, 2, finish=False)
        # The press keeps making parts, so the gateway keeps reporting until it is stopped.
        making = asyncio.create_task(parts(stack, 10_000))
        await asyncio.to_thread(login, driver, base, "coordinator")
        await until(lambda: driver.current_url.endswith("/board/plant"), 10, "the plant view")
        row = "#health tr[data-source='plant1/edge-07']"
        await until(lambda: js(driver, f"var r = document.querySelector(\"{row}\");"
                                       "return r && r.dataset.stale === 'false'"), 10, "fresh")
        assert "/board/s/acme" in driver.page_source and "/board/s/bolt" in driver.page_source
        await asyncio.to_thread(driver.save_screenshot, str(shots / "board-plant.png"))
        making.cancel()
        assert stack.stop_gateway() == 0
        await until(lambda: js(driver, f"return document.querySelector(\"{row}\")"
                                       ".dataset.stale === 'true'"), 15, "stale")
        await asyncio.to_thread(driver.save_screenshot, str(shots / "board-plant-stale.png"))
        # The coordinator opens any supplier's board.
        await asyncio.to_thread(driver.get, f"{base}/board/s/acme?show=all")
        await until(lambda: cell_good(driver, "WO-1001") is not None, 5, "acme's board")
        # Logout, and the board is closed again.
        await asyncio.to_thread(lambda: driver.find_element(
            "css selector", "form[action='/board/logout'] button").click())
        await until(lambda: "/board/login" in driver.current_url, 5, "logged out")
        await asyncio.to_thread(driver.get, f"{base}/board/plant")
        assert "/board/login" in driver.current_url

    with_stack(tmp_path, body)
