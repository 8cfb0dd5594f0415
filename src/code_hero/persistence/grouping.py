"""Group commit's queue, shared by the PostgreSQL and SQLite checkpoint savers.

A write with nothing queued or in flight goes out in its caller's task; the writes
that arrive meanwhile queue and go together in the next group, run by a task of its
own, first in, first out. Each caller is answered once its group has committed. A
caller cancelled before its group was taken leaves nothing behind. How a write goes
alone and how a group commits are the saver's (`groupcommit.py`, `sqlitesaver.py`).

A saver with one lane (SQLite: one connection) has one group in flight at a time. A
saver with more (PostgreSQL: a pool) starts the next group while one is in flight,
up to one a lane, each of the writes whose thread has none in flight: a thread's
writes still commit in the order they came, one group after another, while other
threads' writes need not wait for a transaction that carries none of theirs (issue
15: with one lane, a checkpoint waited for the group in flight and then for its
own, and 16 concurrent runs spent most of their time so).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Hashable
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
        self._alone_thread: Hashable = None
        # Set while the flusher of several lanes waits: a write queued, or the lone
        # write ending, wakes it to start a group if it can.
        self._wake: asyncio.Future[None] | None = None

    def _group_limit(self) -> int:
        """Writes per group at most: bounds a transaction, not the queue."""
        raise NotImplementedError

    def _lanes(self) -> int:
        """Groups (a lone write counts as one) in flight at once at most."""
        return 1

    def _thread_of(self, write: W) -> Hashable:
        """The thread of a write: two groups in flight never carry writes of one thread
        (read with more than one lane only)."""
        return None

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
        self._alone_thread = self._thread_of(write) if self._lanes() > 1 else None
        try:
            return await self._write_alone(write)
        finally:
            self._alone = False
            if self._queue and self._flusher is None:  # they queued behind this one
                self._flusher = asyncio.get_running_loop().create_task(self._flush())
            else:
                self._poke()

    def _submit(self, write: W) -> asyncio.Future[Any]:
        """Queue `write`; the future is done once its group has committed."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Any] = loop.create_future()
        self._queue.append((write, done))
        if self._flusher is None and (not self._alone or self._lanes() > 1):
            self._flusher = loop.create_task(self._flush())
        else:
            self._poke()
        return done

    def _poke(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    def _take(
        self, busy: set[Hashable]
    ) -> tuple[list[tuple[W, asyncio.Future[Any]]], set[Hashable]]:
        """The next group: queued writes in order, but none of a thread in `busy` (those
        stay queued, in order); and the threads it carries."""
        group: list[tuple[W, asyncio.Future[Any]]] = []
        threads: set[Hashable] = set()
        held: list[tuple[W, asyncio.Future[Any]]] = []
        while self._queue and len(group) < self._group_limit():
            write, done = self._queue.popleft()
            if done.done():  # its caller was cancelled: dropped
                continue
            thread = self._thread_of(write) if busy else None
            if busy and thread in busy:
                held.append((write, done))
                continue
            group.append((write, done))
            threads.add(thread)
        self._queue.extendleft(reversed(held))
        return group, threads

    async def _flush(self) -> None:
        """Commit what is queued, until the queue is empty and no group is in flight."""
        stopped: BaseException = asyncio.CancelledError()
        lanes: dict[asyncio.Future[None], set[Hashable]] = {}
        try:
            if self._lanes() == 1:
                while self._queue:
                    group, _ = self._take(set())
                    if group:
                        await self._commit(group)
            else:
                await self._flush_lanes(lanes)
        except Exception as exc:  # the connection closed: its group has this error
            stopped = exc
        finally:
            if lanes:
                if isinstance(stopped, asyncio.CancelledError):
                    for task in lanes:  # the loop is closing
                        task.cancel()
                else:  # another lane's error: what is in flight lands before new writes go
                    await asyncio.wait(list(lanes))
            self._flusher = None
            # The writes still queued will never get a group: their callers get the
            # error that stopped it (a failed write, not a cancelled one), or are
            # cancelled with this task (the loop closing).
            while self._queue:
                settle(self._queue.popleft()[1], stopped)

    async def _flush_lanes(self, lanes: dict[asyncio.Future[None], set[Hashable]]) -> None:
        """A group in each free lane, of the writes whose thread has none in flight."""
        loop = asyncio.get_running_loop()
        while self._queue or lanes:
            while self._queue and len(lanes) + self._alone < self._lanes():
                busy = set().union(*lanes.values())
                if self._alone:
                    busy.add(self._alone_thread)
                group, threads = self._take(busy)
                if not group:
                    break
                lanes[loop.create_task(self._commit(group))] = threads
            if not lanes and not self._queue:
                return
            self._wake = loop.create_future()
            try:
                done, _ = await asyncio.wait(
                    [*lanes, self._wake], return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                self._wake = None
            for task in done:
                if task in lanes:
                    del lanes[task]
                    task.result()  # a group's error stops the flusher


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
