"""`Coalescer`: calls that arrive while one is in flight run together as the next one.

The registry's thread touches (one small upsert and one commit per checkpoint of
a new thread) took about a tenth of the manager's event loop with 16 threads
running at once (py-spy, bench/checkpoints.py); `touch_threads` already takes
many threads at once. Callers wait for the call that carries their item, and
get its error. When that error is not shared by all (`shared` says which are,
say the database being unreachable), each item is tried again on its own, so
only a bad item's caller fails. The calls run in a task of their own: a
caller cancelled meanwhile only stops waiting.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

__all__ = ["Coalescer"]

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")
_MAX_ITEMS = 256  # in one call: a bound on one statement's size


class Coalescer(Generic[K, T]):
    """Runs `run(key, items)` for queued items, one call at a time, items of one key together."""

    def __init__(
        self,
        run: Callable[[K, list[T]], Awaitable[None]],
        *,
        shared: Callable[[BaseException], bool],
    ) -> None:
        self._run = run
        self._shared = shared
        self._queue: deque[tuple[K, T, asyncio.Future[None]]] = deque()
        self._flusher: asyncio.Task[None] | None = None
        self.calls = 0  # calls made (tests)

    async def submit(self, key: K, item: T) -> None:
        """Return once a call carrying `item` has succeeded; raise its error otherwise."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._queue.append((key, item, done))
        if self._flusher is None:
            self._flusher = loop.create_task(self._flush())
        await done

    async def _flush(self) -> None:
        try:
            while self._queue:
                key = self._queue[0][0]
                batch: list[tuple[T, asyncio.Future[None]]] = []
                rest: deque[tuple[K, T, asyncio.Future[None]]] = deque()
                while self._queue:
                    entry = self._queue.popleft()
                    if entry[2].done():  # its caller was cancelled: drop it
                        continue
                    if entry[0] == key and len(batch) < _MAX_ITEMS:
                        batch.append((entry[1], entry[2]))
                    else:
                        rest.append(entry)
                self._queue.extendleft(reversed(rest))
                if batch:
                    await self._call(key, batch)
        finally:
            self._flusher = None
            while self._queue:  # only when this task is cancelled (the loop closing)
                self._queue.popleft()[2].cancel()

    async def _call(self, key: K, batch: list[tuple[T, asyncio.Future[None]]]) -> None:
        try:
            await self._run(key, [item for item, _ in batch])
        except asyncio.CancelledError:
            for _, done in batch:
                _settle(done, None, cancelled=True)
            raise
        except Exception as exc:
            if len(batch) == 1 or self._shared(exc):
                for _, done in batch:
                    _settle(done, exc)
                return
            for i, (item, done) in enumerate(batch):
                try:
                    await self._run(key, [item])
                except asyncio.CancelledError:
                    for _, rest in batch[i:]:
                        _settle(rest, None, cancelled=True)
                    raise
                except Exception as one:
                    if self._shared(one):  # the database went away meanwhile: stop there
                        for _, rest in batch[i:]:
                            _settle(rest, one)
                        return
                    _settle(done, one)
                    continue
                finally:
                    self.calls += 1
                _settle(done, None)
            return
        finally:
            self.calls += 1
        for _, done in batch:
            _settle(done, None)


def _settle(done: asyncio.Future[None], exc: Exception | None, *, cancelled: bool = False) -> None:
    if done.done():
        return
    if cancelled:
        done.cancel()
    elif exc is not None:
        done.set_exception(exc)
    else:
        done.set_result(None)
