"""Prometheus metrics of one gateway process, read from the live objects when scraped.

Pipeline, outbox, uplink and driver counters are plain attributes; this collector reads them
when scraped (common/metrics.py). Served at `GET /metrics` of the local API (loopback by
default, like the rest of it).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from functools import partial
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from common import metrics
from drivers.base import DriverCounters

if TYPE_CHECKING:
    from gateway.runtime import Gateway

# (metric name, help, attribute of the pipeline's stats)
_PIPELINE = (
    ("keyop_gateway_samples", "samples taken from the drivers", "samples"),
    ("keyop_gateway_bad_samples", "samples of bad quality", "bad_samples"),
    ("keyop_gateway_packets_emitted", "packets committed to the outbox", "packets_emitted"),
    ("keyop_gateway_driver_restarts", "driver tasks restarted after a crash", "driver_restarts"),
    ("keyop_gateway_commit_failures", "outbox commits that failed (retried)", "commit_failures"),
)
# (metric name, help, attribute of the outbox)
_OUTBOX_COUNTERS = (
    ("keyop_outbox_evicted_packets", "packets evicted by the bound policy (a gap record each "
     "range)", "evicted_packets"),
    ("keyop_outbox_refused_appends", "appends refused by a full bound or disk",
     "refused_appends"),
    ("keyop_outbox_disk_full", "appends that met a full disk", "disk_full"),
)
# (metric name, help, attribute of the uplink)
_UPLINK_COUNTERS = (
    ("keyop_uplink_published_events", "packets published (resends included)",
     "published_events"),
    ("keyop_uplink_published_messages", "MQTT messages published (a batch counts once)",
     "published_messages"),
    ("keyop_uplink_resends", "packets published again after the ack timeout", "resends"),
    ("keyop_uplink_reconnects", "broker reconnects", "reconnects"),
)


class GatewayCollector(Collector):
    """Reads one running `Gateway` when the registry is collected."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def collect(self) -> Iterator[Metric]:
        gateway = self.gateway
        source = gateway.config.source
        pipeline, uplink = gateway.pipeline, gateway.uplink
        label = ("source", source)
        one = partial(metrics.one, label)
        if pipeline is not None:
            yield from metrics.of_attributes(label, CounterMetricFamily, _PIPELINE,
                                             pipeline.stats)
        if uplink is not None:
            outbox = uplink.outbox
            yield one(GaugeMetricFamily, "keyop_outbox_pending_packets",
                      "packets stored and not yet acknowledged by the hub", outbox.pending_count)
            yield one(GaugeMetricFamily, "keyop_outbox_last_seq",
                      "the highest sequence committed in this epoch", outbox.last_seq)
            yield one(GaugeMetricFamily, "keyop_outbox_full",
                      "1 while the last append found a bound or the disk full",
                      1 if outbox.full else 0)
            yield from metrics.of_attributes(label, CounterMetricFamily, _OUTBOX_COUNTERS, outbox)
            yield one(GaugeMetricFamily, "keyop_uplink_connected",
                      "1 while the MQTT session is up", 1 if uplink.connected else 0)
            yield one(GaugeMetricFamily, "keyop_uplink_acked_seq",
                      "the highest sequence the hub acknowledged", uplink.acked_seq)
            yield from metrics.of_attributes(label, CounterMetricFamily, _UPLINK_COUNTERS, uplink)
        yield from driver_metrics(_counters(gateway.drivers))


def _counters(drivers: Iterable[object]) -> list[DriverCounters]:
    snapshots = []
    for driver in drivers:
        counters = getattr(driver, "counters", None)  # drivers that keep counters have it
        if callable(counters):
            snapshots.append(counters())
    return snapshots


def driver_metrics(snapshots: Iterable[DriverCounters]) -> Iterator[Metric]:
    """Metric families of driver counter snapshots, labelled by device and protocol."""
    labels = ["device", "protocol"]
    requests = CounterMetricFamily("keyop_driver_requests", "requests sent to the device",
                                   labels=labels)
    errors = CounterMetricFamily("keyop_driver_errors", "failed requests by reason",
                                 labels=[*labels, "reason"])
    overruns = CounterMetricFamily("keyop_driver_overruns",
                                   "poll cycles skipped because the previous one ran late",
                                   labels=labels)
    reconnects = CounterMetricFamily("keyop_driver_reconnects", "reconnects after the first "
                                     "connect", labels=labels)
    samples = CounterMetricFamily("keyop_driver_samples", "samples by quality",
                                  labels=[*labels, "quality"])
    extra: dict[str, CounterMetricFamily] = {}
    for snap in snapshots:
        device = [snap.device, snap.protocol]
        requests.add_metric(device, snap.requests)
        for reason, count in sorted(snap.errors.items()):
            errors.add_metric([*device, reason], count)
        overruns.add_metric(device, snap.overruns)
        reconnects.add_metric(device, snap.reconnects)
        samples.add_metric([*device, "good"], snap.good_samples)
        samples.add_metric([*device, "bad"], snap.bad_samples)
        for name, count in sorted(snap.extra.items()):
            family = extra.get(name)
            if family is None:
                family = extra[name] = CounterMetricFamily(
                    f"keyop_driver_{name}", f"driver counter '{name}'", labels=labels)
            family.add_metric(device, count)
    yield from (requests, errors, overruns, reconnects, samples, *extra.values())


def registry_for(gateway: Gateway) -> CollectorRegistry:
    """The gateway's own registry (common.metrics.private_registry)."""
    return metrics.private_registry(GatewayCollector(gateway))

