"""Repeated warnings, logged once per window with a count instead of once per occurrence.

A flood of identical bad packets must not become a flood of identical log lines: the first of a
kind is logged at once, the repeats within `window_s` are only counted, and the count is logged
with the next one after the window (or by `flush`, which the owner calls when idle).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class _Seen:
    since: float
    repeats: int
    message: str
    args: tuple[Any, ...]
    extra: Mapping[str, Any] | None


class RepeatedWarnings:
    """WARNING lines keyed by kind: at most one per key per `window_s`, repeats counted."""

    def __init__(self, logger: logging.Logger, window_s: float = 60.0, max_keys: int = 1024,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.window_s = window_s
        self.max_keys = max_keys
        self.clock = clock
        self._seen: OrderedDict[str, _Seen] = OrderedDict()

    def warning(self, key: str, message: str, *args: Any,
                extra: Mapping[str, Any] | None = None) -> None:
        now = self.clock()
        seen = self._seen.get(key)
        if seen is not None and now - seen.since < self.window_s:
            seen.repeats += 1
            seen.message, seen.args, seen.extra = message, args, extra
            return
        repeats = seen.repeats if seen is not None else 0
        self._seen[key] = _Seen(now, 0, message, args, extra)
        self._seen.move_to_end(key)
        while len(self._seen) > self.max_keys:
            self._seen.popitem(last=False)
        self._log(message, args, extra, repeats)

    def flush(self) -> None:
        """Log the counts of windows that have passed with repeats not yet reported."""
        now = self.clock()
        for key, seen in list(self._seen.items()):
            if now - seen.since < self.window_s:
                continue
            if seen.repeats:
                self._log(seen.message, seen.args, seen.extra, seen.repeats, last=True)
            del self._seen[key]

    def _log(self, message: str, args: tuple[Any, ...], extra: Mapping[str, Any] | None,
             repeats: int, last: bool = False) -> None:
        if repeats:
            # The count of what was held back since the previous line of this kind.
            message = f"{message} ({repeats} more like this in the last %.0fs%s)"
            args = (*args, self.window_s, ", the last shown" if last else "")
        fields = {**(extra or {}), "repeats": repeats} if repeats else dict(extra or {})
        self.logger.warning(message, *args, extra=fields)
