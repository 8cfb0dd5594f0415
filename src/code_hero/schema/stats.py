"""Run statistics for dashboards: counts, durations, token usage, a time series."""

from __future__ import annotations

from datetime import datetime

import strawberry

from code_hero.persistence.stats import TimeBucket
from code_hero.schema.enums import RunStatus
from code_hero.schema.timeline import TokenUsage

__all__ = [
    "DurationStats",
    "GraphStats",
    "RunStats",
    "StatsBucket",
    "StatusCount",
    "TimeBucket",
]

strawberry.enum(TimeBucket, description="The width of a bucket of a series (UTC).")


@strawberry.type(description="How many runs have a status.")
class StatusCount:
    status: RunStatus
    count: int


@strawberry.type(description="Durations of finished runs (finishedAt - startedAt), in ms.")
class DurationStats:
    count: int
    mean: float
    p50: float = strawberry.field(description="Continuous median, as percentile_cont(0.5).")
    p95: float = strawberry.field(description="Continuous, as percentile_cont(0.95).")
    max: float


@strawberry.type(description="The runs of one graph.")
class GraphStats:
    graph: str
    runs: int
    errors: int
    duration_ms: DurationStats | None = strawberry.field(description="Null when none has finished.")


@strawberry.type(description="The runs created in one bucket of time.")
class StatsBucket:
    start: datetime
    runs: int
    by_status: list[StatusCount]
    usage: TokenUsage


@strawberry.type(description="Statistics of the runs a filter matches.")
class RunStats:
    runs: int
    by_status: list[StatusCount] = strawberry.field(description="Every status, zeros included.")
    by_graph: list[GraphStats]
    duration_ms: DurationStats | None = strawberry.field(description="Null when none has finished.")
    usage: TokenUsage
    series: list[StatsBucket] = strawberry.field(
        description="One bucket per `bucket` over the filter's created range (a missing "
        "bound: the matching runs' first or last), empty ones included; [] without "
        "`bucket`; more than 1,000 is BAD_USER_INPUT."
    )
