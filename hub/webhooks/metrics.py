"""The webhook metrics of one hub process (hub/metrics.py yields them).

Counters are this process's deliveries; the gauges (`failing`, `lag`) come from the database,
so every hub process reports the same state whichever one delivers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from hub.webhooks.deliverer import Deliverer

_LABELS = ["hub", "supplier", "webhook"]


def webhook_metrics(hub_id: str, deliverer: Deliverer | None,
                    status: Callable[[], list[dict[str, Any]]]) -> Iterator[Metric]:
    """`keyop_hub_webhook_*` of this process and of every endpoint's saved state."""
    lease = GaugeMetricFamily("keyop_hub_webhooks_lease_held", "1 while this process "
                              "delivers webhooks (one process at a time)", labels=["hub"])
    lease.add_metric([hub_id], int(deliverer is not None and deliverer.holds_lease))
    yield lease
    counters = [
        ("keyop_hub_webhook_events", "events delivered with a 2xx answer", "delivered"),
        ("keyop_hub_webhook_requests", "webhook POSTs sent", "requests"),
        ("keyop_hub_webhook_failures", "webhook POSTs without a 2xx answer (retried)",
         "failures"),
    ]
    for name, help_text, attribute in counters:
        family = CounterMetricFamily(name, help_text, labels=_LABELS)
        for endpoint in deliverer.endpoints if deliverer is not None else []:
            family.add_metric([hub_id, endpoint.supplier, endpoint.name],
                              getattr(endpoint.state, attribute))
        yield family
    failing = GaugeMetricFamily(
        "keyop_hub_webhook_failing", "1 while an endpoint has failed for "
        "webhooks.failing_after_s (the hub alert)", labels=_LABELS)
    lag = GaugeMetricFamily("keyop_hub_webhook_lag",
                            "feed positions after an endpoint's saved cursor", labels=_LABELS)
    for row in status():
        labels = [hub_id, row["supplier"], row["name"]]
        failing.add_metric(labels, int(row["failing"]))
        lag.add_metric(labels, row["lag"] if row["lag"] is not None else row["head"])
    yield failing
    yield lag
