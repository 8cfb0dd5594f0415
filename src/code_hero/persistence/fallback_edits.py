"""The registry's edit calls (`claim_edit`, `release_edit`, `settle_edit`, `latest_runs`,
and `start_deletion`, which keeps edits out of a thread being deleted) as the fallback
router serves them.

While the primary serves they go to its registry. During an outage only a
thread born in it (the fallback holds all of it) can be answered truthfully; its
claim and settled row are each journalled as a copy of the thread, like every
change to it, and its release as an entry of its own (a copy adds or extends a
claim, never clears one: the primary's may be another replica's edit): the
switch back may fall inside the edit, and the primary must hold the claim until
the edit's release, which reaches it then. Anything else
is UNAVAILABLE, as other reads and writes of such threads are; but releasing a
claim the primary holds is left to its lapse then, so an edit that ended is not
reported failed.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from code_hero.persistence.entries import ReleaseEdit
from code_hero.persistence.fallback_routing import RoutedRegistry
from code_hero.persistence.records import DeletionMark, RunRecord, RunStatus, ThreadStatus

__all__ = ["FallbackEdits"]


class FallbackEdits(RoutedRegistry):
    """`claim_edit`, `release_edit`, `settle_edit`, `latest_runs` and `start_deletion`
    through an outage."""

    async def claim_edit(self, thread_id: str, until: datetime, *, seen: bool) -> str | None:
        """Claim the thread for an edit (during an outage: a thread born in it only)."""

        async def degraded() -> str | None:
            if not self.router.is_local(thread_id):
                raise self.router.unavailable("editing this thread")
            local = self._local("editing this thread")
            self._room()
            busy = await local.claim_edit(thread_id, until, seen=seen)
            if busy is None:
                self._copy_thread(thread_id)
            return busy

        return await self._write(lambda r: r.claim_edit(thread_id, until, seen=seen), degraded)

    async def start_deletion(self, thread_id: str) -> DeletionMark | None:
        """Mark the thread before it is deleted (during an outage: a thread born in it)."""

        async def degraded() -> DeletionMark | None:
            if not self.router.is_local(thread_id):
                raise self.router.unavailable("deleting this thread")
            mark = await self._local("deleting this thread").start_deletion(thread_id)
            if mark is not None:
                # The mark goes to the primary too: the copy-back may have taken the
                # thread already (its first drain runs while writes go on), and a last
                # step that runs there after the switch ends only a row it marked. (No
                # room asked: a deletion is let through a full journal, as its end is.)
                self._copy_thread(thread_id)
            return mark

        return await self._write(lambda r: r.start_deletion(thread_id), degraded)

    async def release_edit(self, thread_id: str, until: datetime) -> None:
        """End the edit's claim (during an outage, one in the primary lapses by itself)."""

        async def degraded() -> None:
            if self.router.is_local(thread_id):
                await self._local("editing this thread").release_edit(thread_id, until)
                # A copy taken meanwhile holds the claim, and a copy never clears one (the
                # primary's may be another replica's edit): the release has an entry of its
                # own. No room asked, as a claim holds runs off until it lapses.
                self._journal(ReleaseEdit(thread_id, until))

        await self._write(lambda r: r.release_edit(thread_id, until), degraded)

    async def settle_edit(self, thread_id: str, status: ThreadStatus) -> str | None:
        """Record an edit on the thread (during an outage: a thread born in it only)."""

        async def degraded() -> str | None:
            if not self.router.is_local(thread_id):
                raise self.router.unavailable("editing this thread")
            busy = await self._local("editing this thread").settle_edit(thread_id, status)
            self._copy_thread(thread_id)
            return busy

        return await self._write(lambda r: r.settle_edit(thread_id, status), degraded)

    async def latest_runs(
        self, thread_ids: Sequence[str], status: RunStatus | None
    ) -> dict[str, RunRecord]:
        """The newest run with `status` (None: any) of each thread (during an outage:
        threads born in it)."""

        async def degraded() -> dict[str, RunRecord]:
            if not all(self.router.is_local(t) for t in thread_ids):
                raise self.router.unavailable("reading these threads' runs")
            return await self._local("reading runs").latest_runs(thread_ids, status)

        return await self._route(lambda r: r.latest_runs(thread_ids, status), degraded)
