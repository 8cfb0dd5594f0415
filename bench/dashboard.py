"""What a dashboard asks of a large history, measured over GraphQL in one run.

    python bench/dashboard.py [--samples 40] [--skip-changes]

A `code-hero serve` process on a scratch PostgreSQL database holding 100,000
threads (10 users, four statuses, metadata, created over 30 days) and 100,000
runs (created over 7 days, every status, two graphs, durations and tokens),
loaded straight into the registry's tables and analysed. Then, median of
`--samples` calls each, over HTTP:

1. `totalCount` of filtered thread listings (the shapes a dashboard sends:
   by statuses, by a user and statuses, by metadata, by a created range, an
   `anyOf`); target: the slowest under 50 ms;
2. `runStats` over one day with HOUR buckets, for everyone (the admin view,
   ~14,000 runs) and for one user; target: the slowest under 100 ms;
3. (`bench/changes.py`) a page of 20 checkpoints with `changes` against the
   same page without; target: under 2x.

The same seed on SQLite is measured too and printed, without targets.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Replica, gql, median, scratch_database, target
from changes import changes_targets

N = 100_000
NOW = datetime.now(UTC).replace(microsecond=0)

PG_THREADS = """
INSERT INTO code_hero_threads (thread_id, user_id, status, metadata, created_at, updated_at)
SELECT 'dash-' || lpad(g::text, 7, '0'), 'user-' || (g %% 10),
       (ARRAY['IDLE', 'IDLE', 'ERROR', 'INTERRUPTED'])[g %% 4 + 1],
       jsonb_build_object('team', 'team-' || (g %% 7),
                          'env', CASE WHEN g %% 3 = 0 THEN 'prod' ELSE 'dev' END)
         || CASE WHEN g %% 5 = 0 THEN '{"flagged": true}'::jsonb ELSE '{}'::jsonb END,
       %(now)s - make_interval(secs => g * 26), %(now)s - make_interval(secs => g * 13)
FROM generate_series(1, %(n)s) AS g
"""
PG_RUNS = """
INSERT INTO code_hero_runs (run_id, thread_id, graph, status, metadata, config, user_id,
                            created_at, started_at, finished_at, input_tokens, output_tokens)
SELECT 'run-' || lpad(g::text, 7, '0'), 'dash-' || lpad(g::text, 7, '0'),
       CASE WHEN g %% 3 = 0 THEN 'other' ELSE 'default' END,
       (ARRAY['SUCCESS', 'SUCCESS', 'SUCCESS', 'ERROR', 'INTERRUPTED', 'CANCELLED'])[g %% 6 + 1],
       '{}', '{}', 'user-' || (g %% 10),
       %(now)s - make_interval(secs => g * 6),
       %(now)s - make_interval(secs => g * 6) + interval '5 ms',
       %(now)s - make_interval(secs => g * 6) + make_interval(secs => 0.05 + (g %% 97) / 10.0),
       g %% 500, g %% 300
FROM generate_series(1, %(n)s) AS g
"""

COUNT = "query($f: ThreadFilter) { threads(first: 20, filter: $f) { totalCount } }"
STATS = """query($f: RunFilter) { runStats(filter: $f, bucket: HOUR) {
  runs byStatus { status count } byGraph { graph runs errors durationMs { p95 } }
  durationMs { count mean p50 p95 max } usage { totalTokens }
  series { start runs usage { totalTokens } } } }"""


def iso(at: datetime) -> str:
    return at.isoformat()


COUNT_SHAPES: dict[str, dict[str, Any]] = {
    "statuses": {"statuses": ["ERROR", "INTERRUPTED"]},
    "user+statuses": {"userId": "user-2", "statuses": ["ERROR"]},
    "metadata": {"metadata": {"team": "team-2"}},
    "created range": {
        "createdAfter": iso(NOW - timedelta(days=10)),
        "createdBefore": iso(NOW - timedelta(days=3)),
    },
    "anyOf": {"anyOf": [{"status": "ERROR"}, {"metadata": {"flagged": True}}]},
}
DAY = {"createdAfter": iso(NOW - timedelta(days=2)), "createdBefore": iso(NOW - timedelta(days=1))}
STATS_SHAPES: dict[str, dict[str, Any]] = {
    "a day, everyone": DAY,
    "a day, one user": {**DAY, "userId": "user-4"},
}


def seed_sqlite(path: Path) -> None:
    """The same rows as the PostgreSQL seed, in SQLite's text forms."""
    conn = sqlite3.connect(path)

    def ts(seconds: float) -> str:
        return (NOW - timedelta(seconds=seconds)).isoformat(timespec="microseconds")

    statuses = ["IDLE", "IDLE", "ERROR", "INTERRUPTED"]
    run_statuses = ["SUCCESS", "SUCCESS", "SUCCESS", "ERROR", "INTERRUPTED", "CANCELLED"]
    threads = (
        (
            f"dash-{g:07d}",
            f"user-{g % 10}",
            statuses[g % 4],
            json.dumps(
                {"team": f"team-{g % 7}", "env": "prod" if g % 3 == 0 else "dev"}
                | ({"flagged": True} if g % 5 == 0 else {})
            ),
            ts(g * 26),
            ts(g * 13),
        )
        for g in range(1, N + 1)
    )
    conn.executemany(
        "INSERT INTO code_hero_threads (thread_id, user_id, status, metadata, created_at,"
        " updated_at) VALUES (?, ?, ?, ?, ?, ?)",
        threads,
    )
    runs = (
        (
            f"run-{g:07d}",
            f"dash-{g:07d}",
            "other" if g % 3 == 0 else "default",
            run_statuses[g % 6],
            f"user-{g % 10}",
            ts(g * 6),
            ts(g * 6 - 0.005),
            ts(g * 6 - 0.05 - (g % 97) / 10.0),
            g % 500,
            g % 300,
        )
        for g in range(1, N + 1)
    )
    conn.executemany(
        "INSERT INTO code_hero_runs (run_id, thread_id, graph, status, metadata, config, user_id,"
        " created_at, started_at, finished_at, input_tokens, output_tokens)"
        " VALUES (?, ?, ?, ?, '{}', '{}', ?, ?, ?, ?, ?, ?)",
        runs,
    )
    conn.commit()
    conn.execute("ANALYZE")
    conn.close()


async def seed_postgres(url: str) -> None:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(PG_THREADS, {"now": NOW, "n": N})
        await conn.execute(PG_RUNS, {"now": NOW, "n": N})
        await conn.execute("ANALYZE")


async def timed(
    client: httpx.AsyncClient, query: str, variables: dict[str, Any], samples: int
) -> tuple[float, dict[str, Any]]:
    """Median ms of the query, after two warm-up calls; and its last answer."""
    got = await gql(client, query, **variables)
    await gql(client, query, **variables)
    times = []
    for _ in range(samples):
        start = time.perf_counter()
        got = await gql(client, query, **variables)
        times.append((time.perf_counter() - start) * 1000)
    return median(times), got


async def measure(kind: str, url: str, folder: Path, samples: int) -> dict[str, float]:
    """Median ms of every shape on a server over this database (already seeded)."""
    replica = Replica(url, folder)
    result: dict[str, float] = {}
    try:
        await replica.ready()
        async with httpx.AsyncClient(base_url=replica.http, timeout=120) as client:
            for name, flt in COUNT_SHAPES.items():
                ms, got = await timed(client, COUNT, {"f": flt}, samples)
                result[f"count {name}"] = ms
                print(f"{kind}: totalCount, {name}: {ms:.2f} ms ({got['threads']['totalCount']})")
            for name, flt in STATS_SHAPES.items():
                ms, got = await timed(client, STATS, {"f": flt}, samples)
                result[f"stats {name}"] = ms
                stats = got["runStats"]
                print(
                    f"{kind}: runStats, {name}: {ms:.2f} ms "
                    f"({stats['runs']} runs, {len(stats['series'])} buckets)"
                )
    finally:
        replica.stop()
    return result


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument("--skip-changes", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        async with scratch_database("ch_dash") as url:
            setup = Replica(url, folder)  # creates the tables, then goes
            await setup.ready()
            setup.stop()
            print(f"seeding PostgreSQL with {N:,} threads and {N:,} runs ...", flush=True)
            await seed_postgres(url)
            pg = await measure("postgres", url, folder, args.samples)
        sqlite_url = f"sqlite:///{folder / 'dash.sqlite'}"
        setup = Replica(sqlite_url, folder)
        await setup.ready()
        setup.stop()
        print(f"seeding SQLite with {N:,} threads and {N:,} runs ...", flush=True)
        seed_sqlite(folder / "dash.sqlite")
        await measure("sqlite", sqlite_url, folder, args.samples)
    lines = []
    worst_count = max(v for k, v in pg.items() if k.startswith("count"))
    lines.append(
        target("dashboard_total_count_pg", worst_count, "< 50 ms", worst_count < 50, " ms")
    )
    worst_stats = max(v for k, v in pg.items() if k.startswith("stats"))
    lines.append(
        target("dashboard_run_stats_pg", worst_stats, "< 100 ms", worst_stats < 100, " ms")
    )
    if not args.skip_changes:
        lines += await changes_targets(args.samples)
    print()
    for line in lines:
        print(line)


if __name__ == "__main__":
    asyncio.run(main())
