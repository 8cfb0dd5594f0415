"""A gateway on PostgreSQL through a proxy a test cuts and restores (`tests.faults`),
and the two states an outage test waits for."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from code_hero.config import create_postgres_checkpointer
from code_hero.gateway import Gateway, GatewaySettings
from code_hero.runs.webhooks import WebhookSettings
from tests.conftest import PG_ADMIN_URL
from tests.faults import BlackHoleProxy, on_the_primary, with_port

__all__ = ["NUL_SPEC", "SLOW_SPEC", "behind_a_proxy", "degraded", "synced"]

P = TypeVar("P", bound=BlackHoleProxy)
PG_PORT = urlsplit(PG_ADMIN_URL).port or 5432
SLOW_SPEC = f"{Path(__file__).parents[1] / 'runs' / 'slow_graph.py'}:graph"
NUL_SPEC = f"{Path(__file__).parents[1] / 'runs' / 'nul_graph.py'}:graph"


@asynccontextmanager
async def behind_a_proxy(
    pg_database: str,
    *,
    lease_seconds: float | None = None,
    webhooks: WebhookSettings | None = None,
    proxy_class: type[P] = BlackHoleProxy,  # type: ignore[assignment]
    **config: Any,
) -> AsyncIterator[tuple[Gateway, P]]:
    """A gateway on PostgreSQL through a proxy the test cuts and restores (of
    `proxy_class`), serving the `slow` and `nul` graphs (`config`: of the checkpointer;
    by default a 1 s pool timeout and a probe every 0.2 s), serving from the primary
    when it is yielded."""
    async with proxy_class("127.0.0.1", PG_PORT) as proxy:
        options = {"pool_timeout": 1, "health_check_interval": 0.2, **config}
        checkpointer = create_postgres_checkpointer(with_port(pg_database, proxy.port), **options)
        extra: dict[str, Any] = {} if lease_seconds is None else {"lease_seconds": lease_seconds}
        if webhooks is not None:
            extra["webhooks"] = webhooks
        graphs = {"slow": SLOW_SPEC, "nul": NUL_SPEC}
        settings = GatewaySettings(checkpointer=checkpointer, graphs=graphs, **extra)
        async with Gateway(settings) as gw:
            await on_the_primary(gw.manager)  # under load its open may time out first
            yield gw, proxy


async def degraded(gw: Gateway) -> bool:
    """Serving from a fallback."""
    return gw.manager.router.degraded_since is not None


async def synced(gw: Gateway) -> bool:
    """Back on the primary, nothing left to copy back."""
    router = gw.manager.router
    return router.degraded_since is None and router.pending_sync == 0
