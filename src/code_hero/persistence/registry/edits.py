"""What human edits of a thread's state need of the registry: the edit's claim on the
thread, settling the thread after an edit, and the run each interrupted thread stopped in.

An edit writes a checkpoint through the savers, not here. Before it the gateway
claims the thread (`claim_edit`): one transaction that locks the thread row
first (as `admit_run` and `finish_run` do) and sets `edit_until` only when the
thread has no run in flight and no other edit's claim; `admit_run` refuses a run
while the claim holds, so the run cannot start from the checkpoint the edit
supersedes. After the write `settle_edit` records the edit on the thread as a
run's end would (updated_at and the status, the row locked first, unless a run
was admitted meanwhile, after a claim that lapsed: that run's end sets the status
then), and `release_edit` ends the claim, which lapses by itself when the process
that took it died.

A deletion in steps (SQLite, memory, a busy thread on PostgreSQL) starts with
`start_deletion`: under the row's lock it refuses while the claim holds, else
expires the row (ttl 0, with the deletion's token), so an edit that saw the row and
claims afterwards finds it expired or gone (NotFoundError) and never makes it anew.
The claim judges the row with the lock had (ttl 0, or the clock read then): a
reading taken before it waited let through a deletion that had started meanwhile.
PostgreSQL's one-step deletion reads the claim under the same lock.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from code_hero.errors import ConflictError, NotFoundError, ThreadBeingDeletedError
from code_hero.persistence.records import DeletionMark, RunRecord, RunStatus, ThreadStatus
from code_hero.persistence.registry.dialect import (
    OLDEST_UNFINISHED_RUN,
    RUN_COLUMNS,
    THREAD_COLUMNS,
    Dialect,
    utc,
    utc_now,
)

__all__ = ["ThreadEdits", "being_deleted", "being_edited"]

# Seconds a caller refused for an edit in progress waits: an edit holds its thread for
# milliseconds (its claim lapses later only when its process died).
EDIT_RETRY_AFTER = 1


def being_deleted(thread_id: str) -> ThreadBeingDeletedError:
    """The refusal of a run on a thread whose row a deletion has marked."""
    return ThreadBeingDeletedError(
        f"thread {thread_id!r} is being deleted; try again in a moment",
        retry_after=EDIT_RETRY_AFTER,
    )


def being_edited(thread_id: str) -> ConflictError:
    """The refusal of a run or an edit while another edit holds the thread."""
    return ConflictError(
        f"thread {thread_id!r} is being edited (updateState); try again in a moment",
        retry_after=EDIT_RETRY_AFTER,
    )


class ThreadEdits(Dialect):
    """The edit half of the registry's interface (`Registry`), on the dialect seam."""

    async def claim_edit(self, thread_id: str, until: datetime, *, seen: bool) -> str | None:
        now = utc_now()
        async with self._session(atomic=True) as s:
            # The thread's row first (made for a thread only the savers held, as a run's
            # admission would make it; never remade for one the edit saw, which a
            # deletion took meanwhile), in a statement of its own: on PostgreSQL the
            # look for runs below then sees every run admitted before the lock was had.
            if seen:
                locked = await s.fetch(
                    "SELECT edit_until, expires_at, ttl_seconds FROM code_hero_threads "
                    f"WHERE thread_id = ?{self.for_update}",
                    [thread_id],
                )
            else:
                locked = await s.fetch(
                    f"INSERT INTO code_hero_threads ({THREAD_COLUMNS}) "
                    "VALUES (?, NULL, ?, ?, ?, ?) ON CONFLICT (thread_id) DO UPDATE "
                    "SET edit_until = code_hero_threads.edit_until "
                    "RETURNING edit_until, expires_at, ttl_seconds",
                    [
                        thread_id,
                        ThreadStatus.IDLE.value,
                        self._json({}),
                        self._ts(now),
                        self._ts(now),
                    ],
                )
            # An expired row is a deletion under way (`start_deletion`: ttl 0) or the
            # sweep's. The clock is read with the lock had: a reading from before the
            # wait missed a deletion that started meanwhile after a write moved
            # updated_at (= expires_at) past it, and the edit went on under it.
            now = utc_now()
            ends = locked[0]["expires_at"] if locked else None
            if (
                not locked
                or locked[0]["ttl_seconds"] == 0
                or (ends is not None and self._from_ts(ends) <= now)
            ):
                raise NotFoundError(f"no thread {thread_id!r}")
            held = locked[0]["edit_until"]
            if held is not None and self._from_ts(held) > now:
                raise being_edited(thread_id)
            busy = await s.fetch(OLDEST_UNFINISHED_RUN, [thread_id])
            if busy:
                return str(busy[0]["run_id"])
            await s.execute(
                "UPDATE code_hero_threads SET edit_until = ? WHERE thread_id = ?",
                [self._ts(utc(until)), thread_id],
            )
        return None

    async def start_deletion(self, thread_id: str) -> DeletionMark | None:
        async with self._session(atomic=True) as s:
            locked = await s.fetch(
                "SELECT edit_until, ttl_seconds, deletion_token FROM code_hero_threads "
                f"WHERE thread_id = ?{self.for_update}",
                [thread_id],
            )
            if not locked:  # only the savers hold it: its last step takes what has no row
                return DeletionMark(uuid.uuid4().hex, marked=False)
            row = locked[0]
            held = row["edit_until"]
            if held is not None and self._from_ts(held) > utc_now():
                return None
            if row["ttl_seconds"] == 0 and row["deletion_token"] is not None:
                # Marked already: this one joins it.
                return DeletionMark(str(row["deletion_token"]), marked=True)
            # A ttl of 0 keeps it expired (since the epoch) whatever updates it
            # until its row goes: a run stopped meanwhile, a failed deletion (the sweep
            # ends that one). Reads leave it out, and a claim finds it gone. The token is
            # this mark's alone: a row made anew under the id and marked again gets
            # another, which this deletion's last step leaves alone.
            token = uuid.uuid4().hex
            await s.execute(
                "UPDATE code_hero_threads SET ttl_seconds = 0, deletion_token = ? "
                "WHERE thread_id = ?",
                [token, thread_id],
            )
        return DeletionMark(token, marked=True)

    async def release_edit(self, thread_id: str, until: datetime) -> None:
        async with self._session() as s:
            # Only this claim: one that lapsed may have been taken by another edit since.
            await s.execute(
                "UPDATE code_hero_threads SET edit_until = NULL "
                "WHERE thread_id = ? AND edit_until = ?",
                [thread_id, self._ts(utc(until))],
            )

    async def settle_edit(self, thread_id: str, status: ThreadStatus) -> str | None:
        async with self._session(atomic=True) as s:
            locked = await s.fetch(
                f"SELECT thread_id FROM code_hero_threads WHERE thread_id = ?{self.for_update}",
                [thread_id],
            )
            if not locked:
                return None
            busy = await s.fetch(OLDEST_UNFINISHED_RUN, [thread_id])
            if busy:  # the run admitted meanwhile keeps the thread BUSY
                await s.execute(
                    "UPDATE code_hero_threads SET updated_at = ? WHERE thread_id = ?",
                    [self._ts(utc_now()), thread_id],
                )
                return str(busy[0]["run_id"])
            await s.execute(
                "UPDATE code_hero_threads SET status = ?, updated_at = ? WHERE thread_id = ?",
                [ThreadStatus(status).value, self._ts(utc_now()), thread_id],
            )
        return None

    async def latest_runs(
        self, thread_ids: Sequence[str], status: RunStatus | None
    ) -> dict[str, RunRecord]:
        if not thread_ids:
            return {}
        cond, params = self._in("thread_id", list(dict.fromkeys(thread_ids)))
        # One query for a page of threads (an inbox), on the runs' (thread_id, ...) index.
        sql = (
            f"SELECT {RUN_COLUMNS} FROM (SELECT {RUN_COLUMNS}, ROW_NUMBER() OVER ("
            "PARTITION BY thread_id ORDER BY created_at DESC, run_id DESC) AS newest "
            f"FROM code_hero_runs WHERE {cond}{'' if status is None else ' AND status = ?'}) "
            "ranked WHERE newest = 1"
        )
        if status is not None:
            params.append(RunStatus(status).value)
        async with self._session() as s:
            rows = await s.fetch(sql, params)
        return {row["thread_id"]: self._run(row) for row in rows}
