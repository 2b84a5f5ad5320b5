"""Prometheus metrics of one hub process, read from the live service when scraped.

The counters are plain attributes of the service; this collector reads them when scraped
(common/metrics.py). The fan-out lag per supplier comes from the store (one small query).
Served at `GET /metrics` of the hub API, behind the operator's admin key.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from common import metrics
from hub.feed import Feed
from hub.webhooks.metrics import webhook_metrics

if TYPE_CHECKING:
    from hub.service import HubService

# (metric name, help, service attribute)
_INGEST_COUNTERS = (
    ("keyop_hub_messages", "MQTT messages taken from the uplink subscription", "messages"),
    ("keyop_hub_packets_stored", "packets stored for the first time", "stored"),
    ("keyop_hub_packets_duplicate", "packets received again and absorbed", "duplicates"),
    ("keyop_hub_dead_letters", "dead letters written (one per message with bad events)",
     "dead_letters"),
    ("keyop_hub_sequence_gaps", "sequence gaps seen (each hole once)", "gaps"),
    ("keyop_hub_acks_sent", "acknowledgements published to edges", "acks_sent"),
    ("keyop_hub_refused_sequences", "refused events settled so acknowledgements go past them",
     "refused_seqs"),
    ("keyop_hub_future_events", "event times beyond hub.max_future_skew_s, ordered as received",
     "future_events"),
    ("keyop_hub_store_refusals", "events the database refused, isolated into dead letters",
     "store_refusals"),
)


class HubCollector(Collector):
    """Reads one `HubService` when the registry is collected."""

    def __init__(self, service: HubService) -> None:
        self.service = service

    def collect(self) -> Iterator[Metric]:
        service = self.service
        hub_id = service.config.hub.id
        label = ("hub", hub_id)
        one = partial(metrics.one, label)
        yield from metrics.of_attributes(label, CounterMetricFamily, _INGEST_COUNTERS, service)
        mqtt, fanout = service.mqtt, service.fanout
        roles = GaugeMetricFamily("keyop_hub_role", "1 for each role this process takes "
                                  "(hub.ingest, hub.fanout)", labels=["hub", "role"])
        roles.add_metric([hub_id, "ingest"], int(service.config.hub.ingest))
        roles.add_metric([hub_id, "fanout"], int(service.config.hub.fanout))
        yield roles
        yield one(GaugeMetricFamily, "keyop_hub_fanout_lease_held",
                  "1 while this process holds the fan-out lease (one process at a time)",
                  int(fanout is not None and fanout.holds_lease))
        yield one(GaugeMetricFamily, "keyop_hub_broker_connected",
                  "1 while the hub's MQTT session is up",
                  1 if mqtt is not None and mqtt.client.is_connected() else 0)
        yield one(GaugeMetricFamily, "keyop_hub_ingest_waiting",
                  "messages received and not yet taken by ingest",
                  mqtt.inbox.qsize() if mqtt is not None else 0)
        yield one(CounterMetricFamily, "keyop_hub_fanout_messages",
                  "supplier messages acknowledged by the broker",
                  fanout.published if fanout else 0)
        yield one(CounterMetricFamily, "keyop_hub_fanout_failures",
                  "supplier messages refused or not acknowledged in time (resent later)",
                  fanout.failed if fanout else 0)
        yield one(CounterMetricFamily, "keyop_hub_fanout_skipped",
                  "stored packets skipped for every supplier (a body that cannot be parsed "
                  "or routed)", fanout.skipped if fanout else 0)
        if service.alerts is not None:
            yield one(CounterMetricFamily, "keyop_hub_alerts_raised",
                      "delay and stall alerts raised", service.alerts.raised)
            yield one(CounterMetricFamily, "keyop_hub_alerts_evaluations",
                      "delay alert evaluations completed by this process",
                      service.alerts.evaluations)
            yield one(CounterMetricFamily, "keyop_hub_alerts_skipped",
                      "operations (or one supplier's view of one) skipped by an evaluation "
                      "for a stored value it cannot use", service.alerts.skipped)
        if service.retention is not None:
            deleted = CounterMetricFamily(
                "keyop_hub_retention_deleted", "rows deleted past their retention",
                labels=["hub", "table"])
            for table, count in service.retention.deleted.items():
                deleted.add_metric([hub_id, table], count)
            yield deleted
        if service.supervisor is not None:
            yield from self._tasks()
        if service.store is not None:
            yield self._fanout_lag()
        if service.webhook_status is not None:
            yield from webhook_metrics(hub_id, service.webhooks, service.webhook_status.rows)

    def _tasks(self) -> Iterator[Metric]:
        supervisor = self.service.supervisor
        assert supervisor is not None
        hub_id = self.service.config.hub.id
        restarts = CounterMetricFamily(
            "keyop_hub_task_restarts", "background tasks restarted after they failed",
            labels=["hub", "task"])
        failures = CounterMetricFamily(
            "keyop_hub_task_failures", "failures of background tasks and scheduled jobs",
            labels=["hub", "task"])
        failing = GaugeMetricFamily(
            "keyop_hub_task_failing", "1 while a background task or job is failing (its "
            "latest run failed)", labels=["hub", "task"])
        for name in supervisor.names:
            restarts.add_metric([hub_id, name], supervisor.restarts[name])
            failures.add_metric([hub_id, name], supervisor.failures[name])
            failing.add_metric([hub_id, name], int(supervisor.failing(name)))
        yield from (restarts, failures, failing)

    def _fanout_lag(self) -> Metric:
        service = self.service
        assert service.store is not None
        suppliers = list(service.config.suppliers)
        heads = Feed(service.store).heads(suppliers)
        cursors = service.store.get_cursors(suppliers) if suppliers else {}
        lag = GaugeMetricFamily(
            "keyop_hub_fanout_lag",
            "entries of a supplier's feed after its saved MQTT cursor (cursors are saved at "
            "most a second late; an upper bound of its waiting events)",
            labels=["supplier"])
        for supplier in suppliers:
            lag.add_metric([supplier], max(0, heads[supplier] - cursors.get(supplier, 0)))
        return lag


def registry_for(service: HubService) -> CollectorRegistry:
    """The hub process's own registry (common.metrics.private_registry)."""
    return metrics.private_registry(HubCollector(service))

