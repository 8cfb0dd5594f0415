"""Run claiming: admission, leases, cancellation and the end of a run.

Runs are taken from the table by whichever executor has a free slot. A run is
admitted PENDING with its thread marked BUSY, leased by an executor (only the
oldest unfinished run of a thread is claimable, and none while another run of
its thread holds a live lease), kept by renewing its lease,
and ended with its thread's status, each step one transaction. On PostgreSQL
every transaction that locks a thread and its runs locks the thread first,
then the runs in run_id order; claimers skip rows another one holds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from code_hero.errors import NotFoundError
from code_hero.persistence.records import EventRecord, RunRecord, RunStatus, ThreadStatus
from code_hero.persistence.registry.dialect import (
    EVENT_COLUMNS,
    RUN_COLUMNS,
    RUN_FIELDS,
    THREAD_COLUMNS,
    thread_runs,
    utc,
    utc_now,
)
from code_hero.persistence.registry.edits import being_deleted, being_edited
from code_hero.persistence.registry.outbox import WebhookOutbox

__all__ = ["RunClaims"]

# An admission's look at its thread, under the thread row's lock: the oldest unfinished
# run (the thread is busy with it), and the newest run's created_at: the run admitted
# is stamped after it, so a thread's runs are queued (and run) in the order they were
# admitted, whatever the clocks of the replicas or the order their starts got here.
_ADMISSION_LOOK = (
    f"{thread_runs('run_id, status, created_at')}SELECT (SELECT run_id FROM thread_runs "
    "WHERE status IN ('PENDING', 'RUNNING') ORDER BY created_at, run_id LIMIT 1) AS run_id, "
    "(SELECT max(created_at) FROM thread_runs) AS newest"
)
_TICK = timedelta(microseconds=1)


# A run's end stores its events (those no batch stored yet) with an INSERT of its own.
_END_EVENTS = (
    f"INSERT INTO code_hero_run_events ({EVENT_COLUMNS}) "
    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (run_id, seq) DO NOTHING"
)
# At most this many of them ride in the statement of its deliveries and its thread's status
# on PostgreSQL; the rest go in an INSERT of their own, in the same trip.
_EVENTS_WITH_END = 8


class _Busy(Exception):
    """Internal: the thread has an unfinished run (rolls an admit back)."""

    def __init__(self, run_id: str) -> None:
        super().__init__(run_id)
        self.run_id = run_id


class _Unlocked(Exception):
    """Internal: a run's end updated a row its thread's lock did not find (rolls back)."""


class RunClaims(WebhookOutbox):
    """The claiming half of the registry's interface (`Registry`), on the dialect seam."""

    async def admit_run(
        self,
        run: RunRecord,
        *,
        reject_if_busy: bool,
        events: Sequence[EventRecord] = (),
        owner: str | None = None,
        new_thread: bool = False,
    ) -> tuple[RunRecord | None, str | None]:
        now = utc_now()
        ts_now = self._ts(now)
        params = self._run_params(run)
        if run.created_at is None:
            params[RUN_FIELDS.index("created_at")] = ts_now
        placeholders = ", ".join("?" for _ in RUN_FIELDS)
        thread_params = [
            run.thread_id,
            run.user_id,
            ThreadStatus.BUSY.value,
            # A thread a run creates starts with that run's metadata.
            self._json({"graph": run.graph, **dict(run.metadata)}),
            ts_now,
            ts_now,
        ]
        insert = f"INSERT INTO code_hero_runs ({RUN_COLUMNS}) VALUES ({placeholders}) "
        if new_thread and events:
            return await self._admit_on_new_thread(
                run, owner, thread_params, insert, params, events
            )
        try:
            async with self._session(atomic=True) as s:
                # The upsert locks the thread row: concurrent starts on one thread queue here.
                locked = await s.fetch(
                    f"INSERT INTO code_hero_threads ({THREAD_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (thread_id) DO UPDATE SET updated_at = excluded.updated_at, "
                    "status = excluded.status, "
                    # The user who created the thread owns it; a run never changes that.
                    "user_id = COALESCE(code_hero_threads.user_id, excluded.user_id) "
                    "RETURNING edit_until, ttl_seconds",
                    thread_params,
                )
                if owner is not None:
                    owned = await s.fetch(
                        "SELECT user_id FROM code_hero_threads WHERE thread_id = ?",
                        [run.thread_id],
                    )
                    if owned[0]["user_id"] != owner:
                        raise NotFoundError(f"no thread {run.thread_id!r}")  # rolls back
                if locked[0]["ttl_seconds"] == 0:
                    # A deletion marked the row (`start_deletion`) and has not removed it
                    # yet, or was cut short: the run would go with the thread.
                    raise being_deleted(run.thread_id)  # rolls back
                held = locked[0]["edit_until"]
                if held is not None and self._from_ts(held) > now:
                    # An edit holds the thread (whatever the multitask strategy): a run
                    # admitted now could start from the checkpoint the edit supersedes.
                    raise being_edited(run.thread_id)  # rolls back
                # A thread id the caller made up just now has no runs: no look for them.
                busy_id = None
                if not new_thread:
                    (look,) = await s.fetch(_ADMISSION_LOOK, [run.thread_id])
                    busy_id = look["run_id"]
                    if look["newest"] is not None:
                        after = self._from_ts(look["newest"]) + _TICK
                        if after > (run.created_at or now):
                            params[RUN_FIELDS.index("created_at")] = self._ts(after)
                if busy_id is not None and reject_if_busy:
                    raise _Busy(busy_id)  # rolls the upsert back: nothing recorded
                if busy_id is not None and run.lease_owner is not None:
                    # Not the oldest unfinished run of its thread: leased, it would run
                    # beside that one. It waits unleased for a claim, as any queued run.
                    params[RUN_FIELDS.index("lease_owner")] = None
                    params[RUN_FIELDS.index("lease_expires_at")] = None
                insert += f"RETURNING {RUN_COLUMNS}"
                async with self._unique(f"a run with id {run.run_id!r}"):
                    if events and self.writable_ctes:
                        # The run, its events and the COMMIT in one trip (issue 15): the
                        # events' foreign key is checked at the statement's end, when
                        # the run's row is there.
                        rows = await s.fetch(
                            f"WITH run AS ({insert}), events AS (INSERT INTO "
                            f"code_hero_run_events ({EVENT_COLUMNS}) VALUES "
                            f"{', '.join(['(?, ?, ?, ?, ?, ?)'] * len(events))}) "
                            "SELECT * FROM run",
                            [*params, *(v for e in events for v in self._event_params(e))],
                            last=True,
                        )
                        events = ()
                    else:
                        rows = await s.fetch(insert, params)
                    if events:  # stored with the run: whoever claims it numbers on from here
                        await s.executemany(
                            f"INSERT INTO code_hero_run_events ({EVENT_COLUMNS}) "
                            "VALUES (?, ?, ?, ?, ?, ?)",
                            [self._event_params(e) for e in events],
                        )
        except _Busy as busy_run:
            return None, busy_run.run_id
        return self._run(rows[0]), busy_id

    async def _admit_on_new_thread(
        self,
        run: RunRecord,
        owner: str | None,
        thread_params: list[Any],
        insert: str,
        params: list[Any],
        events: Sequence[EventRecord],
    ) -> tuple[RunRecord | None, str | None]:
        """`admit_run` on a thread id the caller made up just now: its row, the run and
        its first events in one transaction, one trip (issue 15): on PostgreSQL one
        statement, on SQLite three in one trip to aiosqlite's thread. There is no row to
        lock and nothing to look at: no deletion's mark, no edit's hold, no other run;
        the row made is the run's user's (a plain INSERT: an id taken already fails, as
        a run's does)."""
        if owner is not None and run.user_id != owner:
            raise NotFoundError(f"no thread {run.thread_id!r}")  # as a made row would say
        thread = f"INSERT INTO code_hero_threads ({THREAD_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)"
        insert_events = (
            f"INSERT INTO code_hero_run_events ({EVENT_COLUMNS}) VALUES "
            f"{', '.join(['(?, ?, ?, ?, ?, ?)'] * len(events))}"
        )
        event_params = [v for e in events for v in self._event_params(e)]
        async with self._unique(f"a run with id {run.run_id!r}"):
            if self.writable_ctes:
                async with self._session() as s:
                    rows = await s.fetch(
                        f"WITH thread AS ({thread}), run AS ({insert}RETURNING {RUN_COLUMNS}), "
                        f"events AS ({insert_events}) SELECT * FROM run",
                        [*thread_params, *params, *event_params],
                    )
            else:
                async with self._session(atomic=True) as s:
                    _, rows, _ = await s.fetch_each(
                        [
                            (thread, thread_params),
                            (f"{insert}RETURNING {RUN_COLUMNS}", params),
                            (insert_events, event_params),
                        ],
                        last=True,
                    )
        return self._run(rows[0]), None

    async def finish_run(
        self,
        run_id: str,
        thread_status: ThreadStatus,
        *,
        if_unfinished: bool = False,
        if_leased_by: str | None = None,
        if_as_copied: bool = False,
        events: Sequence[EventRecord] = (),
        **fields: Any,
    ) -> tuple[RunRecord | None, bool]:
        update, params, held = self._end_update(
            fields,
            if_unfinished=if_unfinished,
            if_leased_by=if_leased_by,
            if_as_copied=if_as_copied,
        )
        try:
            async with self._session(atomic=True) as s:
                # The thread first, as admit_run locks it: a run admitted meanwhile is
                # either committed before the look for waiting runs below, or admitted
                # after this commit (and then claimable at once).
                # Only the thread's row is locked here (OF t): the run's is updated after.
                # The update goes out with the lock, in one trip (issue 15): with nothing
                # locked it finds no row either (the run is missing, or gone with its thread,
                # whose deletion the lock waited for), and it runs after the lock is held.
                locked, rows = await s.fetch_pair(
                    (
                        "SELECT t.thread_id, r.status FROM code_hero_runs r "
                        "JOIN code_hero_threads t ON t.thread_id = r.thread_id WHERE r.run_id = ?"
                        f"{self.for_update and f'{self.for_update} OF t'}",
                        [run_id],
                    ),
                    (f"{update} RETURNING {RUN_COLUMNS}", [*params, run_id, *held]),
                )
                if not locked and rows:  # (a run with no thread row: rolled back, as before)
                    raise _Unlocked
                if not rows:  # no such run, or its thread is being deleted, its runs with it
                    return None, False
                run = self._run(rows[0])
                # After the update: only an end that applies stores them.
                ordered = sorted(events, key=lambda e: e.seq)
                event_rows = [self._event_params(e) for e in ordered]
                # The outbox: webhook deliveries commit with the run's end, or not at all; a
                # run that had ended already (this finish replayed) told its webhooks then.
                # (Two finishes racing both see it unfinished: the delivery ids, derived
                # from run and event, keep one message of each.)
                ended = RunStatus(locked[0]["status"]).finished
                inserts = [] if ended else self._run_end_inserts(run)
                # The thread takes the run's end status unless a run waits (the row is locked:
                # nothing updated means one waits).
                status_update = (
                    "UPDATE code_hero_threads SET status = ?, updated_at = ? WHERE thread_id = ? "
                    f"AND NOT EXISTS ({thread_runs('status')}SELECT 1 FROM thread_runs "
                    "WHERE status IN ('PENDING', 'RUNNING'))"
                )
                status_params = [
                    ThreadStatus(thread_status).value,
                    self._ts(utc_now()),
                    run.thread_id,
                    run.thread_id,
                ]
                if self.writable_ctes and len(inserts) == 1:
                    # The events, the deliveries and the thread's status in one statement,
                    # with the COMMIT (issue 15): three tables no other part of it reads.
                    # (A statement text per number of events, each prepared: a few only.)
                    insert, insert_params = inserts[0]
                    with_end, event_rows = (
                        event_rows[:_EVENTS_WITH_END],
                        event_rows[_EVENTS_WITH_END:],
                    )
                    if event_rows:
                        await s.executemany(_END_EVENTS, event_rows)
                    stored = (
                        f"stored AS (INSERT INTO code_hero_run_events ({EVENT_COLUMNS}) VALUES "
                        f"{', '.join(['(?, ?, ?, ?, ?, ?)'] * len(with_end))} "
                        "ON CONFLICT (run_id, seq) DO NOTHING), "
                        if with_end
                        else ""
                    )
                    counts = await s.fetch(
                        f"WITH {stored}queued AS ({insert} RETURNING 1), "
                        f"updated AS ({status_update} RETURNING 1) "
                        "SELECT (SELECT count(*) FROM queued) AS queued, "
                        "(SELECT count(*) FROM updated) AS updated",
                        [
                            *(v for row in with_end for v in row),
                            *insert_params,
                            *status_params,
                        ],
                        last=True,
                    )
                    queued, waiting = counts[0]["queued"], not counts[0]["updated"]
                else:
                    if event_rows:
                        await s.executemany(_END_EVENTS, event_rows)
                    # The deliveries, the thread's status and the COMMIT together: one trip
                    # to aiosqlite's thread (issue 15); a row returned per row written.
                    *queued_rows, updated = await s.fetch_each(
                        [
                            *((f"{insert} RETURNING 1", params) for insert, params in inserts),
                            (f"{status_update} RETURNING 1", status_params),
                        ],
                        last=True,
                    )
                    queued, waiting = sum(map(len, queued_rows)), not updated
        except _Unlocked:
            return None, False
        if queued:
            self._outbox_committed()
        return run, bool(waiting)

    def _end_update(
        self,
        fields: Mapping[str, Any],
        *,
        if_unfinished: bool,
        if_leased_by: str | None,
        if_as_copied: bool,
    ) -> tuple[str, list[Any], list[Any]]:
        """A run's end (`finish_run`): its UPDATE (the run's id the parameter after the
        SET's), the SET's parameters, and those of the guards after the id.

        Checked on the run's row itself: a finish or a claim racing this one waits. With
        `if_as_copied`, an outage's copy of the end: the row must be as a copy left it
        (`_as_copied`), or, with no copy's mark (an earlier version's copy), leased by
        `if_leased_by` (None: by no executor); the end clears the lease, as the
        executor's does, and marks what it wrote, so a copy of the run's events after it
        still finds it so."""
        also = ""
        if if_as_copied:
            fields = {**fields, "lease_owner": None, "lease_expires_at": None}
            also = "copied_status = ?, copied_lease_owner = NULL"
        update, params = self._run_update("finish_run", fields, also=also)
        held: list[Any] = []
        if if_as_copied:
            params.append(self._run_param("status", fields["status"]))
        if if_unfinished:
            update += " AND status IN ('PENDING', 'RUNNING')"
        if if_as_copied:
            # Null-safe: a run that version copied released kept no lease in the
            # file (None), and is this copy's while no executor holds it there.
            update += (
                f" AND (CASE WHEN copied_status IS NULL THEN lease_owner {self.same} ? "
                f"ELSE {self._as_copied()} END)"
            )
            held = [if_leased_by]
        elif if_leased_by is not None:
            update, held = f"{update} AND lease_owner = ?", [if_leased_by]
        return update, params, held

    async def unfinished_runs(self, thread_id: str) -> list[RunRecord]:
        async with self._session() as s:
            rows = await s.fetch(
                f"{thread_runs(RUN_COLUMNS)}SELECT {RUN_COLUMNS} FROM thread_runs "
                "WHERE status IN ('PENDING', 'RUNNING') ORDER BY created_at, run_id",
                [thread_id],
            )
        return [self._run(r) for r in rows]

    async def claim_runs(
        self,
        owner: str,
        *,
        now: datetime,
        until: datetime,
        limit: int,
        graphs: Sequence[str] | None = None,
        run_ids: Sequence[str] | None = None,
    ) -> list[RunRecord]:
        if limit < 1 or (run_ids is not None and not run_ids):
            return []
        where, params = self._claimable(now, graphs, run_ids)
        sql = (
            f"UPDATE code_hero_runs SET lease_owner = ?, lease_expires_at = ?, "
            f"{self._claim_mark()} WHERE run_id IN ("
            f"  SELECT r.run_id FROM code_hero_runs r WHERE {where}"
            f"  ORDER BY r.created_at, r.run_id LIMIT ?{self.skip_locked}"
            f") AND (lease_expires_at IS NULL OR lease_expires_at < ?) "
            f"RETURNING {RUN_COLUMNS}"
        )
        ts_now = self._ts(utc(now))
        async with self._session(atomic=True) as s:
            # Not `last`: a claim whose caller is cancelled in flight (the claim loop
            # stopping at shutdown) must roll back, not commit leases nobody hands back.
            rows = await s.fetch(sql, [owner, self._ts(utc(until)), owner, *params, limit, ts_now])
        runs = [self._run(r) for r in rows]
        return sorted(runs, key=lambda r: (r.created_at or now, r.run_id))

    async def has_claimable(
        self,
        *,
        now: datetime,
        until: datetime,
        graphs: Sequence[str] | None = None,
        run_ids: Sequence[str] | None = None,
    ) -> bool:
        if run_ids is not None and not run_ids:
            return False
        where, params = self._claimable(now, graphs, run_ids)
        async with self._session() as s:
            rows = await s.fetch(
                f"SELECT EXISTS (SELECT 1 FROM code_hero_runs r WHERE {where}) AS found", params
            )
        return bool(rows[0]["found"])

    def _claimable(
        self, now: datetime, graphs: Sequence[str] | None, run_ids: Sequence[str] | None
    ) -> tuple[str, list[Any]]:
        """The condition (on `code_hero_runs r`) a claimable run meets at `now`, and its
        parameters: `claim_runs`' candidates, and what `has_claimable` looks for."""
        extra, extra_params = "", []
        if graphs is not None:
            cond, vals = self._in("r.graph", list(graphs))
            extra += f" AND {cond}"
            extra_params += vals
        if run_ids is not None:
            cond, vals = self._in("r.run_id", list(run_ids))
            extra += f" AND {cond}"
            extra_params += vals
        where = (
            "r.status IN ('PENDING', 'RUNNING') AND NOT r.cancel_requested"
            f" AND (r.lease_expires_at IS NULL OR r.lease_expires_at < ?){extra}"
            " AND NOT EXISTS (SELECT 1 FROM code_hero_runs o"
            "   WHERE o.thread_id = r.thread_id AND o.status IN ('PENDING', 'RUNNING')"
            "   AND (o.created_at < r.created_at"
            "        OR (o.created_at = r.created_at AND o.run_id < r.run_id)))"
            # Nor while a later run of its thread is held under a live lease: two starts
            # admitted in the other order than their created_at, the later one leased
            # at its admission (`Claims.admitting`). (On the thread's index from the
            # run's created_at on: the runs queued after it, few.)
            " AND NOT EXISTS (SELECT 1 FROM code_hero_runs o"
            "   WHERE o.thread_id = r.thread_id AND o.created_at >= r.created_at"
            "   AND o.run_id <> r.run_id AND o.status IN ('PENDING', 'RUNNING')"
            "   AND o.lease_owner IS NOT NULL AND o.lease_expires_at >= ?)"
        )
        ts_now = self._ts(utc(now))
        return where, [ts_now, *extra_params, ts_now]

    def _in_run_order(self, where: str) -> str:
        """`where` (a condition on run_id), locking its runs in run_id order on PostgreSQL:
        the order an event batch and a deletion lock them in, so none waits in a cycle."""
        if not self.for_update:
            return where
        return (
            f"run_id IN (SELECT run_id FROM code_hero_runs WHERE {where} "
            f"ORDER BY run_id{self.for_update})"
        )

    async def renew_leases(
        self, owner: str, run_ids: Sequence[str], until: datetime
    ) -> list[RunRecord]:
        if not run_ids:
            return []
        where, ids = self._in("run_id", sorted(run_ids))
        async with self._session() as s:
            rows = await s.fetch(
                f"UPDATE code_hero_runs SET lease_expires_at = ? "
                f"WHERE {self._in_run_order(where)} AND lease_owner = ? "
                f"AND status IN ('PENDING', 'RUNNING') RETURNING {RUN_COLUMNS}",
                [self._ts(utc(until)), *ids, owner],
            )
        return [self._run(r) for r in rows]

    async def release_runs(self, owner: str, run_ids: Sequence[str]) -> None:
        if not run_ids:
            return
        where, ids = self._in("run_id", sorted(run_ids))
        async with self._session() as s:
            await s.execute(
                f"UPDATE code_hero_runs SET lease_owner = NULL, lease_expires_at = NULL "
                f"WHERE {self._in_run_order(where)} AND lease_owner = ?",
                [*ids, owner],
            )

    async def request_cancel(self, run_id: str) -> RunRecord | None:
        async with self._session() as s:
            rows = await s.fetch(
                f"UPDATE code_hero_runs SET cancel_requested = ? WHERE run_id = ? "
                f"RETURNING {RUN_COLUMNS}",
                [True, run_id],
            )
        return self._run(rows[0]) if rows else None

    async def claim_cancelled(
        self, owner: str, *, now: datetime, until: datetime
    ) -> list[RunRecord]:
        async with self._session() as s:
            rows = await s.fetch(
                f"UPDATE code_hero_runs SET lease_owner = ?, lease_expires_at = ?, "
                f"{self._claim_mark()} WHERE run_id IN (SELECT r.run_id FROM code_hero_runs r "
                "  WHERE r.cancel_requested AND r.status IN ('PENDING', 'RUNNING') "
                "  AND (r.lease_expires_at IS NULL OR r.lease_expires_at < ?)"
                # Rows a deletion (or another claimer) holds are skipped, not waited for.
                f"  ORDER BY r.run_id{self.skip_locked}"
                f") AND (lease_expires_at IS NULL OR lease_expires_at < ?) RETURNING {RUN_COLUMNS}",
                [owner, self._ts(utc(until)), owner, self._ts(utc(now)), self._ts(utc(now))],
            )
        return [self._run(r) for r in rows]
