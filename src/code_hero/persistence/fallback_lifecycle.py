"""Creating, editing and expiring threads through an outage.

During an outage a thread born in it (the fallback holds all of it) is created,
edited and copied on the fallback, each change journalled as a copy of the
thread (`CopyThread`, replayed into the primary in order); a new thread (a fresh
id, `new_thread`) is born there. Any other thread, and the threads a retention
pass selects, live in the primary: those calls are UNAVAILABLE (with
`retryAfter`), since the fallback cannot know their state (an id the client
names may be taken there). The server's default TTL is not given to a thread a
run brings while the primary is down (the thread keeps none), and no replica
sweeps: `sweeping()` answers False.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

from code_hero.persistence.fallback_routing import RoutedRegistry
from code_hero.persistence.records import ThreadFilter, ThreadRecord

__all__ = ["FallbackLifecycle"]


class FallbackLifecycle(RoutedRegistry):
    """Thread creation, edits and expiry (part of `FallbackRegistry`)."""

    async def create_thread(
        self, thread: ThreadRecord, *, new_thread: bool = False
    ) -> ThreadRecord | None:
        """Insert a new thread; during an outage one with a fresh id (`new_thread`) or the
        id of a thread born in it (taken: None; deleted in it: made anew)."""

        async def degraded() -> ThreadRecord | None:
            if not new_thread and not self.router.is_local(thread.thread_id):
                raise self.router.unavailable("creating a thread under this id")
            self._room()
            created = await self._local("creating a thread").create_thread(thread)
            self.router.note_local(thread.thread_id)
            if created is not None:
                self._copy_thread(thread.thread_id)
            return created

        return await self._write(lambda r: r.create_thread(thread), degraded)

    async def update_thread(
        self,
        thread_id: str,
        *,
        metadata: Mapping[str, Any] | None = None,
        ttl_seconds: int | None = None,
        set_ttl: bool = False,
    ) -> ThreadRecord | None:
        """Merge metadata and set the ttl (during an outage: a thread born in it only)."""

        async def degraded() -> ThreadRecord | None:
            if not self.router.is_local(thread_id):
                raise self.router.unavailable("updating this thread")
            self._room()
            updated = await self._local("updating this thread").update_thread(
                thread_id, metadata=metadata, ttl_seconds=ttl_seconds, set_ttl=set_ttl
            )
            if updated is not None:
                self._copy_thread(thread_id)
            return updated

        return await self._write(
            lambda r: r.update_thread(
                thread_id, metadata=metadata, ttl_seconds=ttl_seconds, set_ttl=set_ttl
            ),
            degraded,
        )

    async def default_ttl(self, thread_id: str, ttl_seconds: int) -> None:
        """Give the thread this ttl unless it has one (skipped during an outage)."""

        async def degraded() -> None:
            return None

        await self._write(lambda r: r.default_ttl(thread_id, ttl_seconds), degraded)

    async def expired_thread_ids(
        self, now: datetime, *, limit: int, among: Sequence[str] | None = None
    ) -> list[str]:
        """Expired threads (during an outage: none known, the fallback's have no ttl)."""

        async def degraded() -> list[str]:
            return []

        return await self._route(
            lambda r: r.expired_thread_ids(now, limit=limit, among=among), degraded
        )

    async def matching_thread_ids(
        self, flt: ThreadFilter, *, limit: int, updated_before: datetime | None = None
    ) -> list[str]:
        """Threads a retention call selects (primary only)."""

        async def degraded() -> list[str]:
            raise self.router.unavailable("selecting threads to delete")

        return await self._route(
            lambda r: r.matching_thread_ids(flt, limit=limit, updated_before=updated_before),
            degraded,
        )

    async def deleted_threads(
        self, thread_ids: Sequence[str]
    ) -> dict[str, list[tuple[datetime, datetime]]]:
        """The primary's tombstones of these ids (primary only)."""

        async def degraded() -> dict[str, list[tuple[datetime, datetime]]]:
            raise self.router.unavailable("reading deletions")

        return await self._route(lambda r: r.deleted_threads(thread_ids), degraded)

    async def forget_deleted_threads(self, before: datetime, *, limit: int) -> int:
        """Forget the primary's tombstones past their retention (none during an outage)."""

        async def degraded() -> int:
            return 0

        return await self._write(lambda r: r.forget_deleted_threads(before, limit=limit), degraded)

    @asynccontextmanager
    async def sweeping(self) -> AsyncIterator[bool]:
        """The primary's sweep lock; False during an outage."""
        registry = self._primary()
        if registry is None:
            yield False
            return
        async with registry.sweeping() as mine:
            yield mine
