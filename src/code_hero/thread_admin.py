"""Threads as things, and their retention: what the gateway does beyond reading them.

`ThreadAdmin` is a part of `Gateway` (a mixin over its services and access
policy): `createThread`, `updateThread`, `copyThread`, `deleteThreads`,
`pruneThreads` and the sweep of expired threads. Access as everywhere in the
gateway: a user creates threads for itself only, edits, copies, deletes and
prunes only its own (another user's thread looks missing); administrators act
on any; the access hook is asked per thread.

Every deletion, one thread or many, by a caller or by the sweep, goes through
`_purge`: the thread's row is marked (`start_deletion`: no run is admitted on it
from then on), its runs are stopped wherever they execute, then the manager
deletes its checkpoints, runs, events and row (`end_deletion`), unless a thread
made anew under the id holds it by then (the mark is the deletion's own, a token:
a run acknowledged before it goes with the thread, one after it is refused, or
starts on a thread made anew, which the deletion leaves alone, even once another
deletion has marked it). A
thread with no run in flight goes in one step where the store has one
(`purge_idle_thread`; PostgreSQL: one round trip, the thread's row locked first
as a run's admission locks it; SQLite: one transaction in one call on its
thread; the owner and the expiry are checked in it).
A thread an edit holds (updateState, for milliseconds) is not deleted: deleteThread
answers CONFLICT with retryAfter, the bulk deletions and the sweep skip it.

An expired thread (its `expires_at` passed) is never read again: the registry
leaves it out of every read and listing, `_expired` answers for the reads
that do not go through one (an administrator's), and a run or a createThread
naming it deletes it first, so it starts afresh. One replica at a time sweeps
(`Registry.sweeping`); during an outage nobody does, and these operations
are UNAVAILABLE (they need the primary's whole history).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from code_hero.auth import AccessPolicy, Action, Caller
from code_hero.compose import GatewaySettings, Services
from code_hero.errors import BackendUnavailableError, BadInputError, ConflictError, NotFoundError
from code_hero.inputs import (
    check_count,
    check_metadata,
    check_text,
    check_thread_id,
    check_ttl_seconds,
)
from code_hero.persistence import clock
from code_hero.persistence.manager import PruneReport, ThreadDeletion
from code_hero.persistence.records import ThreadFilter, ThreadRecord, ThreadStatus

__all__ = ["MAX_BULK", "MAX_KEEP_LATEST", "BulkDeletion", "ThreadAdmin"]

log = logging.getLogger(__name__)

MAX_BULK = 1000  # threads one deleteThreads call deletes, at most
MAX_KEEP_LATEST = 1_000_000
_BATCH = 100  # threads read per query while pruning or sweeping
_DELIVERY_BATCH = 1000  # deliveries (and tombstones) deleted per statement by the sweep


@dataclass(frozen=True)
class BulkDeletion:
    """What deleteThreads removed, and whether more threads match."""

    thread_ids: Sequence[str]
    has_more: bool


class ThreadAdmin:
    """Creating, editing, copying, deleting in bulk, pruning and expiring threads."""

    # Provided by Gateway.
    settings: GatewaySettings
    policy: AccessPolicy
    services: Services
    _sweeper: asyncio.Task[None] | None = None

    def _user_for(self, caller: Caller, named: str | None) -> str | None:
        raise NotImplementedError

    async def _thread_query(self, flt: ThreadFilter | None, caller: Caller) -> ThreadFilter | None:
        raise NotImplementedError

    # ------------------------------------------------------------ expiry
    async def _expired(self, thread_ids: Sequence[str]) -> set[str]:
        """Those of the threads whose expiry has passed (one query)."""
        registry = self.services.manager.registry
        now = clock.now()
        return set(await registry.expired_thread_ids(now, limit=len(thread_ids), among=thread_ids))

    async def _purge(
        self, thread_id: str, *, live_at: datetime | None = None, owner: str | None = None
    ) -> ThreadDeletion:
        """The one way a thread is deleted: stop its runs, then delete it everywhere;
        with `live_at`, not when it had expired then (it is nobody's to delete); with
        `owner`, not unless it is that user's (another's looks missing)."""
        manager = self.services.manager
        # A thread with no run in flight goes in one step where the store allows
        # (PostgreSQL, SQLite: issue 15); its expiry and owner are checked in that step,
        # and a busy answer has checked them already.
        gone = await manager.purge_idle_thread(thread_id, live_at=live_at, owner=owner)
        if gone is not None and not gone.busy:
            return gone
        if gone is None and not await self._deletable(thread_id, live_at, owner):
            return ThreadDeletion(thread_id, False, 0, 0)  # the store deletes in steps
        # The mark comes first: from it on no run is admitted on the thread (startRun
        # answers CONFLICT with retryAfter, or ends the deletion and starts afresh), so
        # the stop below reaches every run the deletion takes, and a run acknowledged
        # after the mark is never deleted by it.
        mark = await manager.start_deletion(thread_id)
        if mark is None:
            return ThreadDeletion(thread_id, False, 0, 0, edited=True)
        # Every unfinished run stops (a run ending after the purge writes nothing back:
        # the registry's foreign keys and the executor see to its leftovers).
        await self.services.executor.stop_thread(thread_id)
        # Only the row this deletion marked (its token): a reap may have ended the
        # deletion meanwhile and a client made the thread anew, with runs of its own,
        # which another deletion may have marked since and stops before it ends it.
        return await manager.end_deletion(thread_id, mark)

    async def _deletable(self, thread_id: str, live_at: datetime | None, owner: str | None) -> bool:
        """`purge_idle_thread`'s checks, for a store that deletes in steps: the thread had
        not expired at `live_at` and (with `owner`) is that user's. A row a deletion
        marked (ttl 0) has not expired: that deletion was cut short, and this one ends
        it, as the one-step deletion does (the row is read marked: reads hide it)."""
        if owner is None and live_at is None:
            return True
        thread = await self.services.manager.registry.get_thread(thread_id, expired=True)
        if owner is not None and (thread is None or thread.user_id != owner):
            return False
        return not (
            live_at is not None
            and thread is not None
            and thread.ttl_seconds != 0
            and thread.expires_at is not None
            and thread.expires_at <= live_at
        )

    async def _reap_if_expired(self, thread_id: str) -> None:
        """Delete the thread now if it has expired: a new use of its id starts afresh."""
        if await self._expired([thread_id]):
            await self._purge(thread_id)

    async def sweep_expired(self, *, batches: int = 10) -> list[str]:
        """Delete expired threads (up to `batches` of 100), then finished webhook
        deliveries and deletions' tombstones past their retention, if no other replica
        is sweeping; returns the ids of the threads this call deleted."""
        registry = self.services.manager.registry
        deleted: list[str] = []
        async with registry.sweeping() as mine:
            if not mine:
                return deleted
            for _ in range(batches):
                ids = await registry.expired_thread_ids(clock.now(), limit=_BATCH)
                for thread_id in ids:
                    if (await self._purge(thread_id)).deleted:
                        deleted.append(thread_id)
                if len(ids) < _BATCH:
                    break
            forgotten = await self._forget_deliveries(batches)
            if forgotten:
                log.info("deleted %d webhook deliveries past their retention", forgotten)
            forgotten = await self._forget_tombstones(batches)
            if forgotten:
                log.info("forgot %d finished deletions past their retention", forgotten)
        return deleted

    async def _forget_tombstones(self, batches: int) -> int:
        """Delete the tombstones of deletions older than their retention (up to `batches`
        of 1,000): a copy-back that late would come from an outage longer than that."""
        registry = self.services.manager.registry
        retention = timedelta(seconds=self.services.settings.tombstone_retention)
        return await _in_batches(registry.forget_deleted_threads, retention, batches)

    async def _forget_deliveries(self, batches: int) -> int:
        """Delete DELIVERED and FAILED deliveries older than the retention (up to
        `batches` of 1,000): they outlive their threads, runs and run webhooks."""
        store = self.services.webhook_store()
        if store is None:
            return 0
        retention = timedelta(seconds=self.services.settings.webhooks.retention)
        return await _in_batches(store.delete_finished_deliveries, retention, batches)

    def _start_sweeper(self) -> None:
        interval = self.settings.sweep_interval
        if interval is not None and interval > 0:
            self._sweeper = asyncio.create_task(self._sweep_loop(interval), name="thread-sweep")

    async def _stop_sweeper(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None

    async def _sweep_loop(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                gone = await self.sweep_expired()
                if gone:
                    log.info("deleted %d expired threads", len(gone))
            except BackendUnavailableError:
                pass  # an outage: the next sweep after it catches up
            except Exception:
                log.exception("sweeping expired threads failed")

    # ------------------------------------------------------------ create, update, copy
    async def create_thread(
        self,
        *,
        thread_id: str | None = None,
        metadata: object = None,  # a JSON object, checked here
        user_id: str | None = None,
        if_exists_raise: bool = True,
        ttl_seconds: int | None = None,
        caller: Caller,
    ) -> ThreadRecord:
        """A new thread (own id or a new UUID); an id in use is CONFLICT, or with
        `if_exists_raise=False` the existing thread (when the caller may see it)."""
        self.policy.spend(caller, Action.THREAD_CREATE)
        if thread_id is not None:
            thread_id = check_thread_id(thread_id, "threadId")
        meta = {} if metadata is None else check_metadata(metadata, "metadata")
        check_text(user_id, "userId")  # stored, as startRun's userId is
        if ttl_seconds is not None:
            ttl_seconds = check_ttl_seconds(ttl_seconds, "ttlSeconds")
        owner = self._user_for(caller, user_id)
        await self.policy.require(
            caller, Action.THREAD_CREATE, thread_id=thread_id, value={"user_id": owner}
        )
        manager = self.services.manager
        # A fresh id is nobody's yet: during an outage the thread is born on the fallback.
        fresh = thread_id is None
        if thread_id is None:
            thread_id = str(uuid.uuid4())
        else:
            await self._reap_if_expired(thread_id)
            # History with no owner on record (written outside the gateway) is nobody's to
            # take over, as for startRun.
            if (
                not caller.is_admin
                and await manager.get_thread(thread_id) is None
                and await manager.get_checkpoint(thread_id) is not None
            ):
                raise ConflictError(f"thread {thread_id!r} already exists")
        now = clock.now()
        record = ThreadRecord(
            thread_id=thread_id,
            user_id=owner,
            status=ThreadStatus.IDLE,
            metadata=meta,
            created_at=now,
            updated_at=now,
            ttl_seconds=ttl_seconds or self.settings.thread_ttl,
        )
        created = await manager.create_thread(record, new_thread=fresh)
        if created is not None:
            return created
        existing = await manager.get_thread(thread_id)
        if if_exists_raise or existing is None or not caller.sees(existing.user_id):
            raise ConflictError(f"thread {thread_id!r} already exists")
        return existing

    async def update_thread(
        self,
        thread_id: str,
        *,
        metadata: object = None,  # a JSON object, checked here
        ttl_seconds: int | None = None,
        caller: Caller,
    ) -> ThreadRecord:
        """Merge `metadata` into the thread's (a key set to null is removed) and set its
        ttl when given; NOT_FOUND when the caller has no such thread."""
        self.policy.spend(caller, Action.THREAD_UPDATE)
        thread_id = check_thread_id(thread_id, "id")
        patch = None if metadata is None else check_metadata(metadata, "metadata")
        if ttl_seconds is not None:
            ttl_seconds = check_ttl_seconds(ttl_seconds, "ttlSeconds")
        manager = self.services.manager
        thread = await manager.get_thread(thread_id)
        if thread is None or not caller.sees(thread.user_id):
            raise NotFoundError(f"no thread {thread_id!r}")
        await self.policy.require(
            caller, Action.THREAD_UPDATE, thread_id=thread_id, value={"metadata": patch}
        )
        updated = await manager.registry.update_thread(
            thread_id, metadata=patch, ttl_seconds=ttl_seconds, set_ttl=ttl_seconds is not None
        )
        if updated is None:
            raise NotFoundError(f"no thread {thread_id!r}")
        return updated

    async def copy_thread(self, thread_id: str, *, caller: Caller) -> ThreadRecord:
        """A new thread with the checkpoints (every namespace, pending writes included),
        metadata, owner and ttl of this one; no runs."""
        self.policy.spend(caller, Action.THREAD_CREATE)
        thread_id = check_thread_id(thread_id, "id")
        manager = self.services.manager
        source = await manager.get_thread(thread_id)
        if (
            source is None
            or not caller.sees(source.user_id)
            or not await self.policy.allows(caller, Action.THREAD_READ, thread_id=thread_id)
        ):
            raise NotFoundError(f"no thread {thread_id!r}")
        await self.policy.require(
            caller, Action.THREAD_CREATE, value={"user_id": source.user_id, "copy_of": thread_id}
        )
        now = clock.now()
        target = replace(
            source,
            thread_id=str(uuid.uuid4()),
            # The copy has no runs: nothing of it is running.
            status=ThreadStatus.IDLE if source.status is ThreadStatus.BUSY else source.status,
            created_at=now,
            updated_at=now,
            expires_at=None,
        )
        return await manager.copy_thread(thread_id, target)

    # ------------------------------------------------------------ retention
    async def delete_threads(
        self, flt: ThreadFilter | None, *, limit: int = 100, caller: Caller
    ) -> BulkDeletion:
        """Delete up to `limit` threads matching the filter (a user's own only), their runs
        stopped first; `has_more` when more matched."""
        self.policy.spend(caller, Action.THREAD_DELETE)
        limit = check_count(limit, "limit", 1, MAX_BULK)
        query = await self._thread_query(flt, caller)
        if query is None:
            return BulkDeletion([], False)
        ids = await self.services.manager.registry.matching_thread_ids(query, limit=limit + 1)
        deleted: list[str] = []
        edited = False  # a thread an edit holds still matches: the next call deletes it
        for thread_id in ids[:limit]:
            if not await self.policy.allows(caller, Action.THREAD_DELETE, thread_id=thread_id):
                continue
            gone = await self._purge(thread_id)
            if gone.deleted:
                deleted.append(thread_id)
            edited = edited or gone.edited
        return BulkDeletion(deleted, len(ids) > limit or edited)

    async def prune_threads(
        self,
        flt: ThreadFilter | None,
        *,
        older_than: datetime | None = None,
        keep_latest: int | None = None,
        caller: Caller,
    ) -> PruneReport:
        """Delete the matching threads last updated before `older_than`, and/or keep only
        the newest `keep_latest` checkpoints of each namespace of the others, and those
        their unfinished runs are to start from (a user's own threads only)."""
        self.policy.spend(caller, Action.THREAD_DELETE)
        if older_than is None and keep_latest is None:
            raise BadInputError("pruneThreads needs olderThan, keepLatest or both")
        if keep_latest is not None:
            keep_latest = check_count(keep_latest, "keepLatest", 1, MAX_KEEP_LATEST)
        if older_than is not None and older_than.tzinfo is None:
            older_than = older_than.replace(tzinfo=UTC)
        query = await self._thread_query(flt, caller)
        if query is None:
            return PruneReport(0, 0, 0)
        manager = self.services.manager
        threads = checkpoints = runs = 0
        if older_than is not None:
            # Refused by the access hook, or held by an edit: they still match.
            kept: set[str] = set()
            while True:
                ask = _BATCH + len(kept)
                ids = await manager.registry.matching_thread_ids(
                    query, limit=ask, updated_before=older_than
                )
                todo = [t for t in ids if t not in kept]
                for thread_id in todo:
                    if not await self.policy.allows(
                        caller, Action.THREAD_DELETE, thread_id=thread_id
                    ):
                        kept.add(thread_id)
                        continue
                    gone = await self._purge(thread_id)
                    if gone.edited:
                        kept.add(thread_id)
                    threads += int(gone.deleted)
                    checkpoints += gone.checkpoints_deleted
                    runs += gone.runs_deleted
                if len(ids) < ask or not todo:
                    break
        if keep_latest is not None:
            after: str | None = None
            while True:
                page = await manager.registry.list_threads(query, first=_BATCH, after=after)
                for thread in page.items:
                    if await self.policy.allows(
                        caller, Action.THREAD_DELETE, thread_id=thread.thread_id
                    ):
                        checkpoints += await manager.keep_latest(thread.thread_id, keep_latest)
                if not page.has_next_page:
                    break
                after = page.end_cursor
        return PruneReport(threads, checkpoints, runs)


async def _in_batches(
    forget: Callable[..., Awaitable[int]], retention: timedelta, batches: int
) -> int:
    """Call `forget(before, limit=1,000)` on what is older than `retention` until a batch
    comes back short, up to `batches` times; how many it forgot."""
    before = clock.now() - retention
    total = 0
    for _ in range(batches):
        gone = await forget(before, limit=_DELIVERY_BATCH)
        total += gone
        if gone < _DELIVERY_BATCH:
            break
    return total
