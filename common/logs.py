"""Structured logs of both daemons: one line per event, `key=value` pairs a night-shift reader
can grep, or JSON lines.

Under systemd (`JOURNAL_STREAM` set, and stderr is that stream) the journal stamps each line
itself, so ours carry no timestamp. `--log-format json` writes one JSON object per line. The
level can change while the daemon runs: SIGUSR1 one step more verbose (down to DEBUG),
SIGUSR2 back to the level it started with (docs/operations.md, "Logs").
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
from typing import Any, Literal, TextIO

LogFormat = Literal["auto", "text", "json"]

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
_LEVELS = (logging.ERROR, logging.WARNING, logging.INFO, logging.DEBUG)
_initial_level = logging.INFO  # what SIGUSR2 goes back to


def _quote(value: object) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' "=\n'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


def _stamp(record: logging.LogRecord) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + \
        f".{int(record.msecs):03d}Z"


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {key: value for key, value in vars(record).items()
            if key not in _STANDARD and not key.startswith("_")}


class KeyValueFormatter(logging.Formatter):
    """`2026-...Z level=INFO logger=x msg="..." key=value`; without the stamp under journald."""

    def __init__(self, timestamps: bool = True) -> None:
        super().__init__()
        self.timestamps = timestamps

    def format(self, record: logging.LogRecord) -> str:
        parts = [_stamp(record)] if self.timestamps else []
        parts += [
            f"level={record.levelname}",
            f"logger={record.name}",
            f"msg={_quote(record.getMessage())}",
        ]
        parts += [f"{key}={_quote(value)}" for key, value in _extras(record).items()]
        if record.exc_info:
            parts.append(f"exc={_quote(self.formatException(record.exc_info))}")
        return " ".join(parts)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, the event's fields, exc."""

    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {"ts": _stamp(record), "level": record.levelname,
                                "logger": record.name, "msg": record.getMessage()}
        body.update(_extras(record))
        if record.exc_info:
            body["exc"] = self.formatException(record.exc_info)
        return json.dumps(body, default=str, ensure_ascii=False)


def under_journald(stream: TextIO) -> bool:
    """Whether `stream` is the journal's stream systemd handed us (`JOURNAL_STREAM` is
    `device:inode` of it; a redirected stderr keeps the variable but not the file)."""
    device, _, inode = os.environ.get("JOURNAL_STREAM", "").partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return st.st_dev == int(device) and st.st_ino == int(inode)


def setup_logging(level: str = "INFO", stream: TextIO | None = None,
                  fmt: LogFormat = "auto") -> None:
    """Log lines to `stream` (stderr): `text`, `json`, or `auto` (text; no timestamps under
    journald). Library chatter stays at WARNING unless the level is DEBUG."""
    out = stream or sys.stderr
    handler = logging.StreamHandler(out)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(KeyValueFormatter(timestamps=not under_journald(out)))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    _apply_level(logging.getLevelName(level.upper()))
    global _initial_level
    _initial_level = root.level



def _apply_level(level: int) -> None:
    root = logging.getLogger()
    root.setLevel(level)
    # Our drivers log each fault once themselves, while pymodbus repeats a line on every
    # reconnect attempt and every timeout; APScheduler logs every run of every job at INFO.
    quiet = logging.DEBUG if level <= logging.DEBUG else logging.WARNING
    logging.getLogger("asyncua").setLevel(quiet)
    logging.getLogger("apscheduler").setLevel(quiet)
    logging.getLogger("pymodbus").setLevel(
        logging.DEBUG if level <= logging.DEBUG else logging.CRITICAL)


def set_level(level: int | str) -> int:
    """Change the log level of the running process; returns the level now in force."""
    value = logging.getLevelName(level.upper()) if isinstance(level, str) else level
    if not isinstance(value, int):
        raise ValueError(f"log level {level!r}: expected DEBUG, INFO, WARNING or ERROR")
    _apply_level(value)
    logging.getLogger(__name__).warning("log level changed", extra={
        "level": logging.getLevelName(value)})
    return value


def more_verbose() -> int:
    """One step towards DEBUG (SIGUSR1)."""
    current = logging.getLogger().getEffectiveLevel()
    finer = [level for level in _LEVELS if level < current]
    return set_level(finer[0] if finer else logging.DEBUG)


def install_level_signals(loop: asyncio.AbstractEventLoop) -> None:
    """SIGUSR1: one level more verbose; SIGUSR2: back to the level set at start."""
    loop.add_signal_handler(signal.SIGUSR1, more_verbose)
    loop.add_signal_handler(signal.SIGUSR2, lambda: set_level(_initial_level))
