"""Checkpoints and human edits of a thread's state, as the gateway serves them: every
call checks its input, then what the caller may see or do, then asks the manager."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from code_hero.auth import ANONYMOUS, AccessPolicy, Action, Caller
from code_hero.compose import GatewaySettings
from code_hero.errors import BadInputError, NotFoundError
from code_hero.inputs import check_checkpoint_id, check_graph_value, check_text, check_thread_id
from code_hero.persistence.checkpoints import CheckpointView
from code_hero.persistence.manager import EnhancedCheckpointerManager
from code_hero.persistence.records import Page, ThreadRecord
from code_hero.runs.edits import update_state
from code_hero.runs.graphs import GraphRegistry
from code_hero.runs.interrupts import PendingInterrupt, pending_interrupts
from code_hero.runs.requests import UpdateState

__all__ = ["CheckpointAccess", "check_first"]


def check_first(first: int, limit: int) -> None:
    """A page size within 1..limit (BAD_USER_INPUT otherwise)."""
    if first < 1 or first > limit:
        raise BadInputError(f"first must be between 1 and {limit}, got {first}")


class CheckpointAccess:
    """Reading checkpoints, editing a thread's state, and what interrupted threads wait for."""

    # Provided by Gateway.
    settings: GatewaySettings
    policy: AccessPolicy

    @property
    def manager(self) -> EnhancedCheckpointerManager:
        raise NotImplementedError

    @property
    def graph_registry(self) -> GraphRegistry:
        raise NotImplementedError

    async def _may(self, caller: Caller, action: Action, thread_id: str, **more: Any) -> bool:
        raise NotImplementedError

    async def _owns(self, thread_id: str, caller: Caller) -> bool:
        raise NotImplementedError

    async def _expired(self, thread_ids: Sequence[str]) -> set[str]:
        raise NotImplementedError

    async def get_threads(
        self, thread_ids: Sequence[str], *, caller: Caller = ANONYMOUS
    ) -> dict[str, ThreadRecord]:
        raise NotImplementedError

    # ------------------------------------------------------------ checkpoints
    async def get_checkpoint(
        self,
        thread_id: str,
        checkpoint_id: str | None = None,
        namespace: str = "",
        *,
        caller: Caller = ANONYMOUS,
    ) -> CheckpointView | None:
        """The latest checkpoint of a namespace, or one by id."""
        thread_id = check_thread_id(thread_id)
        check_text(namespace, "namespace")
        if checkpoint_id is not None:
            checkpoint_id = check_checkpoint_id(checkpoint_id, "id")
        more = {"value": {"checkpoint_id": checkpoint_id, "namespace": namespace}}
        if not await self._may(caller, Action.CHECKPOINT_READ, thread_id, **more):
            return None
        return await self.manager.get_checkpoint(thread_id, checkpoint_id, namespace)

    async def latest_checkpoints(
        self, thread_ids: Sequence[str], *, caller: Caller = ANONYMOUS
    ) -> dict[str, CheckpointView]:
        """The latest root checkpoint of each thread that has one (ownership in one query)."""
        ids = list(dict.fromkeys(thread_ids))
        if not caller.is_admin:
            threads = await self.manager.registry.get_threads(ids)
            ids = [t for t in ids if t in threads and caller.sees(threads[t].user_id)]
        else:
            expired = await self._expired(ids)
            ids = [t for t in ids if t not in expired]
        if self.policy.hook is not None:
            ids = [
                t
                for t in ids
                if await self.policy.allows(caller, Action.CHECKPOINT_READ, thread_id=t)
            ]
        views = await asyncio.gather(*(self.manager.get_checkpoint(t) for t in ids))
        return {t: v for t, v in zip(ids, views, strict=True) if v is not None}

    async def get_checkpoints(
        self,
        thread_id: str,
        checkpoint_ids: Sequence[str],
        namespace: str = "",
        *,
        caller: Caller = ANONYMOUS,
    ) -> dict[str, CheckpointView]:
        """Checkpoints of one thread's namespace by id (one access check for all)."""
        thread_id = check_thread_id(thread_id)
        check_text(namespace, "namespace")
        ids = [check_checkpoint_id(i, "id") for i in checkpoint_ids]
        if not ids or not await self._may(caller, Action.CHECKPOINT_READ, thread_id):
            return {}
        return await self.manager.get_checkpoints(thread_id, ids, namespace)

    async def list_checkpoints(
        self,
        thread_id: str,
        *,
        namespace: str = "",
        first: int = 20,
        after: str | None = None,
        caller: Caller = ANONYMOUS,
        thread: ThreadRecord | None = None,
    ) -> Page[CheckpointView]:
        """History newest first; `thread`: its record, as just read for this caller."""
        thread_id = check_thread_id(thread_id)
        check_text(namespace, "namespace")
        check_first(first, self.settings.max_page)
        # The check and the read run together (a round trip less on PostgreSQL); the
        # page, or the read's error, reaches only a caller the check lets through.
        may, page = await asyncio.gather(
            self._may_read(caller, thread_id, thread),
            self.manager.list_checkpoints(thread_id, namespace=namespace, first=first, after=after),
            return_exceptions=True,
        )
        if isinstance(may, BaseException):
            raise may
        if not may:
            return Page([], None, False)
        if isinstance(page, BaseException):
            raise page
        return page

    async def thread_with_history(
        self,
        thread_id: str,
        *,
        namespace: str = "",
        first: int = 20,
        after: str | None = None,
        caller: Caller = ANONYMOUS,
    ) -> tuple[ThreadRecord | None, Page[CheckpointView] | Exception]:
        """`get_thread`, and the page `list_checkpoints` would then give with its record
        (or the error it would raise), both read at once.

        For `thread(id:) { checkpoints }`: the thread's record and its history are
        two round trips that depend on nothing of each other's but the access check,
        which is made on the record before the page leaves here. A thread the caller
        may not see is None, with an empty page and no error of the page's.
        """
        thread_id = check_thread_id(thread_id, "id")

        async def history() -> Page[CheckpointView]:
            check_text(namespace, "namespace")
            check_first(first, self.settings.max_page)
            return await self.manager.list_checkpoints(
                thread_id, namespace=namespace, first=first, after=after
            )

        # The page goes ahead while the record is read; it is awaited only for a
        # caller who may read the thread. Otherwise it is left to finish unawaited:
        # waiting for it would make a hidden thread's answer take as long as its
        # history (an answer slower than for a missing id says it exists), and
        # cancelling it mid-read would cost PostgreSQL's pool the connection.
        reading = asyncio.ensure_future(history())
        try:
            try:
                found = await self.get_threads([thread_id], caller=caller)
            except Exception:
                _leave(reading)
                raise
            record = found.get(thread_id)
            if record is None:
                _leave(reading)
                return None, Page([], None, False)
            try:
                may = await self._may_read(caller, thread_id, record)
            except Exception as exc:
                _leave(reading)
                return record, exc
            if not may:
                _leave(reading)
                return record, Page([], None, False)
            try:
                return record, await reading
            except Exception as exc:
                return record, exc
        except asyncio.CancelledError:  # the request's: the page is not wanted either
            reading.cancel()
            raise

    async def _may_read(self, caller: Caller, thread_id: str, thread: ThreadRecord | None) -> bool:
        """CHECKPOINT_READ; ownership needs no second look-up when the thread's record,
        read live from the registry for this caller (as `thread { checkpoints }` has
        it), says the caller sees it: that record is what `_owns` would read again."""
        if thread is None or thread.thread_id != thread_id or not caller.sees(thread.user_id):
            return await self._may(caller, Action.CHECKPOINT_READ, thread_id)
        return await self.policy.allows(caller, Action.CHECKPOINT_READ, thread_id=thread_id)

    async def checkpoints_count(
        self, thread_id: str, *, namespace: str = "", caller: Caller = ANONYMOUS
    ) -> int:
        """How many checkpoints `list_checkpoints` would page through (0 when the caller
        may not see the thread)."""
        thread_id = check_thread_id(thread_id)
        check_text(namespace, "namespace")
        if not await self._may(caller, Action.CHECKPOINT_READ, thread_id):
            return 0
        return await self.manager.count_checkpoints(thread_id, namespace=namespace)

    # ------------------------------------------------------------ state edits
    async def update_state(
        self, request: UpdateState, *, caller: Caller = ANONYMOUS
    ) -> CheckpointView:
        """A human edit of a thread's state, saved as a checkpoint (`code_hero.runs.edits`);
        another user's thread is NOT_FOUND, as startRun on it is."""
        self.policy.spend(caller, Action.CHECKPOINT_WRITE)
        thread_id = check_thread_id(request.thread_id)
        checkpoint_id = request.checkpoint_id
        if checkpoint_id is not None:
            checkpoint_id = check_checkpoint_id(checkpoint_id)
        check_graph_value(request.values, "values")
        for name, value in (("asNode", request.as_node), ("namespace", request.namespace)):
            check_text(value, name)
        request = replace(request, thread_id=thread_id, checkpoint_id=checkpoint_id)
        if not await self._owns(thread_id, caller):
            raise NotFoundError(f"no thread {thread_id!r}")
        await self.policy.require(
            caller,
            Action.CHECKPOINT_WRITE,
            thread_id=thread_id,
            value={
                "as_node": request.as_node,
                "checkpoint_id": checkpoint_id,
                "namespace": request.namespace,
            },
        )
        return await update_state(self.manager, self.graph_registry, request)

    async def pending_interrupts(
        self, thread_ids: Sequence[str], *, caller: Caller = ANONYMOUS
    ) -> dict[str, list[PendingInterrupt]]:
        """What each INTERRUPTED thread the caller may see waits for (for the DataLoader)."""
        threads = await self.get_threads(list(dict.fromkeys(thread_ids)), caller=caller)
        return await pending_interrupts(
            self.manager.registry, self.graph_registry, list(threads.values())
        )


# Pages read ahead for a caller who turned out not to be let see them: kept until
# they finish (a task nobody holds may be collected mid-way), their errors read.
_LEFT: set[asyncio.Future[Any]] = set()


def _leave(reading: asyncio.Future[Any]) -> None:
    """Lets a page read ahead finish unawaited, its outcome dropped."""
    _LEFT.add(reading)
    reading.add_done_callback(_dropped)


def _dropped(reading: asyncio.Future[Any]) -> None:
    _LEFT.discard(reading)
    if not reading.cancelled():
        reading.exception()  # read: no "exception was never retrieved"
