"""`health.backends.lastError`: the driver's text for admins, a category for everyone else.

The primary is a PostgreSQL URL on a closed port with a database name of its
own, so the fallback serves and the stored error names both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from code_hero.app import create_app
from code_hero.auth import AuthSettings, parse_api_keys
from code_hero.config import create_postgres_checkpointer
from code_hero.gateway import GatewaySettings
from code_hero.settings import AppSettings
from tests.graphql.clients import data, gql
from tests.graphql.conftest import SLOW_GRAPH, Server, running

DOWN = "postgresql://postgres@127.0.0.1:1/secret_db_name"
KEYS = "alice-0123456789abcdef=alice,root-0123456789abcdef=root:admin"
HEALTH = "{ health { status backends { role healthy lastError } } }"


def settings(auth: AuthSettings) -> AppSettings:
    checkpointer = create_postgres_checkpointer(DOWN, pool_timeout=1)
    return AppSettings(
        gateway=GatewaySettings(checkpointer=checkpointer, graphs={"slow": SLOW_GRAPH}),
        auth=auth,
        graphiql=False,
    )


async def primary_error(server: Server, key: str | None) -> str:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=20) as http:
        health = data(await gql(http, HEALTH))["health"]
    assert health["status"] == "DEGRADED"
    primary: dict[str, Any] = next(b for b in health["backends"] if b["role"] == "primary")
    assert primary["healthy"] is False
    error: str = primary["lastError"]
    return error


async def test_admins_see_the_text_users_a_category() -> None:
    async with running(create_app(settings(AuthSettings(api_keys=parse_api_keys(KEYS))))) as srv:
        full = await primary_error(srv, "root-0123456789abcdef")
        assert "127.0.0.1" in full and "Connection refused" in full
        assert await primary_error(srv, "alice-0123456789abcdef") == "connection refused"
        healthz = await srv.http.get("/healthz")  # no caller at all
        assert healthz.status_code == 200
        report = healthz.json()
        assert report["primary_checkpointer"]["last_error"] == "connection refused"
        primary = next(b for b in report["backends"] if b["role"] == "primary")
        assert primary["last_error"] == "connection refused"
        assert "127.0.0.1" not in healthz.text and "secret_db_name" not in healthz.text


async def test_open_mode_shows_categories(tmp_path: Path) -> None:
    """Without credentials nobody is known to be an administrator: anonymous sees categories."""
    async with running(create_app(settings(AuthSettings()))) as srv:
        assert await primary_error(srv, None) == "connection refused"
        assert "secret_db_name" not in (await srv.http.get("/healthz")).text
