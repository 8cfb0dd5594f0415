"""The Prometheus text of /metrics: the gateway's metrics and GraphQL operation counts.

In this order (the one prometheus-client's registry gave before the counters
were plain):

    code_hero_checkpoint_*, code_hero_fallback_switches_total, ... see
                                                                 persistence/metrics.py
    code_hero_pending_sync, code_hero_quarantined, code_hero_subscribers,
    code_hero_active_runs, code_hero_internal_entries{map},
    code_hero_checkpointer_status{status}                        gauges
    code_hero_adopted_files, code_hero_adopted_pending_sync      gauges: dead replicas'
                                                                 files held (adoption.py)
    code_hero_adoptions_total, code_hero_adoption_failures_total
    code_hero_graphql_operations_total{operation_type,status}   operations by outcome
                                                                 (ok or the error code)

The operations' `_created` series (when each pair was first seen) are written
as prometheus-client writes its own Counter's: not at all with
PROMETHEUS_DISABLE_CREATED_SERIES or after `disable_created_metrics()`.

The app imports this module at the first scrape, not at start-up: a server
nobody scrapes never loads prometheus-client (about 1 MiB resident). Every
figure is read from plain counters at each scrape, in a registry of the
app's own (never the global default one).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from code_hero.fanout import Fanout
from code_hero.gateway import Gateway

__all__ = ["Exposition"]


class Exposition(Collector):
    """What /metrics answers, read at each scrape."""

    def __init__(
        self,
        gateway_of: Callable[[], Gateway | None],
        fanout: Fanout,
        operations: Mapping[tuple[str, str], int],
        first_seen: Mapping[tuple[str, str], float],
    ) -> None:
        self._gateway_of = gateway_of
        self._fanout = fanout
        self._operations = operations
        self._first_seen = first_seen
        self._registry = CollectorRegistry()
        self._registry.register(self)

    def render(self) -> tuple[bytes, str]:
        """The text exposition and its media type."""
        return generate_latest(self._registry), CONTENT_TYPE_LATEST

    def collect(self) -> Iterable[Metric]:
        """Every metric family, as it stands now."""
        families: list[Metric] = []
        gateway = self._gateway_of()
        if gateway is not None:
            snap = gateway.metrics()
            # The shared streams live in the app, not the gateway.
            snap["internal_entries"] = {
                **snap.get("internal_entries", {}),
                **self._fanout.internal_sizes(),
            }
            families += _gateway_metrics(snap)
        # The operations come last: the order of the registry before the counters
        # were plain (the gateway's collector, then prometheus-client's Counter).
        operations = CounterMetricFamily(
            "code_hero_graphql_operations",
            "GraphQL operations by type and outcome (ok or the error code).",
            labels=["operation_type", "status"],
        )
        created = _created_series()
        for key, count in list(self._operations.items()):
            first_seen = self._first_seen.get(key) if created else None
            operations.add_metric(list(key), count, created=first_seen)
        families.append(operations)
        return families


def _created_series() -> bool:
    """Whether prometheus-client writes a counter's `_created` series now."""
    # Asked of a Counter of its own, so the answer is prometheus-client's:
    # PROMETHEUS_DISABLE_CREATED_SERIES at its import, or disable_created_metrics()
    # and enable_created_metrics() since.
    probe = Counter("code_hero_probe", "", registry=None)
    return any(s.name.endswith("_created") for family in probe.collect() for s in family.samples)


def _gateway_metrics(snap: Mapping[str, Any]) -> Iterable[Metric]:
    labels = ["backend", "operation"]
    calls = CounterMetricFamily(
        "code_hero_checkpoint_operations", "Checkpoint backend calls.", labels=labels
    )
    failed = CounterMetricFamily(
        "code_hero_checkpoint_operation_errors",
        "Checkpoint backend calls that failed.",
        labels=labels,
    )
    seconds = HistogramMetricFamily(
        "code_hero_checkpoint_operation_seconds", "Checkpoint backend call latency.", labels=labels
    )
    for key, stats in sorted(snap.get("operations", {}).items()):
        backend, _, operation = str(key).partition(".")
        calls.add_metric([backend, operation], stats["count"])
        failed.add_metric([backend, operation], stats["errors"])
        cumulative, buckets = 0, []
        for bound, count in stats["buckets"].items():
            cumulative += count
            buckets.append((str(bound), float(cumulative)))
        buckets.append(("+Inf", float(stats["count"])))
        seconds.add_metric([backend, operation], buckets, sum_value=stats["total_seconds"])
    yield from (calls, failed, seconds)

    errors = CounterMetricFamily(
        "code_hero_checkpoint_errors",
        "Backend errors by exception type.",
        labels=["backend", "kind"],
    )
    for key, count in sorted(snap.get("errors", {}).items()):
        backend, _, kind = str(key).partition(".")
        errors.add_metric([backend, kind], count)
    yield errors

    for name, doc in (
        ("fallback_switches", "Switches to a fallback backend."),
        ("recoveries", "Returns to the primary backend."),
        ("synced_items", "Items copied back from a fallback to the primary."),
    ):
        yield CounterMetricFamily(f"code_hero_{name}", doc, value=snap.get(name, 0))
    for name, doc in (
        ("pending_sync", "Writes on a fallback not yet copied to the primary."),
        ("quarantined", "Fallback writes the primary refused; kept and retried."),
        ("subscribers", "Open event subscriptions."),
        ("active_runs", "Runs executing in this process."),
    ):
        yield GaugeMetricFamily(f"code_hero_{name}", doc, value=snap.get(name, 0))
    internal = GaugeMetricFamily(
        "code_hero_internal_entries",
        "Entries in each per-run map of this process (0 when idle).",
        labels=["map"],
    )
    for name, size in sorted(snap.get("internal_entries", {}).items()):
        internal.add_metric([name], size)
    yield internal
    status = GaugeMetricFamily(
        "code_hero_checkpointer_status", "1 for the current storage status.", labels=["status"]
    )
    for value in ("healthy", "degraded", "unhealthy"):
        status.add_metric([value], 1.0 if snap.get("overall_status") == value else 0.0)
    yield status
    for name, doc in (
        ("adopted_files", "Dead replicas' fallback files this server holds to copy back."),
        ("adopted_pending_sync", "Writes waiting in those files (quarantined ones too)."),
    ):
        yield GaugeMetricFamily(f"code_hero_{name}", doc, value=snap.get(name, 0))
    for name, key, doc in (
        ("adoptions", "adoptions_copied", "Dead replicas' files copied back and released."),
        ("adoption_failures", "adoption_failures", "Adoptions that failed (tried again)."),
    ):
        yield CounterMetricFamily(f"code_hero_{name}", doc, value=snap.get(key, 0))
