"""Tombstones: the record, kept on the primary, that a deletion of a thread finished.

A deletion's last step removes the thread's row; with the row gone, nothing
else would tell an outage's copy-back (another replica's, made from the
fallback's copy of the thread) that the thread it copies was deleted, and the
copy would bring it back. So every statement or transaction that removes a
thread row writes a tombstone with it: the thread's id and `created_at`, one
incarnation of the id (a thread made anew under the id has another
`created_at`), and when it was deleted. The copy-back gives nothing to an
incarnation a tombstone names (`persistence/tombstones.py`). The sweep forgets
tombstones past their retention (`CODE_HERO_TOMBSTONE_RETENTION`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from code_hero.persistence.records import ThreadStatus
from code_hero.persistence.registry.dialect import THREAD_COLUMNS, Dialect, utc, utc_now

__all__ = ["TOMBSTONE_FROM_ROW", "ThreadTombstones", "Tombstone"]

# (created_at, deleted_at) of one deleted incarnation of a thread id.
Tombstone = tuple[datetime, datetime]

# The tombstone of the thread row `thread_id` names, as it is before its delete (the
# parameters: deleted_at, thread_id), in the deletion's own transaction. A row deleted
# twice under one created_at (put back by a copy that raced the first deletion) keeps
# one tombstone, of its last deletion.
TOMBSTONE_FROM_ROW = (
    "INSERT INTO code_hero_deleted_threads (thread_id, created_at, deleted_at) "
    "SELECT thread_id, created_at, ? FROM code_hero_threads WHERE thread_id = ? "
    "ON CONFLICT (thread_id, created_at) DO UPDATE SET deleted_at = excluded.deleted_at"
)


# A creating touch of one id, but none of an id deleted since a time (the parameters:
# the row's six columns, then thread_id and that time).
_TOUCH_UNLESS_DELETED = (
    f"INSERT INTO code_hero_threads ({THREAD_COLUMNS}) SELECT ?, ?, ?, ?, ?, ? "
    "WHERE NOT EXISTS (SELECT 1 FROM code_hero_deleted_threads "
    "WHERE thread_id = ? AND deleted_at >= ?) "
    "ON CONFLICT (thread_id) DO UPDATE SET updated_at = excluded.updated_at, "
    "user_id = COALESCE(code_hero_threads.user_id, excluded.user_id)"
)

# The row that touch made (created at its time) of an id deleted since that time.
_MADE_AFTER_DELETION = (
    "SELECT 1 AS one FROM code_hero_threads t JOIN code_hero_deleted_threads d "
    "ON d.thread_id = t.thread_id WHERE t.thread_id = ? AND t.created_at = ? "
    "AND d.deleted_at >= ?"
)


class _Undone(Exception):
    """A touch made the row of an id deleted since: its transaction is rolled back."""


class ThreadTombstones(Dialect):
    """Reading and forgetting tombstones (part of `SqlRegistry`), on the dialect seam."""

    async def deleted_threads(self, thread_ids: Sequence[str]) -> dict[str, list[Tombstone]]:
        if not thread_ids:
            return {}
        cond, params = self._in("thread_id", sorted(set(thread_ids)))
        async with self._session() as s:
            rows = await s.fetch(
                "SELECT thread_id, created_at, deleted_at FROM code_hero_deleted_threads "
                f"WHERE {cond} ORDER BY thread_id, deleted_at",
                params,
            )
        found: dict[str, list[Tombstone]] = {}
        for row in rows:
            found.setdefault(row["thread_id"], []).append(
                (self._from_ts(row["created_at"]), self._from_ts(row["deleted_at"]))
            )
        return found

    async def forget_deleted_threads(self, before: datetime, *, limit: int) -> int:
        # Oldest first, `limit` at a time: one short statement, however many are due.
        async with self._session() as s:
            return await s.execute(
                "DELETE FROM code_hero_deleted_threads WHERE (thread_id, created_at) IN ("
                "SELECT thread_id, created_at FROM code_hero_deleted_threads "
                "WHERE deleted_at < ? ORDER BY deleted_at LIMIT ?)",
                [self._ts(utc(before)), limit],
            )

    async def touch_unless_deleted(
        self, touches: Mapping[str, str | None], since: datetime
    ) -> None:
        """`touch_threads` creating, for an outage's touches replayed: an id a deletion
        since `since` left a tombstone of is left alone (no row made anew, no bump of a
        row made after that deletion). Checked in the statement, then again after it in
        the same transaction, as `put_thread` does: on PostgreSQL a deletion that held
        the row when the touch came was waited for, and the row the statement's
        snapshot let it make anew is rolled back."""
        now, at = self._ts(utc_now()), self._ts(utc(since))
        empty, idle = self._json({}), ThreadStatus.IDLE.value
        for thread_id in sorted(touches):
            try:
                async with self._session(atomic=True) as s:
                    row = [thread_id, touches[thread_id], idle, empty, now, now]
                    await s.execute(_TOUCH_UNLESS_DELETED, [*row, thread_id, at])
                    if await s.fetch(_MADE_AFTER_DELETION, [thread_id, now, at]):
                        raise _Undone
            except _Undone:
                pass
