"""Per-user rate limits: a token bucket per caller, in this process's memory.

`RateLimit(60, 60.0)` ("60/minute") lets a user make 60 rate-limited calls
at once and then one more every second. A call may spend more than one token
(a read spends its query cost). Buckets live in one process: with N replicas
behind a load balancer a user gets up to N times the limit.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from code_hero.errors import ConfigurationError

__all__ = ["RateLimit", "TokenBuckets", "parse_rate_limit"]

PERIODS = {"second": 1.0, "minute": 60.0, "hour": 3600.0, "day": 86400.0}
_SPEC = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*(second|minute|hour|day|s|m|h|d)s?\s*$", re.I)
_SHORT = {"s": "second", "m": "minute", "h": "hour", "d": "day"}


@dataclass(frozen=True)
class RateLimit:
    """`count` calls per `seconds`, refilled evenly."""

    count: int
    seconds: float

    def __str__(self) -> str:
        return f"{self.count} per {self.seconds:g} s"


def parse_rate_limit(text: str | None, name: str = "CODE_HERO_RATE_LIMIT") -> RateLimit | None:
    """ "60/minute", "10/second", "1000/hour", "5/10s"; None for "", "0" or "off"."""
    raw = (text or "").strip().lower()
    if raw in {"", "0", "off", "none", "false"}:
        return None
    match = _SPEC.match(raw)
    if not match:
        raise ConfigurationError(
            f"{name} must look like 60/minute, 10/second or 5/10s, got {text!r}"
        )
    count, multiple, unit = int(match.group(1)), match.group(2), match.group(3).lower()
    seconds = PERIODS[_SHORT.get(unit, unit)] * (int(multiple) if multiple else 1)
    if count < 1 or seconds <= 0:
        return None
    return RateLimit(count, seconds)


class TokenBuckets:
    """One bucket per key; `take(key)` spends a token or says how long to wait for one."""

    def __init__(
        self,
        limit: RateLimit,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 100_000,
    ) -> None:
        self.limit = limit
        self.clock = clock
        self.max_keys = max_keys
        self._rate = limit.count / limit.seconds  # tokens per second
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)

    def take(self, key: str, amount: float = 1.0) -> float:
        """0.0 when `amount` tokens were spent, else the seconds until they are available.

        More than the bucket holds needs a full bucket (and empties it).
        """
        full = float(self.limit.count)
        amount = min(amount, full)
        now = self.clock()
        tokens, at = self._buckets.get(key, (full, now))
        tokens = min(full, tokens + (now - at) * self._rate)
        if tokens >= amount:
            self._buckets[key] = (tokens - amount, now)
            if len(self._buckets) > self.max_keys:
                self._forget_full(now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (amount - tokens) / self._rate

    def retry_after(self, key: str, amount: float = 1.0) -> int:
        """`take` as whole seconds for a Retry-After hint (0: allowed)."""
        wait = self.take(key, amount)
        return 0 if wait <= 0 else max(1, math.ceil(wait))

    def _forget_full(self, now: float) -> None:
        """Drop the buckets that have refilled: they hold nothing a new bucket would not."""
        full = float(self.limit.count)
        for key, (tokens, at) in list(self._buckets.items()):
            if tokens + (now - at) * self._rate >= full:
                del self._buckets[key]
