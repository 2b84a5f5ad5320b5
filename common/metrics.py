"""Prometheus families read from live objects at scrape time, for both daemons' collectors.

Each daemon keeps its counters as plain attributes (tests, benchmarks and status read them);
its collector turns them into metric families when `/metrics` is scraped, so the hot paths pay
nothing for metrics.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

Kind = type[CounterMetricFamily] | type[GaugeMetricFamily]
# (metric name, help, attribute of the object the values are read from)
Attributes = Iterable[tuple[str, str, str]]


# The one label of a process-wide family and its value: ("source", "plant1/edge-07"),
# ("hub", "hub-1").
Label = tuple[str, str]


def one(label: Label, kind: Kind, name: str, text: str, value: float) -> Metric:
    """A family with a single sample, labelled with the process it describes."""
    family = kind(name, text, labels=[label[0]])
    family.add_metric([label[1]], value)
    return family


def of_attributes(label: Label, kind: Kind, table: Attributes, source: object
                  ) -> Iterator[Metric]:
    """One single-sample family per row of `table`, its value read from `source`."""
    for name, text, attribute in table:
        yield one(label, kind, name, text, getattr(source, attribute))


def private_registry(collector: Collector) -> CollectorRegistry:
    """A registry of its own for `collector` (never the global one: tests run several
    gateways and hubs in one process)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry
