"""Group commit's queue, shared by the PostgreSQL and SQLite checkpoint savers.

A write with nothing queued or in flight goes out in its caller's task; the writes
that arrive meanwhile queue and go together in the next group, run by a task of its
own, one group in flight at a time and first in, first out (a thread's writes commit
in order). Each caller is answered once its group has committed. A caller cancelled
before its group was taken leaves nothing behind. How a write goes alone and how a
group commits are the saver's (`groupcommit.py`, `sqlitesaver.py`).
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, Generic, TypeVar

__all__ = ["GroupCommitter", "settle"]

W = TypeVar("W")


class GroupCommitter(Generic[W]):
    """The queue and its flusher; a subclass commits a write alone (`_write_alone`)
    and a group (`_commit`: settles every future of the group, or raises)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._queue: deque[tuple[W, asyncio.Future[Any]]] = deque()
        self._flusher: asyncio.Task[None] | None = None
        self._alone = False  # a write goes out in its caller's task (nothing else queued)

    def _group_limit(self) -> int:
        """Writes per group at most: bounds a transaction, not the queue."""
        raise NotImplementedError

    async def _write_alone(self, write: W) -> Any:
        raise NotImplementedError

    async def _commit(self, group: list[tuple[W, asyncio.Future[Any]]]) -> None:
        raise NotImplementedError

    async def _write(self, write: W) -> Any:
        """Commit `write`: in this task, alone, when no other write is queued or in
        flight (a lone thread's write pays no hop to the flusher and back); else in
        the next group. What its commit answers."""
        if self._flusher is not None or self._queue or self._alone:
            return await self._submit(write)
        self._alone = True
        try:
            return await self._write_alone(write)
        finally:
            self._alone = False
            if self._queue and self._flusher is None:  # they queued behind this one
                self._flusher = asyncio.get_running_loop().create_task(self._flush())

    def _submit(self, write: W) -> asyncio.Future[Any]:
        """Queue `write`; the future is done once its group has committed."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Any] = loop.create_future()
        self._queue.append((write, done))
        if self._flusher is None and not self._alone:
            self._flusher = loop.create_task(self._flush())
        return done

    async def _flush(self) -> None:
        """Commit what is queued, one group at a time, until the queue is empty."""
        stopped: BaseException = asyncio.CancelledError()
        try:
            while self._queue:
                group: list[tuple[W, asyncio.Future[Any]]] = []
                while self._queue and len(group) < self._group_limit():
                    write, done = self._queue.popleft()
                    if not done.done():  # else its caller was cancelled: drop it
                        group.append((write, done))
                if group:
                    await self._commit(group)
        except Exception as exc:  # the connection closed: its group has this error
            stopped = exc
        finally:
            self._flusher = None
            # The writes still queued will never get a group: their callers get the
            # error that stopped it (a failed write, not a cancelled one), or are
            # cancelled with this task (the loop closing).
            while self._queue:
                settle(self._queue.popleft()[1], stopped)


def settle(done: asyncio.Future[Any], outcome: Any) -> None:
    """Answer a write's caller: its result, its error, or cancelled."""
    if done.done():  # its caller was cancelled meanwhile
        return
    if isinstance(outcome, asyncio.CancelledError):
        done.cancel()
    elif isinstance(outcome, BaseException):
        done.set_exception(outcome)
    else:
        done.set_result(outcome)
