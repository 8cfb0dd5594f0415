"""`run_stats`: counts, durations, token usage and a time series of runs, in SQL.

Three queries on the listing's filter (`_run_where`, the owner's condition
among them), each one pass over the matching runs, which the created_at index
finds for a time range:

- totals per (graph, status): counts, token sums and the created range;
- durations per graph and overall: count, mean, max and continuous p50/p95
  (PostgreSQL: `percentile_cont`; SQLite has no percentile function, so
  window functions number the sorted durations and the two neighbours of each
  percentile's position are interpolated in SQL, the same definition);
- with a bucket, per (bucket, status): counts and token sums; the buckets no
  run fell in are filled in here (at most MAX_BUCKETS).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, ClassVar

from code_hero.persistence.records import RunFilter, RunStatus
from code_hero.persistence.registry.dialect import Dialect, Row
from code_hero.persistence.stats import (
    KEY_LENGTH,
    DurationStats,
    GraphStats,
    RunStats,
    StatsBucket,
    TimeBucket,
    TokenUsage,
    bucket_key,
    bucket_starts,
)

__all__ = ["RunStatsQueries"]

_FINISHED = "started_at IS NOT NULL AND finished_at IS NOT NULL"

# SQLite: the q-th continuous percentile of a group from its numbered durations (i from
# 0, n of them): d[lo] + (p - lo) * (d[lo + 1] - d[lo]), p = q * (n - 1), lo = floor(p).
_SQLITE_PERCENTILE = """
    SELECT g, n, mean, mx,
        p50lo + (0.5 * (n - 1) - CAST(0.5 * (n - 1) AS INTEGER))
            * (COALESCE(p50hi, p50lo) - p50lo) AS p50,
        p95lo + (0.95 * (n - 1) - CAST(0.95 * (n - 1) AS INTEGER))
            * (COALESCE(p95hi, p95lo) - p95lo) AS p95
    FROM (
        SELECT g, n, AVG(ms) AS mean, MAX(ms) AS mx,
            MAX(CASE WHEN i = CAST(0.5 * (n - 1) AS INTEGER) THEN ms END) AS p50lo,
            MAX(CASE WHEN i = CAST(0.5 * (n - 1) AS INTEGER) + 1 THEN ms END) AS p50hi,
            MAX(CASE WHEN i = CAST(0.95 * (n - 1) AS INTEGER) THEN ms END) AS p95lo,
            MAX(CASE WHEN i = CAST(0.95 * (n - 1) AS INTEGER) + 1 THEN ms END) AS p95hi
        FROM (
            SELECT g, ms, row_number() OVER (PARTITION BY g ORDER BY ms) - 1 AS i,
                count(*) OVER (PARTITION BY g) AS n
            FROM ({durations}) AS d
        ) AS numbered
        GROUP BY g, n
    ) AS neighbours
"""

_PG_PERCENTILE = """
    SELECT g, count(*) AS n, avg(ms) AS mean, max(ms) AS mx,
        percentile_cont(0.5) WITHIN GROUP (ORDER BY ms) AS p50,
        percentile_cont(0.95) WITHIN GROUP (ORDER BY ms) AS p95
    FROM ({durations}) AS d
    GROUP BY g
"""


class RunStatsQueries(Dialect):
    """The statistics of runs; a dialect supplies the expressions below."""

    # The duration of a finished run in milliseconds, from started_at and finished_at.
    duration_ms_sql: ClassVar[str]
    # created_at as UTC ISO text cut to {length} characters (a bucket's key).
    bucket_key_sql: ClassVar[str]
    has_percentile_cont: ClassVar[bool] = False

    def _run_where(self, flt: RunFilter) -> tuple[list[str], list[Any]]:
        raise NotImplementedError  # SqlRegistry's: the listing's conditions

    def _only_live_runs(self, clauses: list[str], params: list[Any]) -> None:
        raise NotImplementedError  # ThreadLifecycle's: runs of threads not expired

    async def run_stats(self, flt: RunFilter, bucket: TimeBucket | None = None) -> RunStats:
        clauses, params = self._run_where(flt)
        self._only_live_runs(clauses, params)  # as the runs listing and its count do
        if bucket is not None and flt.created_after and flt.created_before:
            # Refused before any query when both bounds say it is too long.
            bucket_starts(flt.created_after, flt.created_before, bucket, last_exclusive=True)
        where = f"({' AND '.join(clauses)})" if clauses else "TRUE"
        async with self._session() as s:
            totals = await s.fetch(
                "SELECT graph, status, count(*) AS n, SUM(input_tokens) AS i, "
                "SUM(output_tokens) AS o, MIN(created_at) AS lo, MAX(created_at) AS hi "
                f"FROM code_hero_runs WHERE {where} GROUP BY graph, status",
                params,
            )
            if not totals:  # the series still spans a range both bounds give
                if bucket is None or not (flt.created_after and flt.created_before):
                    return RunStats()
                return RunStats(series=self._series(flt, bucket, [], []))
            finished = f"FROM code_hero_runs WHERE {where} AND {_FINISHED}"
            percentile = _PG_PERCENTILE if self.has_percentile_cont else _SQLITE_PERCENTILE
            per_graph = await s.fetch(
                percentile.format(
                    durations=f"SELECT graph AS g, {self.duration_ms_sql} AS ms {finished}"
                ),
                params,
            )
            overall = await s.fetch(
                percentile.format(
                    durations=f"SELECT '' AS g, {self.duration_ms_sql} AS ms {finished}"
                ),
                params,
            )
            series: list[Row] = []
            if bucket is not None:
                key = self.bucket_key_sql.format(length=KEY_LENGTH[bucket])
                series = await s.fetch(
                    f"SELECT {key} AS k, status, count(*) AS n, SUM(input_tokens) AS i, "
                    f"SUM(output_tokens) AS o FROM code_hero_runs WHERE {where} "
                    "GROUP BY 1, 2",
                    params,
                )
        return self._stats(flt, bucket, totals, per_graph, overall, series)

    def _stats(
        self,
        flt: RunFilter,
        bucket: TimeBucket | None,
        totals: Sequence[Row],
        per_graph: Sequence[Row],
        overall: Sequence[Row],
        series: Sequence[Row],
    ) -> RunStats:
        by_status = dict.fromkeys(RunStatus, 0)
        graphs: dict[str, list[int]] = {}  # graph -> [runs, errors]
        usage_in = usage_out = 0
        for row in totals:
            status, n = RunStatus(row["status"]), int(row["n"])
            by_status[status] += n
            counts = graphs.setdefault(row["graph"], [0, 0])
            counts[0] += n
            counts[1] += n if status is RunStatus.ERROR else 0
            usage_in += int(row["i"] or 0)
            usage_out += int(row["o"] or 0)
        durations = {row["g"]: _durations(row) for row in per_graph}
        return RunStats(
            runs=sum(by_status.values()),
            by_status=by_status,
            by_graph=[
                GraphStats(graph=g, runs=c[0], errors=c[1], duration_ms=durations.get(g))
                for g, c in sorted(graphs.items())
            ],
            duration_ms=_durations(overall[0]) if overall else None,
            usage=TokenUsage(usage_in, usage_out),
            series=[] if bucket is None else self._series(flt, bucket, totals, series),
        )

    def _series(
        self, flt: RunFilter, bucket: TimeBucket, totals: Sequence[Row], rows: Sequence[Row]
    ) -> list[StatsBucket]:
        first: datetime = flt.created_after or min(self._from_ts(r["lo"]) for r in totals)
        last: datetime = flt.created_before or max(self._from_ts(r["hi"]) for r in totals)
        starts = bucket_starts(first, last, bucket, last_exclusive=flt.created_before is not None)
        found: dict[str, list[Row]] = {}
        for row in rows:
            found.setdefault(str(row["k"]), []).append(row)
        out = []
        for start in starts:
            by_status = dict.fromkeys(RunStatus, 0)
            usage_in = usage_out = 0
            for row in found.get(bucket_key(start, bucket), ()):
                by_status[RunStatus(row["status"])] += int(row["n"])
                usage_in += int(row["i"] or 0)
                usage_out += int(row["o"] or 0)
            out.append(
                StatsBucket(
                    start=start,
                    runs=sum(by_status.values()),
                    by_status=by_status,
                    usage=TokenUsage(usage_in, usage_out),
                )
            )
        return out


def _durations(row: Row) -> DurationStats | None:
    n = int(row["n"] or 0)
    if not n:
        return None
    return DurationStats(
        count=n,
        mean=float(row["mean"]),
        p50=float(row["p50"]),
        p95=float(row["p95"]),
        max=float(row["mx"]),
    )
