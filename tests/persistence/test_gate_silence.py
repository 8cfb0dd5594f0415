"""The copy-back's last part holds new writes: a database gone silent then must not hold
them for longer than one step of the copy.

The sync-back drains the outage journal while writes go on, then closes the write
gate for the last few entries and the switch. A database that stops answering (a
frozen host, a partition: no refusal, no reset) exactly then left every writer (a
run's checkpoint, a new run's admission) waiting at the gate while the drain waited
out its steps' bounds in turn and psycopg's own wait on each cancelled query: 12 s
here for a 2 s step, ~40 s with the defaults.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest

from code_hero.config import create_postgres_checkpointer
from code_hero.gateway import Gateway, GatewaySettings
from code_hero.persistence.records import RunStatus
from code_hero.persistence.recovery import step_timeout
from code_hero.runs.executor import StartRun
from tests.conftest import PG_ADMIN_URL
from tests.faults import BlackHoleProxy, until, with_port

pytestmark = pytest.mark.postgres
PG_PORT = urlsplit(PG_ADMIN_URL).port or 5432
SLOW_SPEC = f"{Path(__file__).parents[1] / 'runs' / 'slow_graph.py'}:graph"


async def test_a_database_silent_while_the_gate_is_closed_holds_writers_one_step_at_most(
    pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with BlackHoleProxy("127.0.0.1", PG_PORT) as proxy:
        config = create_postgres_checkpointer(
            with_port(pg_database, proxy.port), pool_timeout=1, health_check_interval=0.2
        )
        settings = GatewaySettings(checkpointer=config, graphs={"slow": SLOW_SPEC})
        async with Gateway(settings) as gw:
            router = gw.manager.router
            proxy.refuse()
            await until(lambda: _degraded(gw))
            runs = [
                await gw.start_run(StartRun(graph="slow", input={"steps": []}, wait=True))
                for _ in range(3)
            ]
            gated = asyncio.Event()
            closed = router.gate.closed

            @asynccontextmanager
            async def silenced() -> AsyncIterator[None]:
                async with closed():
                    if not gated.is_set():
                        proxy.black_hole()  # silent exactly as the gate shuts
                        gated.set()
                    yield

            monkeypatch.setattr(router.gate, "closed", silenced)
            proxy.forward()
            await asyncio.wait_for(gated.wait(), 30)
            # A run on a new thread needs the gate for its writes: held at most one step
            # (and its own steps), not each step of the drain plus psycopg's waits.
            during = await asyncio.wait_for(
                gw.start_run(StartRun(graph="slow", input={"steps": []}, wait=True)),
                4 * step_timeout(config),
            )
            assert during.status is RunStatus.SUCCESS
            proxy.forward()
            await until(lambda: _synced(gw))

    # Nothing was lost nor copied twice by the drain given up on.
    ids = [r.run_id for r in [*runs, during]]
    with psycopg.connect(pg_database) as conn:
        stored = conn.execute(
            "SELECT r.status, count(e.seq), count(DISTINCT e.seq), max(e.seq) "
            "FROM code_hero_runs r JOIN code_hero_run_events e USING (run_id) "
            "WHERE r.run_id = ANY(%s) GROUP BY r.run_id, r.status",
            (ids,),
        ).fetchall()
    assert len(stored) == len(ids)
    assert all(s == "SUCCESS" and n == d == top for s, n, d, top in stored), stored


async def _degraded(gw: Gateway) -> bool:
    return gw.manager.router.degraded_since is not None


async def _synced(gw: Gateway) -> bool:
    router = gw.manager.router
    return router.degraded_since is None and router.pending_sync == 0
