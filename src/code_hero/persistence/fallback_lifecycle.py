"""Creating, editing and expiring threads through an outage: the primary's work only.

A created or edited thread, a copy and the threads a retention pass selects
live in the primary; during an outage these calls are UNAVAILABLE (with
`retryAfter`) rather than answered from a fallback that holds only the
threads born in the outage. The server's default TTL is not given to a
thread while the primary is down (the thread keeps none), and no replica
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

    async def create_thread(self, thread: ThreadRecord) -> ThreadRecord | None:
        """Insert a new thread (primary only)."""

        async def degraded() -> ThreadRecord | None:
            raise self.router.unavailable("creating a thread")

        return await self._write(lambda r: r.create_thread(thread), degraded)

    async def update_thread(
        self,
        thread_id: str,
        *,
        metadata: Mapping[str, Any] | None = None,
        ttl_seconds: int | None = None,
        set_ttl: bool = False,
    ) -> ThreadRecord | None:
        """Merge metadata and set the ttl (primary only)."""

        async def degraded() -> ThreadRecord | None:
            raise self.router.unavailable("updating a thread")

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
