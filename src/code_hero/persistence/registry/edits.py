"""What human edits of a thread's state need of the registry: settling the thread after an
edit, and the run each interrupted thread stopped in.

An edit writes a checkpoint through the savers, not here; before it the gateway
refuses a thread with a run in flight (`unfinished_runs`), and after it
`settle_edit` records it on the thread as a run's end would: updated_at and the
status, in one transaction that locks the thread row first (as `admit_run` and
`finish_run` do), unless a run was admitted meanwhile: that run's end sets the
status then.
"""

from __future__ import annotations

from collections.abc import Sequence

from code_hero.persistence.records import RunRecord, RunStatus, ThreadStatus
from code_hero.persistence.registry.dialect import RUN_COLUMNS, Dialect, utc_now

__all__ = ["ThreadEdits"]


class ThreadEdits(Dialect):
    """The edit half of the registry's interface (`Registry`), on the dialect seam."""

    async def settle_edit(self, thread_id: str, status: ThreadStatus) -> str | None:
        async with self._session(atomic=True) as s:
            locked = await s.fetch(
                f"SELECT thread_id FROM code_hero_threads WHERE thread_id = ?{self.for_update}",
                [thread_id],
            )
            if not locked:
                return None
            busy = await s.fetch(
                "SELECT run_id FROM code_hero_runs WHERE thread_id = ? "
                "AND status IN ('PENDING', 'RUNNING') ORDER BY created_at, run_id LIMIT 1",
                [thread_id],
            )
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
        self, thread_ids: Sequence[str], status: RunStatus
    ) -> dict[str, RunRecord]:
        if not thread_ids:
            return {}
        cond, params = self._in("thread_id", list(dict.fromkeys(thread_ids)))
        # One query for a page of threads (an inbox), on the runs' (thread_id, ...) index.
        sql = (
            f"SELECT {RUN_COLUMNS} FROM (SELECT {RUN_COLUMNS}, ROW_NUMBER() OVER ("
            "PARTITION BY thread_id ORDER BY created_at DESC, run_id DESC) AS newest "
            f"FROM code_hero_runs WHERE {cond} AND status = ?) ranked WHERE newest = 1"
        )
        async with self._session() as s:
            rows = await s.fetch(sql, [*params, RunStatus(status).value])
        return {row["thread_id"]: self._run(row) for row in rows}
