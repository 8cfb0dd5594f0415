"""Operation metrics of the checkpoint manager, as plain counters.

Each manager keeps its own counters (several managers share one process:
tests, the CLI's commands). `/metrics` exports them under these names
(`code_hero.exposition`):

    code_hero_checkpoint_operations_total{backend,operation}         calls
    code_hero_checkpoint_operation_errors_total{backend,operation}   failed calls
    code_hero_checkpoint_operation_seconds{backend,operation}        latency histogram
    code_hero_checkpoint_errors_total{backend,kind}                  errors by exception type
    code_hero_fallback_switches_total, code_hero_recoveries_total,
    code_hero_synced_items_total

Plain counters, not prometheus-client's: every figure here is read through
`snapshot()`, so its registry, label look-ups and locks bought nothing, and
without it a server nobody scrapes never loads prometheus-client (about
1 MiB resident). Every call comes from the event loop's thread.

`snapshot()` renders them as plain data: what the gateway exports on
`/metrics` and what tests and the seed's `metrics_snapshot()` read.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

__all__ = ["LATENCY_BUCKETS", "Metrics"]

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@dataclass
class _Operation:
    """The calls of one operation on one backend."""

    count: int = 0
    errors: int = 0
    total_seconds: float = 0.0
    max_seconds: float = 0.0
    # Calls per latency bucket (not cumulative); one past the last bound: slower calls.
    buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))


class Metrics:
    """All counters of one manager."""

    def __init__(self) -> None:
        self._operations: dict[tuple[str, str], _Operation] = {}
        self._errors: Counter[tuple[str, str]] = Counter()
        self.fallback_switches = 0
        """Switches to a fallback backend so far."""
        self.recoveries = 0
        """Returns to the primary backend so far."""
        self.synced_items = 0
        """Items copied back to the primary so far."""

    @contextmanager
    def timed(self, backend: str, operation: str) -> Iterator[None]:
        """Time the block as one call of `operation` on `backend`."""
        start = time.perf_counter()
        ok = False
        try:
            yield
            ok = True
        except BaseException as exc:
            self._errors[backend, type(exc).__name__] += 1
            raise
        finally:
            self.observe(backend, operation, time.perf_counter() - start, ok=ok)

    def observe(self, backend: str, operation: str, seconds: float, *, ok: bool) -> None:
        """Record one call of `operation` on `backend` that took `seconds`."""
        key = (backend, operation)
        stats = self._operations.get(key)
        if stats is None:
            stats = self._operations[key] = _Operation()
        stats.count += 1
        if not ok:
            stats.errors += 1
        stats.total_seconds += seconds
        stats.max_seconds = max(stats.max_seconds, seconds)
        # A bucket counts the calls at most as slow as its bound (Prometheus' `le`).
        stats.buckets[bisect_left(LATENCY_BUCKETS, seconds)] += 1

    def switched(self) -> None:
        """Count a switch to a fallback backend."""
        self.fallback_switches += 1

    def recovered(self) -> None:
        """Count a return to the primary backend."""
        self.recoveries += 1

    def synced(self, items: int = 1) -> None:
        """Count items copied back from a fallback to the primary."""
        self.synced_items += items

    def snapshot(self) -> dict[str, Any]:
        """Everything as plain data; per operation, latency buckets are not cumulative."""
        return {
            "operations": {
                f"{backend}.{op}": {
                    "count": stats.count,
                    "errors": stats.errors,
                    "total_seconds": stats.total_seconds,
                    "mean_ms": stats.total_seconds / stats.count * 1000 if stats.count else 0.0,
                    "max_ms": stats.max_seconds * 1000,
                    "buckets": dict(zip(LATENCY_BUCKETS, stats.buckets, strict=False)),
                }
                for (backend, op), stats in sorted(self._operations.items())
            },
            "errors": {f"{b}.{kind}": n for (b, kind), n in sorted(self._errors.items())},
            "fallback_switches": self.fallback_switches,
            "recoveries": self.recoveries,
            "synced_items": self.synced_items,
        }
