"""What the API's routes share: config, store, the current router, due times, a wake-up."""

from __future__ import annotations

import asyncio
import functools
import json
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar

from prometheus_client import CollectorRegistry

from hub import routing
from hub.badrows import BAD_ROW
from hub.config import HubConfig
from hub.feed import Feed, FeedEntry
from hub.orders import Orders
from hub.state import state_document
from hub.store import Store

P = ParamSpec("P")
T = TypeVar("T")


class ApiContext:
    """Shared by all routes. Thread-safe: the routes' database work runs on `run`'s threads.

    The API has its own threads and its own connection pool (`api.threads` of each): however
    many suppliers read or stream, ingest's commits never queue behind them for a thread or a
    connection.
    """

    # How many operation rows one orders request looks at, at most, to fill a page.
    SCAN_ROWS = 5_000

    def __init__(self, config: HubConfig, store: Store) -> None:
        self.config = config
        self._shared = store
        self.store = store.with_own_pool(config.api.threads)
        self._executor = ThreadPoolExecutor(max_workers=config.api.threads,
                                            thread_name_prefix="hub-api")
        # The suppliers' feeds (hub/feed.py): what /v1/events, the stream and /v1/alerts read.
        self.feed = Feed(self.store)
        # Set by the running hub (hub/metrics.py); None for an API without a service.
        self.metrics: CollectorRegistry | None = None
        # Set by the running hub: whether its broker connection is up (hub/api/health.py).
        self.broker_up: Callable[[], bool] | None = None
        # Set by the running hub: every webhook endpoint's status (hub/webhooks/status.py).
        self.webhook_status: Callable[[], list[dict[str, Any]]] | None = None
        self._lock = threading.Lock()
        self._router = routing.Router(config)
        self._due: dict[str, float] = {}
        # Whether this hub is connected to its broker (set by the running hub).
        self.online: Callable[[], bool] = lambda: False
        self.orders = Orders(self)
        self.reload()

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """`fn(*args)` on the API's threads (never the loop's default executor, which ingest
        uses)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        """Stop the API's threads (after the work in hand) and close its connections."""
        self._executor.shutdown(wait=True, cancel_futures=True)
        if self.store is not self._shared:
            self.store.close()

    # -- routing and due times -------------------------------------------------------------

    def reload(self) -> None:
        """Re-read the API's order assignments (other hub workers may have changed them)."""
        assigned: dict[str, set[str]] = {}
        due: dict[str, float] = {}
        for work_order, supplier, when in self.store.list_assignments():
            assigned.setdefault(work_order, set()).add(supplier)
            if when is not None:
                due[work_order] = when
        for work_order, order in self.config.orders.items():
            if order.due is not None and work_order not in due:
                due[work_order] = order.due.timestamp()
        router = routing.Router(self.config, assigned)
        with self._lock:
            self._router, self._due = router, due

    def router(self) -> routing.Router:
        with self._lock:
            return self._router

    def due(self, work_order: str) -> float | None:
        with self._lock:
            return self._due.get(work_order)

    # -- what one supplier may see ---------------------------------------------------------

    def visible_state(self, supplier: str, row: Any) -> bool:
        """Whether an `op_state` row concerns the supplier (routed like its newest event)."""
        event = {
            "type": row.type,
            "data": {
                "workOrder": {"id": row.work_order,
                              "customerOrders": _customer_orders(row.customer_orders)},
                "operation": {"id": row.operation},
                "equipment": {"path": row.station},
            },
        }
        return self.router().concerns(supplier, event)

    def state_for(self, supplier: str, row: Any) -> dict[str, Any]:
        """The supplier's view of an `op_state` row: its station under its public name."""
        document = state_document(row)
        document["station"] = routing.station_name(document["station"],
                                                   self.config.suppliers[supplier])
        return document

    def events_after(self, supplier: str, after: int, limit: int
                     ) -> tuple[list[FeedEntry], int]:
        """Up to `limit` entries of the supplier's feed after position `after`, and the
        position to ask from next (the last one returned, or `after` when none)."""
        found = self.feed.read(supplier, after, limit)
        return found, found[-1].position if found else after


def _customer_orders(text: str) -> list[Any]:
    """The customer orders of an `op_state` row ([] when the stored JSON is not a list)."""
    try:
        found = json.loads(text)
    except BAD_ROW:
        return []
    return found if isinstance(found, list) else []
