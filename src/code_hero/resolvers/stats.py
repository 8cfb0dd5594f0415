"""Run statistics: the filter as `runs` takes it, through the gateway."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from code_hero.persistence import stats
from code_hero.persistence.records import RunStatus
from code_hero.persistence.stats import TimeBucket
from code_hero.resolvers.filters import run_filter
from code_hero.resolvers.mapping import usage_of
from code_hero.schema import stats as st

if TYPE_CHECKING:
    from collections.abc import Mapping

    from strawberry import Info

    from code_hero.resolvers.context import Context
    from code_hero.schema import runs as r

__all__ = ["run_stats"]


async def run_stats(
    info: Info[Context, Any], flt: r.RunFilter | None, bucket: TimeBucket | None
) -> st.RunStats:
    """Counts, durations, usage and the series of the runs the caller may see."""
    ctx = info.context
    found = await ctx.gateway.run_stats(
        run_filter(flt), bucket=None if bucket is None else TimeBucket(bucket), caller=ctx.caller
    )
    return st.RunStats(
        runs=found.runs,
        by_status=_counts(found.by_status),
        by_graph=[
            st.GraphStats(
                graph=g.graph, runs=g.runs, errors=g.errors, duration_ms=_durations(g.duration_ms)
            )
            for g in found.by_graph
        ],
        duration_ms=_durations(found.duration_ms),
        usage=usage_of(found.usage.input_tokens, found.usage.output_tokens),
        series=[
            st.StatsBucket(
                start=b.start,
                runs=b.runs,
                by_status=_counts(b.by_status),
                usage=usage_of(b.usage.input_tokens, b.usage.output_tokens),
            )
            for b in found.series
        ],
    )


def _counts(by_status: Mapping[RunStatus, int]) -> list[st.StatusCount]:
    return [st.StatusCount(status=s, count=by_status.get(s, 0)) for s in RunStatus]


def _durations(found: stats.DurationStats | None) -> st.DurationStats | None:
    if found is None:
        return None
    return st.DurationStats(
        count=found.count, mean=found.mean, p50=found.p50, p95=found.p95, max=found.max
    )
