"""Mapping reload on a running gateway: check first, swap only a mapping that passes.

Stations whose definition did not change keep their state (a half-done operation stays half
done); device links are replaced only when sources or signals changed. The outbox is not
touched: the sequence simply continues.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gateway.devices import build_drivers
from mapping.errors import MappingError
from mapping.load import load_mapping

if TYPE_CHECKING:
    from gateway.runtime import Gateway

log = logging.getLogger(__name__)


@dataclass
class ReloadResult:
    ok: bool
    digest: str = ""
    problems: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    reset: list[str] = field(default_factory=list)
    drivers_restarted: bool = False

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok, "digest": self.digest, "problems": self.problems,
            "kept_state": self.kept, "reset_state": self.reset,
            "drivers_restarted": self.drivers_restarted,
        }


class MappingControl:
    """Owns the running mapping's identity and serialises reloads."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.loaded_at = time.time()
        self.reloads = 0
        self.failed_reloads = 0
        self._lock = asyncio.Lock()

    def describe(self) -> dict[str, Any]:
        compiled = self.gateway.compiled
        return {
            "path": str(self.gateway.config.mapping_path),
            "version": compiled.model.version,
            "digest": compiled.digest,
            "loaded_at": self.loaded_at,
            "stations": [station.id for station in compiled.stations],
            "signals": len(compiled.model.signals),
            "reloads": self.reloads,
            "failed_reloads": self.failed_reloads,
        }

    async def reload(self) -> ReloadResult:
        async with self._lock:
            path = self.gateway.config.mapping_path
            old = self.gateway.compiled
            try:
                # Reading and compiling is file I/O and CPU: keep the loop responsive.
                doc, compiled = await asyncio.to_thread(load_mapping, path)
                links_changed = (compiled.model.sources != old.model.sources
                                 or compiled.model.signals != old.model.signals)
                drivers = build_drivers(doc, compiled) if links_changed else None
            except MappingError as error:
                self.failed_reloads += 1
                problems = [str(p) for p in error.problems]
                log.error("mapping reload refused; the running mapping stays", extra={
                    "path": str(path), "problems": len(problems), "first": problems[0]})
                return ReloadResult(ok=False, digest=old.digest, problems=problems)
            previous = {station.id: station for station in old.stations}
            kept = [s.id for s in compiled.stations if previous.get(s.id) == s]
            reset = [s.id for s in compiled.stations if previous.get(s.id) != s]
            await self.gateway.apply_mapping(compiled, drivers)
            self.reloads += 1
            self.loaded_at = time.time()
            log.info("mapping reloaded", extra={
                "path": str(path), "digest": compiled.digest[:12], "kept": ",".join(kept),
                "reset": ",".join(reset), "drivers_restarted": drivers is not None})
            return ReloadResult(ok=True, digest=compiled.digest, kept=kept, reset=reset,
                                drivers_restarted=drivers is not None)
