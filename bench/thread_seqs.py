"""A thread subscription's look at its thread's runs: every run ("before", ec4a8fa)
against the runs not finished or created since a cutoff ("after"), side by side in one
run on PostgreSQL.

    python bench/thread_seqs.py [--rounds 6] [--calls 50] [--runs 5000] [--events 20]

Fills one thread of a scratch database (migrated as `code-hero serve` does) with
`--runs` runs of `--events` events each, all finished but the newest, then calls the
registry's `thread_seqs` in rounds that alternate before (no `since`) and after
(`since` a minute ago; which goes first alternates too). Per call: this process's CPU
(`getrusage`) and the server's shared buffers and execution time of the query
(`EXPLAIN (ANALYZE, BUFFERS)`), and how many runs the answer holds (what a
subscriber keeps for its whole life). Medians of the rounds, and the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import scratch_database

from code_hero.config import create_postgres_checkpointer
from code_hero.gateway import Gateway, GatewaySettings
from code_hero.persistence import clock
from code_hero.persistence.registry.postgres import PostgresRegistry

QUERY = (
    "WITH thread_runs AS MATERIALIZED (SELECT run_id, status, created_at "
    "FROM code_hero_runs WHERE thread_id = 't1') SELECT t.run_id, (SELECT MAX(e.seq) "
    "FROM code_hero_run_events e WHERE e.run_id = t.run_id) AS seq FROM thread_runs t "
    "{cond}ORDER BY t.created_at, t.run_id"
)
CONDS = {
    "before": "",
    "after": "WHERE t.status IN ('PENDING', 'RUNNING') "
    "OR t.created_at >= now() - interval '60 seconds' ",
}


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--runs", type=int, default=5000)
    parser.add_argument("--events", type=int, default=20)
    args = parser.parse_args()
    async with scratch_database("ch_tseqs") as url:
        settings = GatewaySettings(checkpointer=create_postgres_checkpointer(url), graphs={})
        async with Gateway(settings) as gateway:
            registry = gateway.manager.registry._primary()
            assert isinstance(registry, PostgresRegistry)
            async with registry.pool.connection() as conn:
                await conn.execute(
                    "INSERT INTO code_hero_threads (thread_id, status, created_at, updated_at)"
                    " VALUES ('t1', 'BUSY', now(), now())"
                )
                await conn.execute(
                    "INSERT INTO code_hero_runs (run_id, thread_id, graph, status, created_at, "
                    "finished_at) SELECT 'r' || i, 't1', 'g', CASE WHEN i = %(n)s THEN "
                    "'RUNNING' ELSE 'SUCCESS' END, now() - interval '1 day' + i * interval "
                    "'1 second', CASE WHEN i = %(n)s THEN NULL ELSE now() END "
                    "FROM generate_series(1, %(n)s) i",
                    {"n": args.runs},
                )
                await conn.execute(
                    "INSERT INTO code_hero_run_events (run_id, seq, thread_id, type, payload, "
                    "at) SELECT 'r' || i, s, 't1', 'token', '{}'::jsonb, now() FROM "
                    "generate_series(1, %s) i, generate_series(1, %s) s",
                    (args.runs, args.events),
                )
                await conn.execute("ANALYZE code_hero_runs")
                await conn.execute("ANALYZE code_hero_run_events")
            ways = {
                "before": lambda: registry.thread_seqs("t1"),
                "after": lambda: registry.thread_seqs(
                    "t1", since=clock.now() - timedelta(seconds=60)
                ),
            }
            results: dict[str, dict[str, list[float]]] = {
                w: {"cpu": [], "buffers": [], "exec": [], "held": []} for w in ways
            }
            for n in range(args.rounds):
                for way in list(ways)[:: 1 if n % 2 == 0 else -1]:
                    before = cpu()
                    for _ in range(args.calls):
                        held = await ways[way]()
                    results[way]["cpu"].append((cpu() - before) / args.calls * 1e3)
                    results[way]["held"].append(len(held))
                    async with registry.pool.connection() as conn:
                        cur = await conn.execute(
                            "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) "
                            + QUERY.format(cond=CONDS[way])
                        )
                        plan: Any = (await cur.fetchone())["QUERY PLAN"][0]
                    top = plan["Plan"]
                    buffers = top.get("Shared Hit Blocks", 0) + top.get("Shared Read Blocks", 0)
                    results[way]["buffers"].append(buffers)
                    results[way]["exec"].append(plan["Execution Time"])
    med = {w: {k: statistics.median(v) for k, v in r.items()} for w, r in results.items()}
    for way, m in med.items():
        print(
            f"{way:6} held {m['held']:.0f} runs, client CPU {m['cpu']:.2f} ms/call, "
            f"server {m['buffers']:.0f} buffers, {m['exec']:.2f} ms executed"
        )
    b, a = med["before"], med["after"]
    print(
        f"ratios before/after: client CPU {b['cpu'] / a['cpu']:.1f}x, buffers "
        f"{b['buffers'] / a['buffers']:.1f}x, executed {b['exec'] / a['exec']:.1f}x"
    )


if __name__ == "__main__":
    asyncio.run(main())
