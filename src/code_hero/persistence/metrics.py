"""Operation metrics of the checkpoint manager, on prometheus-client.

Each manager keeps its own `CollectorRegistry` (several managers share one
process: tests, the CLI's commands), never the global default registry:

    code_hero_checkpoint_operations_total{backend,operation}         calls
    code_hero_checkpoint_operation_errors_total{backend,operation}   failed calls
    code_hero_checkpoint_operation_seconds{backend,operation}        latency histogram
    code_hero_checkpoint_errors_total{backend,kind}                  errors by exception type
    code_hero_fallback_switches_total, code_hero_recoveries_total,
    code_hero_synced_items_total

`snapshot()` renders them as plain data: what the gateway exports on
`/metrics` and what tests and the seed's `metrics_snapshot()` read.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

__all__ = ["LATENCY_BUCKETS", "Metrics"]

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

_OPERATION = ("backend", "operation")


class Metrics:
    """All counters of one manager, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self._calls = Counter(
            "code_hero_checkpoint_operations", "Checkpoint backend calls.", _OPERATION, registry=r
        )
        self._failed = Counter(
            "code_hero_checkpoint_operation_errors",
            "Checkpoint backend calls that failed.",
            _OPERATION,
            registry=r,
        )
        self._seconds = Histogram(
            "code_hero_checkpoint_operation_seconds",
            "Checkpoint backend call latency.",
            _OPERATION,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self._errors = Counter(
            "code_hero_checkpoint_errors",
            "Backend errors by exception type.",
            ("backend", "kind"),
            registry=r,
        )
        self._switches = Counter(
            "code_hero_fallback_switches", "Switches to a fallback backend.", registry=r
        )
        self._recoveries = Counter(
            "code_hero_recoveries", "Returns to the primary backend.", registry=r
        )
        self._synced = Counter(
            "code_hero_synced_items",
            "Items copied back from a fallback to the primary.",
            registry=r,
        )
        # Label look-ups cost more than the counting: each (backend, operation)'s
        # children are looked up once.
        self._children: dict[tuple[str, str], tuple[Counter, Counter, Histogram]] = {}
        # The one figure prometheus-client does not keep: the slowest call.
        self._slowest: dict[tuple[str, str], float] = {}

    @contextmanager
    def timed(self, backend: str, operation: str) -> Iterator[None]:
        """Time the block as one call of `operation` on `backend`."""
        start = time.perf_counter()
        ok = False
        try:
            yield
            ok = True
        except BaseException as exc:
            self._errors.labels(backend, type(exc).__name__).inc()
            raise
        finally:
            self.observe(backend, operation, time.perf_counter() - start, ok=ok)

    def observe(self, backend: str, operation: str, seconds: float, *, ok: bool) -> None:
        """Record one call of `operation` on `backend` that took `seconds`."""
        key = (backend, operation)
        children = self._children.get(key)
        if children is None:
            # The failures' child too: present at 0 from the first call on.
            children = self._children[key] = (
                self._calls.labels(*key),
                self._failed.labels(*key),
                self._seconds.labels(*key),
            )
        calls, failed, latency = children
        calls.inc()
        if not ok:
            failed.inc()
        latency.observe(seconds)
        self._slowest[key] = max(self._slowest.get(key, 0.0), seconds)

    def switched(self) -> None:
        """Count a switch to a fallback backend."""
        self._switches.inc()

    def recovered(self) -> None:
        """Count a return to the primary backend."""
        self._recoveries.inc()

    def synced(self, items: int = 1) -> None:
        """Count items copied back from a fallback to the primary."""
        self._synced.inc(items)

    @property
    def fallback_switches(self) -> int:
        """Switches to a fallback backend so far."""
        return self._total("code_hero_fallback_switches_total")

    @property
    def recoveries(self) -> int:
        """Returns to the primary backend so far."""
        return self._total("code_hero_recoveries_total")

    @property
    def synced_items(self) -> int:
        """Items copied back to the primary so far."""
        return self._total("code_hero_synced_items_total")

    def _total(self, sample: str) -> int:
        return int(self.registry.get_sample_value(sample) or 0)

    def snapshot(self) -> dict[str, Any]:
        """Everything as plain data; per operation, latency buckets are not cumulative."""
        operations: dict[tuple[str, str], dict[str, Any]] = {}
        cumulative: dict[tuple[str, str], list[int]] = {}
        errors: dict[tuple[str, str], int] = {}
        totals: dict[str, int] = {}
        for family in self.registry.collect():
            for s in family.samples:
                labels = s.labels
                if s.name == "code_hero_checkpoint_errors_total":
                    errors[(labels["backend"], labels["kind"])] = int(s.value)
                    continue
                if "operation" not in labels:
                    if s.name.endswith("_total"):
                        totals[s.name.removeprefix("code_hero_").removesuffix("_total")] = int(
                            s.value
                        )
                    continue
                key = (labels["backend"], labels["operation"])
                stats = operations.setdefault(key, {})
                if s.name == "code_hero_checkpoint_operations_total":
                    stats["count"] = int(s.value)
                elif s.name == "code_hero_checkpoint_operation_errors_total":
                    stats["errors"] = int(s.value)
                elif s.name == "code_hero_checkpoint_operation_seconds_sum":
                    stats["total_seconds"] = s.value
                elif s.name == "code_hero_checkpoint_operation_seconds_bucket":
                    if labels["le"] != "+Inf":
                        cumulative.setdefault(key, []).append(int(s.value))
        return {
            "operations": {
                f"{backend}.{op}": self._operation(
                    operations[(backend, op)], cumulative[(backend, op)], (backend, op)
                )
                for backend, op in sorted(operations)
            },
            "errors": {f"{b}.{kind}": n for (b, kind), n in sorted(errors.items())},
            "fallback_switches": totals.get("fallback_switches", 0),
            "recoveries": totals.get("recoveries", 0),
            "synced_items": totals.get("synced_items", 0),
        }

    def _operation(
        self, stats: dict[str, Any], cumulative: list[int], key: tuple[str, str]
    ) -> dict[str, Any]:
        count, total = stats["count"], stats["total_seconds"]
        per_bucket = [n - before for n, before in zip(cumulative, [0, *cumulative], strict=False)]
        return {
            "count": count,
            "errors": stats["errors"],
            "total_seconds": total,
            "mean_ms": total / count * 1000 if count else 0.0,
            "max_ms": self._slowest.get(key, 0.0) * 1000,
            "buckets": dict(zip(LATENCY_BUCKETS, per_bucket, strict=True)),
        }
