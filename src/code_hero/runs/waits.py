"""The waits with no limit (`startRun(wait)`) begun through one server, and its stop.

uvicorn runs the lifespan's shutdown (the executor's drain) only once every open
request has been answered: a `startRun(wait)` over HTTP held that until its run
ended, however long, past an orchestrator's SIGKILL. And as it begins to stop it
closes every WebSocket (1012), so one over a socket was cut with its run untold.
Once the server begins to stop (`stop`), each of its waits is answered at once,
UNAVAILABLE naming its run, and so is each one begun from then on; `answered` is
when the tasks that carry those answers have ended (their answers sent), for the
server to close its sockets only after.

One per app (`create_app`): apps that share a gateway each stop their own waits.
The executor keeps one for the waits begun without one (`Gateway.stop_waiting`).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Iterator
from typing import Any

__all__ = ["Waits"]


class Waits:
    """The waits with no limit begun through one server; `stop` answers them."""

    def __init__(self) -> None:
        # Once stopped: the retryAfter its waits are answered with (the shutdown's grace).
        self.retry_after: int | None = None
        self._going: dict[asyncio.Timeout, asyncio.Task[Any] | None] = {}
        # The tasks of starts with a wait still admitting their run (`starting`).
        self._starting: set[asyncio.Task[Any]] = set()
        self._answering: set[asyncio.Task[Any]] = set()
        self._stopped = asyncio.Event()

    def stop(self, retry_after: float) -> None:
        """Answer every wait now, and each one begun from now on at once: the server
        begins to stop. `retry_after`: the shutdown's grace, by when the run has ended
        here or been released to another executor."""
        if self.retry_after is not None:
            return
        self.retry_after = max(1, math.ceil(retry_after))
        now = asyncio.get_running_loop().time()
        for timeout, task in self._going.items():
            timeout.reschedule(now)
            if task is not None:
                self._answering.add(task)
        # Still admitting their run: each is answered at once when it reaches its wait
        # (or fails before), and its answer goes out before the sockets close too.
        self._answering.update(self._starting)
        self._stopped.set()

    def answer_now(self) -> int | None:
        """The retryAfter a wait begun now is answered with at once (stopped), else None."""
        if self.retry_after is not None and (task := asyncio.current_task()) is not None:
            self._answering.add(task)
        return self.retry_after

    @contextlib.contextmanager
    def starting(self) -> Iterator[None]:
        """Around a start with a wait, from its first step: a stop while it admits its
        run (before its wait is `held`) has `answered` follow its task too."""
        task = asyncio.current_task()
        if task is None:
            yield
            return
        self._starting.add(task)
        try:
            yield
        finally:
            self._starting.discard(task)

    @contextlib.contextmanager
    def held(self, timeout: asyncio.Timeout) -> Iterator[None]:
        """Around a wait: `stop` expires its `timeout`."""
        self._going[timeout] = asyncio.current_task()
        try:
            yield
        finally:
            del self._going[timeout]

    async def answered(self) -> None:
        """Once stopped: when every task answered by the stop has ended (its answer
        sent). Unbounded: a client that does not read may hold its answer's send."""
        await self._stopped.wait()
        me = asyncio.current_task()
        while pending := {t for t in self._answering if not t.done() and t is not me}:
            self._answering = pending
            await asyncio.wait(pending)
