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

from collections.abc import Sequence
from datetime import datetime

from code_hero.persistence.registry.dialect import Dialect, utc

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
