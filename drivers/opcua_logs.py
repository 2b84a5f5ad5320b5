"""asyncua's own log lines folded into the OPC UA driver's one line per outage.

On a lost link asyncua logs a warning or a traceback per attempt and per task ("Publish
iteration crashed; retrying in 1s", "Error while renewing session", a ServiceFault, "Not
trusted certificate used" with its traceback...), while the driver logs the outage itself,
once, with the reason, and once more when the device is back. `FOLD`, a filter on asyncua's
client loggers, drops their warnings and errors and counts them; the driver's line when the
device is back says how many it folded. Logging at DEBUG, nothing is folded.
"""

from __future__ import annotations

import logging

# The loggers asyncua's client side writes to (a logger's filter sees only its own records).
_LOGGERS = (
    "asyncua.client.client",
    "asyncua.client.ua_client.UASocketProtocol",
    "asyncua.client.ua_client.UaClient",
    "asyncua.client.ua_session",
    "asyncua.client.ua_session.UaSession",
    "asyncua.common.subscription",
    "asyncua.uaprotocol",
    "asyncua.crypto.security_policies",
    "asyncua.crypto.uacrypto",
    "asyncua.crypto.validator",
    "asyncuagds.validate",
)


class Fold(logging.Filter):
    """Drops (and counts) warnings and errors, unless the process logs at DEBUG."""

    def __init__(self) -> None:
        super().__init__("asyncua")
        self.folded = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or logging.getLogger().isEnabledFor(logging.DEBUG):
            return True
        self.folded += 1
        return False


FOLD = Fold()


def fold_asyncua_logs() -> Fold:
    """Install `FOLD` on asyncua's client loggers (once; every OPC UA driver calls it)."""
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        if FOLD not in logger.filters:
            logger.addFilter(FOLD)
    return FOLD
