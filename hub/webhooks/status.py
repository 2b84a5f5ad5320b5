"""Every configured endpoint's delivery status, from the database: the same in every hub
process (the admin API's `GET /v1/admin/webhooks`, the /metrics gauges)."""

from __future__ import annotations

from typing import Any

from hub.config import HubConfig
from hub.webhooks.cursors import Cursors
from hub.webhooks.source import FeedReader


class WebhookStatus:
    """Reads cursors, health and feed heads (blocking: call it from a worker thread)."""

    def __init__(self, config: HubConfig, cursors: Cursors, feed: FeedReader) -> None:
        self.config = config
        self.cursors = cursors
        self.feed = feed

    def rows(self) -> list[dict[str, Any]]:
        """One row per endpoint, in hub.yaml order."""
        saved = self.cursors.all()
        heads = self.feed.heads(s for s, c in self.config.suppliers.items() if c.webhooks)
        rows = []
        for supplier, settings in self.config.suppliers.items():
            for name, endpoint in settings.webhooks.items():
                head = heads.get(supplier, 0)
                row = saved.get((supplier, name))
                health = row.health if row is not None else None
                rows.append({
                    "supplier": supplier, "name": name, "url": endpoint.url,
                    "types": list(endpoint.types),
                    "cursor": row.position if row is not None else None, "head": head,
                    "lag": max(0, head - row.position) if row is not None else None,
                    "failing": bool(health and health.failing),
                    "failing_since": health.failing_since if health else None,
                    "last_status": health.last_status if health else None,
                    "last_error": health.last_error if health else None,
                })
        return rows
