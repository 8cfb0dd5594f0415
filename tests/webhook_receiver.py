"""A real HTTP receiver of webhooks on 127.0.0.1, for tests and the bench.

`answers[path]` is the list of statuses the next requests to `path` get (then
200); a 3xx answer carries `location: /elsewhere`. Every request is kept, in
order, with its headers and body; `arrivals` wakes a waiter on each.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

__all__ = ["Received", "Receiver", "receiver"]


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.time() on arrival


@dataclass
class Receiver:
    url: str = ""
    answers: dict[str, list[int]] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    arrivals: asyncio.Condition = field(default_factory=asyncio.Condition)

    def on(self, path: str) -> list[Received]:
        """The requests to `path`, in order."""
        return [r for r in self.received if r.path == path]

    async def wait_for(self, path: str, count: int = 1, seconds: float = 20) -> list[Received]:
        """Wait (bounded) until `count` requests reached `path`."""
        async with asyncio.timeout(seconds), self.arrivals:
            await self.arrivals.wait_for(lambda: len(self.on(path)) >= count)
        return self.on(path)

    async def _handle(self, request: Request) -> Response:
        path = request.url.path
        self.received.append(
            Received(path, dict(request.headers), await request.body(), time.time())
        )
        async with self.arrivals:
            self.arrivals.notify_all()
        queue = self.answers.get(path) or []
        status = queue.pop(0) if queue else 200
        headers = {"location": "/elsewhere"} if 300 <= status < 400 else None
        return Response(status_code=status, headers=headers)


@asynccontextmanager
async def receiver() -> AsyncIterator[Receiver]:
    """A receiver served by uvicorn on a free loopback port until the block ends."""
    state = Receiver()
    app = Starlette(routes=[Route("/{path:path}", state._handle, methods=["POST", "GET"])])
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="off", log_level="warning")
    )
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.005)
        state.url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
        yield state
    finally:
        server.should_exit = True
        await task
