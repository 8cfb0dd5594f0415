"""Review of audit2 (ae13296): `fail` marks the pool unreachable whichever slot serves.

The copy-back (`sync_back`) opens a fresh pool (`reconnect`), drains, then switches to
the primary with no probe in between. A probe that finds the database gone in that
window (a `probe_health` beside the health loop's copy-back, the database flapping)
now marks the fresh pool; the database comes back, the switch went on, and the
primary served from a pool that refused every checkout at once until the next probe:
the first call failed the router over again, with the database answering. The switch
now waits for a probe that answers.

On a PostgreSQL cluster of the test's own, stopped by the test.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from code_hero.config import create_postgres_checkpointer
from code_hero.persistence.manager import EnhancedCheckpointerManager
from tests.faults import until
from tests.replicas.test_durable_fallback import OwnPostgres, own_pg

pytestmark = pytest.mark.postgres

__all__ = ["own_pg"]


async def test_a_probe_failing_before_the_switch_back_leaves_no_mark_on_the_pool_that_serves(
    own_pg: OwnPostgres, tmp_path: Path
) -> None:
    config = create_postgres_checkpointer(
        own_pg.url,
        fallback_path=str(tmp_path / "fb.sqlite"),
        health_check_interval=60.0,
        pool_timeout=10.0,
    )
    async with EnhancedCheckpointerManager(config) as manager:
        router = manager.router
        primary = router.primary
        backend = primary.backend
        assert backend is not None
        own_pg.stop()
        assert not await router.probe(primary)
        assert router.active_slot is not primary
        own_pg.start()
        assert await router.probe(primary)
        old = backend.pool  # type: ignore[attr-defined]
        async with router.gate.write():  # a write in flight: the switch waits for it
            recovering = asyncio.ensure_future(router.recover())

            async def reconnected() -> bool:  # the copy-back's fresh pool is open
                return backend.pool is not old  # type: ignore[attr-defined,no-any-return]

            await until(reconnected)
            own_pg.stop()  # the database flaps before the switch
            assert not await router.probe(primary)
            own_pg.start()
        # The switch waits for a probe: the pool the primary would serve from was
        # found unreachable since the reconnect (before: switched, and failed over
        # again at the first call, with the database answering).
        assert not await recovering
        assert router.active_slot is not primary
        assert await router.probe(primary)
        assert await router.recover()
        assert router.active_slot is primary
        # The database answers: a call goes to it, and the primary keeps serving.
        assert await manager.registry.get_thread("absent") is None
        assert router.active_slot is primary, f"failed over again: {primary.last_error}"
