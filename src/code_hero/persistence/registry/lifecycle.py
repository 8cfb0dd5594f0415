"""Threads as things: creating and editing them, finding the expired, the sweep's lock.

An expired thread (its `expires_at` passed) is absent from every read of the
registry from that moment (`_live`), before any sweep deletes it. The
database derives `expires_at` from `updated_at` and `ttl_seconds` (a trigger
of the retention migration), so these queries only set `ttl_seconds`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, ClassVar

from code_hero.persistence.records import ThreadFilter, ThreadRecord
from code_hero.persistence.registry.dialect import THREAD_COLUMNS, Dialect, utc, utc_now

__all__ = ["SWEEP_LOCK_KEY", "THREAD_READ_COLUMNS", "ThreadLifecycle"]

# A thread row as read: the inserted columns plus the retention ones and a deletion's mark.
THREAD_READ_COLUMNS = f"{THREAD_COLUMNS}, ttl_seconds, expires_at, deletion_token, edit_until"

# PostgreSQL advisory-lock key (b"codhswep") held by the replica sweeping expired
# threads, for the length of one pass: the others skip theirs.
SWEEP_LOCK_KEY = 0x636F_6468_7377_6570


class ThreadLifecycle(Dialect):
    """Creation, edits and expiry of threads (part of `SqlRegistry`), on the dialect seam."""

    # PostgreSQL: a session-level try-lock (one replica sweeps at a time); SQLite: None,
    # one process owns the file's sweep.
    sweep_lock: ClassVar[str | None] = None
    sweep_unlock: ClassVar[str | None] = None

    def _thread_where(self, flt: ThreadFilter) -> tuple[list[str], list[Any]]:
        raise NotImplementedError  # SqlRegistry's, shared with listings

    def _live(self, column: str = "expires_at") -> tuple[str, list[Any]]:
        """A condition: the thread has not expired (now)."""
        return f"({column} IS NULL OR {column} > ?)", [self._ts(utc_now())]

    def _only_live(self, clauses: list[str], params: list[Any]) -> None:
        """Add the live condition to a listing's (or count's) conditions of threads."""
        live, now = self._live()
        clauses.append(live)
        params.extend(now)

    def _only_live_runs(self, clauses: list[str], params: list[Any]) -> None:
        """Add to a listing's conditions of runs: their thread has not expired."""
        clauses.append(
            "thread_id NOT IN (SELECT thread_id FROM code_hero_threads WHERE expires_at <= ?)"
        )
        params.append(self._ts(utc_now()))

    async def create_thread(self, thread: ThreadRecord) -> ThreadRecord | None:
        sql = (
            f"INSERT INTO code_hero_threads ({THREAD_COLUMNS}, ttl_seconds, deletion_token) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (thread_id) DO NOTHING"
        )
        params = self._thread_params(thread)
        async with self._session(atomic=True) as s:
            if not await s.execute(sql, params):
                return None
            rows = await s.fetch(
                f"SELECT {THREAD_READ_COLUMNS} FROM code_hero_threads WHERE thread_id = ?",
                [thread.thread_id],
            )
        return self._thread(rows[0])

    async def update_thread(
        self,
        thread_id: str,
        *,
        metadata: Mapping[str, Any] | None = None,
        ttl_seconds: int | None = None,
        set_ttl: bool = False,
    ) -> ThreadRecord | None:
        live, live_params = self._live()
        select = f"SELECT {THREAD_READ_COLUMNS} FROM code_hero_threads WHERE thread_id = ?"
        async with self._session(atomic=True) as s:
            # Read and write in one transaction, the row locked: two merges never lose a key.
            rows = await s.fetch(f"{select} AND {live}{self.for_update}", [thread_id, *live_params])
            if not rows:
                return None
            merged = dict(self._thread(rows[0]).metadata)
            for key, value in (metadata or {}).items():
                if value is None:
                    merged.pop(key, None)
                else:
                    merged[key] = value
            sets, params = (
                ["metadata = ?", "updated_at = ?"],
                [
                    self._json(merged),
                    self._ts(utc_now()),
                ],
            )
            if set_ttl:
                sets.append("ttl_seconds = ?")
                params.append(ttl_seconds)
            await s.execute(
                f"UPDATE code_hero_threads SET {', '.join(sets)} WHERE thread_id = ?",
                [*params, thread_id],
            )
            # Read again: SQLite's RETURNING would not show what the expiry trigger set.
            rows = await s.fetch(select, [thread_id])
        return self._thread(rows[0])

    async def default_ttl(self, thread_id: str, ttl_seconds: int) -> None:
        async with self._session() as s:
            await s.execute(
                "UPDATE code_hero_threads SET ttl_seconds = ? "
                "WHERE thread_id = ? AND ttl_seconds IS NULL",
                [ttl_seconds, thread_id],
            )

    async def expired_thread_ids(
        self, now: datetime, *, limit: int, among: Sequence[str] | None = None
    ) -> list[str]:
        clauses, params = ["expires_at <= ?"], [self._ts(utc(now))]
        if among is not None:
            if not among:
                return []
            cond, extra = self._in("thread_id", list(dict.fromkeys(among)))
            clauses.append(cond)
            params.extend(extra)
        async with self._session() as s:
            rows = await s.fetch(
                f"SELECT thread_id FROM code_hero_threads WHERE {' AND '.join(clauses)} "
                "ORDER BY expires_at, thread_id LIMIT ?",
                [*params, limit],
            )
        return [row["thread_id"] for row in rows]

    async def matching_thread_ids(
        self, flt: ThreadFilter, *, limit: int, updated_before: datetime | None = None
    ) -> list[str]:
        clauses, params = self._thread_where(flt)
        live, live_params = self._live()
        clauses, params = [*clauses, live], [*params, *live_params]
        if updated_before is not None:
            clauses.append("updated_at < ?")
            params.append(self._ts(utc(updated_before)))
        async with self._session() as s:
            rows = await s.fetch(
                f"SELECT thread_id FROM code_hero_threads WHERE {' AND '.join(clauses)} "
                "ORDER BY updated_at, thread_id LIMIT ?",
                [*params, limit],
            )
        return [row["thread_id"] for row in rows]

    @asynccontextmanager
    async def sweeping(self) -> AsyncIterator[bool]:
        if self.sweep_lock is None or self.sweep_unlock is None:
            yield True
            return
        # One connection holds the session lock for the pass; the deletions take others.
        async with self._session() as s:
            rows = await s.fetch(self.sweep_lock, [SWEEP_LOCK_KEY])
            taken = bool(rows[0]["taken"])
            try:
                yield taken
            finally:
                if taken:
                    await s.fetch(self.sweep_unlock, [SWEEP_LOCK_KEY])
