"""Headless Chromium for the board's browser tests and `keyop bench board`: Debian's
`chromium` and `chromium-driver` (scripts/ensure-system.sh installs them), driven by
Selenium. Selenium Manager never downloads anything: the browser and the driver are given."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
LOOPBACK = ("127.0.0.1", "localhost", "[::1]", "::1")


def available() -> str | None:
    """Why no browser can run here, or None when one can."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package (pip install -e '.[test]')")
    return f"missing: {', '.join(missing)}" if missing else None


def chromium(width: int = 1600, height: int = 1000, language: str = "en-US") -> Any:
    """A headless Chromium with its network log on (`requests(driver)`)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager: never fetch a browser or driver
    options = Options()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", f"--window-size={width},{height}", f"--lang={language}",
                     "--no-first-run", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", "--disable-default-apps"):
        options.add_argument(argument)
    options.add_experimental_option("prefs", {"intl.accept_languages": language})
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)),
                            options=options)


def requests(driver: Any) -> list[str]:
    """The URLs the page has requested since the last call (the performance log)."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def off_loopback(urls: list[str]) -> list[str]:
    """The URLs that leave this machine (data: and blob: URLs stay in the page)."""
    outside = []
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme in ("data", "blob", "about"):
            continue
        host = parts.hostname or ""
        if host not in LOOPBACK and not host.startswith("127."):
            outside.append(url)
    return outside
