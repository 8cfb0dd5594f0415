"""Run statistics: what `runStats` answers, and the time buckets of its series.

The registry computes the numbers in SQL (`persistence/registry/stats.py`);
this module holds the records it returns and the plain arithmetic of buckets
(which starts a range has, how a bucket is keyed), shared by both dialects.

Durations are `finished_at - started_at` in milliseconds, of finished runs
(both times set). Percentiles are continuous, as PostgreSQL's
`percentile_cont`: over the n sorted durations d[0..n-1], the q-th is
d[lo] + (p - lo) * (d[lo + 1] - d[lo]) with p = q * (n - 1), lo = floor(p).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from code_hero.errors import BadInputError
from code_hero.persistence.records import RunStatus

__all__ = [
    "MAX_BUCKETS",
    "DurationStats",
    "GraphStats",
    "RunStats",
    "StatsBucket",
    "TimeBucket",
    "TokenUsage",
    "bucket_key",
    "bucket_starts",
]

MAX_BUCKETS = 1000  # a longer series is refused (BAD_USER_INPUT): ask for coarser buckets


class TimeBucket(StrEnum):
    MINUTE = "MINUTE"
    HOUR = "HOUR"
    DAY = "DAY"


# A bucket's key is the UTC start time as ISO text cut to its precision: both dialects
# group by the same text (SQLite: a prefix of the stored text; PostgreSQL: to_char).
KEY_LENGTH = {TimeBucket.MINUTE: 16, TimeBucket.HOUR: 13, TimeBucket.DAY: 10}
_STEP = {
    TimeBucket.MINUTE: timedelta(minutes=1),
    TimeBucket.HOUR: timedelta(hours=1),
    TimeBucket.DAY: timedelta(days=1),
}


@dataclass(frozen=True)
class TokenUsage:
    input_tokens: int = 0
    output_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        """Input and output together."""
        return self.input_tokens + self.output_tokens


@dataclass(frozen=True)
class DurationStats:
    """Of finished runs, in milliseconds."""

    count: int
    mean: float
    p50: float
    p95: float
    max: float


@dataclass(frozen=True)
class GraphStats:
    graph: str
    runs: int
    errors: int
    duration_ms: DurationStats | None


@dataclass(frozen=True)
class StatsBucket:
    start: datetime
    runs: int
    by_status: Mapping[RunStatus, int]
    usage: TokenUsage


@dataclass(frozen=True)
class RunStats:
    runs: int = 0
    by_status: Mapping[RunStatus, int] = field(default_factory=lambda: dict.fromkeys(RunStatus, 0))
    by_graph: Sequence[GraphStats] = ()
    duration_ms: DurationStats | None = None
    usage: TokenUsage = TokenUsage()
    series: Sequence[StatsBucket] = ()


def _floor(at: datetime, bucket: TimeBucket) -> datetime:
    at = at.astimezone(UTC)
    if bucket is TimeBucket.MINUTE:
        return at.replace(second=0, microsecond=0)
    if bucket is TimeBucket.HOUR:
        return at.replace(minute=0, second=0, microsecond=0)
    return at.replace(hour=0, minute=0, second=0, microsecond=0)


def bucket_key(start: datetime, bucket: TimeBucket) -> str:
    """The text key SQL groups a bucket's runs by (see KEY_LENGTH)."""
    return start.astimezone(UTC).isoformat()[: KEY_LENGTH[bucket]]


def bucket_starts(
    first: datetime, last: datetime, bucket: TimeBucket, *, last_exclusive: bool
) -> list[datetime]:
    """The start of every bucket from the one holding `first` to the one holding `last`
    (just before `last` when it is an exclusive bound); more than MAX_BUCKETS is
    BadInputError."""
    if last_exclusive:
        last = last - timedelta(microseconds=1)
    if last < first:
        return []
    lo, hi, step = _floor(first, bucket), _floor(last, bucket), _STEP[bucket]
    count = (hi - lo) // step + 1
    if count > MAX_BUCKETS:
        raise BadInputError(
            f"the series would have {count} {bucket.value} buckets, more than {MAX_BUCKETS}: "
            "narrow createdAfter/createdBefore or use a coarser bucket"
        )
    return [lo + i * step for i in range(count)]
