"""Operation metrics of the checkpoint manager: counts, latencies, errors, switches.

Plain in-process counters that the gateway exports (Prometheus) and tests read.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

__all__ = ["LATENCY_BUCKETS", "Metrics", "OperationStats"]

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@dataclass
class OperationStats:
    """Count, errors and a latency histogram of one (backend, operation)."""

    count: int = 0
    errors: int = 0
    total_seconds: float = 0.0
    max_seconds: float = 0.0
    buckets: list[int] = field(default_factory=lambda: [0] * len(LATENCY_BUCKETS))

    def observe(self, seconds: float, ok: bool) -> None:
        """Record one call."""
        self.count += 1
        if not ok:
            self.errors += 1
        self.total_seconds += seconds
        self.max_seconds = max(self.max_seconds, seconds)
        for i, bound in enumerate(LATENCY_BUCKETS):
            if seconds <= bound:
                self.buckets[i] += 1
                break

    def as_dict(self) -> dict[str, Any]:
        """A JSON-friendly summary."""
        mean = self.total_seconds / self.count if self.count else 0.0
        return {
            "count": self.count,
            "errors": self.errors,
            "total_seconds": self.total_seconds,
            "mean_ms": mean * 1000,
            "max_ms": self.max_seconds * 1000,
            "buckets": dict(zip(LATENCY_BUCKETS, self.buckets, strict=True)),
        }


class Metrics:
    """All counters of one manager."""

    def __init__(self) -> None:
        self.operations: dict[tuple[str, str], OperationStats] = defaultdict(OperationStats)
        self.errors_by_kind: dict[tuple[str, str], int] = defaultdict(int)
        self.fallback_switches = 0
        self.recoveries = 0
        self.synced_items = 0

    @contextmanager
    def timed(self, backend: str, operation: str) -> Iterator[None]:
        """Time the block as one call of `operation` on `backend`."""
        start = time.perf_counter()
        ok = False
        try:
            yield
            ok = True
        except BaseException as exc:
            self.errors_by_kind[(backend, type(exc).__name__)] += 1
            raise
        finally:
            self.operations[(backend, operation)].observe(time.perf_counter() - start, ok)

    def snapshot(self) -> dict[str, Any]:
        """Everything as plain data."""
        return {
            "operations": {
                f"{backend}.{op}": stats.as_dict()
                for (backend, op), stats in sorted(self.operations.items())
            },
            "errors": {f"{b}.{kind}": n for (b, kind), n in sorted(self.errors_by_kind.items())},
            "fallback_switches": self.fallback_switches,
            "recoveries": self.recoveries,
            "synced_items": self.synced_items,
        }
