"""The engine's state across restarts: encoded for the outbox commit that carries it, and
restored from the outbox when the gateway starts (docs/mapping.md, "After a restart")."""

from __future__ import annotations

import json
import logging
from typing import Any

from edge_store.outbox import Outbox, OutboxError
from mapping.engine import CompiledMapping, Engine
from mapping.snapshot import SnapshotError

log = logging.getLogger(__name__)


def encode_state(snapshot: dict[str, Any]) -> bytes:
    """A snapshot as the outbox stores it (compact JSON)."""
    return json.dumps(snapshot, separators=(",", ":"), allow_nan=False).encode()


def restored_engine(compiled: CompiledMapping, outbox: Outbox, monotonic: float,
                    now: float) -> Engine:
    """An engine for `compiled` that continues from the state the outbox holds, if any.

    A state that cannot be read is refused with one error line and the stations start idle;
    what no longer matches the mapping is dropped with one warning line each."""
    engine = Engine(compiled)
    try:
        saved = outbox.engine_state()
    except OutboxError as error:
        log.error("engine state unreadable: the stations start idle", extra={"error": str(error)})
        return engine
    if saved is None:
        return engine
    body, saved_at = saved
    try:
        notes = engine.restore(json.loads(body), monotonic)
    except (ValueError, RecursionError) as error:  # SnapshotError, bad JSON, bad UTF-8
        reason = str(error) if isinstance(error, SnapshotError) else f"not JSON: {error}"
        log.error("engine state refused: the stations start idle",
                  extra={"outbox": str(outbox.path), "error": reason[:300]})
        return Engine(compiled)
    for note in notes:
        log.warning("engine state partly restored", extra={"dropped": note})
    runs = [state.run.run_id for state in engine.states.values()
            if state.run is not None and state.run.active]
    log.info("engine state restored", extra={
        "stations": len(engine.stations), "active_runs": runs,
        "saved_s_ago": round(now - saved_at, 1)})
    return engine
