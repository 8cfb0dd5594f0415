"""A real uvicorn server on 127.0.0.1 (port 0) around the real app, per test.

`server` runs on each backend (SQLite file, fresh PostgreSQL database);
`start` starts one with the settings a test needs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette

from code_hero.app import create_app
from code_hero.cli.http_protocol import OneWriteProtocol
from code_hero.config import (
    CheckpointerConfig,
    create_postgres_checkpointer,
    create_sqlite_checkpointer,
)
from code_hero.gateway import Gateway, GatewaySettings
from code_hero.settings import AppSettings, Limits

SLOW_GRAPH = f"{Path(__file__).with_name('slow_graph.py')}:graph"


@dataclass
class Server:
    """A running app: its URLs and an HTTP client bound to it."""

    app: Starlette
    url: str
    ws_url: str
    http: httpx.AsyncClient

    @property
    def gateway(self) -> Gateway:
        gateway: Gateway = self.app.state.gateway
        return gateway


@asynccontextmanager
async def running(app: Starlette) -> AsyncIterator[Server]:
    """Serve `app` with uvicorn in this event loop until the block ends."""
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        lifespan="on",
        log_level="warning",
        http=OneWriteProtocol,  # as `code-hero serve`
        ws="websockets-sansio",
        timeout_graceful_shutdown=3,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("uvicorn stopped before it started")
            await asyncio.sleep(0.005)
        port = server.servers[0].sockets[0].getsockname()[1]
        url = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=url, timeout=20) as http:
            yield Server(app, url, f"ws://127.0.0.1:{port}/graphql", http)
    finally:
        server.should_exit = True
        await task


def checkpointer_for(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> CheckpointerConfig:
    if kind == "sqlite":
        return create_sqlite_checkpointer(str(tmp_path / "gateway.sqlite"))
    url = request.getfixturevalue("pg_database")
    return create_postgres_checkpointer(url, pool_min_size=1, pool_max_size=4, saver_instances=2)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest) -> str:
    """Each behaviour test runs on SQLite and on PostgreSQL."""
    return str(request.param)


@pytest.fixture
def gateway_settings(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> GatewaySettings:
    return GatewaySettings(
        checkpointer=checkpointer_for(backend, request, tmp_path), graphs={"slow": SLOW_GRAPH}
    )


@pytest.fixture
async def server(gateway_settings: GatewaySettings) -> AsyncIterator[Server]:
    """The app with default limits on the parametrized backend."""
    async with running(create_app(AppSettings(gateway=gateway_settings))) as srv:
        yield srv


Starter = Callable[..., AbstractAsyncContextManager[Server]]


@pytest.fixture
def start(tmp_path: Path) -> Starter:
    """Start an app on SQLite with given limits and settings: `async with start(...) as srv`."""

    def starter(
        limits: Limits | None = None,
        *,
        gateway: Gateway | None = None,
        gateway_fields: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> AbstractAsyncContextManager[Server]:
        settings = AppSettings(
            gateway=GatewaySettings(
                checkpointer=create_sqlite_checkpointer(str(tmp_path / "app.sqlite")),
                graphs={"slow": SLOW_GRAPH},
                **(gateway_fields or {}),
            ),
            limits=limits or Limits(),
            **options,
        )
        return running(create_app(settings, gateway=gateway))

    return starter


@pytest.fixture
def server_errors(caplog: pytest.LogCaptureFixture) -> Iterator[Callable[[], list[str]]]:
    """What the server logged at ERROR or above so far, uvicorn's "Exception in ASGI
    application" included (uvicorn's loggers do not propagate to the root's capture)."""
    uvicorn_error = logging.getLogger("uvicorn.error")
    uvicorn_error.addHandler(caplog.handler)
    try:
        yield lambda: [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    finally:
        uvicorn_error.removeHandler(caplog.handler)
