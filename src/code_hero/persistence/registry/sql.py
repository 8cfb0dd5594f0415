"""The registry's queries of threads, runs and events, written once for both dialects.

`SqlRegistry` implements the `Registry` interface (documented there, in
`persistence/records.py`) on the dialect seam (`dialect.py`): the queries here
and in `claims.py` use `?` placeholders, and `SqliteRegistry` and
`PostgresRegistry` fill in the rest.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import Any, Literal

from code_hero.errors import BadInputError, NotFoundError
from code_hero.persistence.migrations import MIGRATION_LOCK_KEY
from code_hero.persistence.records import (
    SEQ_RESERVE,
    EventRecord,
    Page,
    Registry,
    RunFilter,
    RunOrder,
    RunRecord,
    RunStatus,
    SortDirection,
    ThreadFilter,
    ThreadOrder,
    ThreadRecord,
    ThreadSortField,
    ThreadStatus,
)
from code_hero.persistence.registry.claims import RunClaims
from code_hero.persistence.registry.cursors import decode_cursor, run_cursor, thread_cursor
from code_hero.persistence.registry.dialect import (
    EVENT_COLUMNS,
    RUN_COLUMNS,
    RUN_FIELDS,
    THREAD_COLUMNS,
    Row,
    Session,
    thread_runs,
    utc,
    utc_now,
)
from code_hero.persistence.registry.edits import ThreadEdits
from code_hero.persistence.registry.filters import thread_where
from code_hero.persistence.registry.lifecycle import THREAD_READ_COLUMNS, ThreadLifecycle
from code_hero.persistence.registry.stats import RunStatsQueries
from code_hero.persistence.registry.tombstones import TOMBSTONE_FROM_ROW, ThreadTombstones

__all__ = ["SqlRegistry"]

# How often a batch of events is stored again without the runs deleted meanwhile.
_GONE_RETRIES = 5

# The column of each thread order, and the keyset comparison that continues each direction.
_THREAD_SORT = {ThreadSortField.UPDATED_AT: "updated_at", ThreadSortField.CREATED_AT: "created_at"}
_AFTER = {SortDirection.DESC: "<", SortDirection.ASC: ">"}


# What a copy (`put_thread`) sets of an edit's claim on a row the table has: its own
# where the row has none or an earlier one, else the row's. A copy adds or extends a
# claim and never clears one: the row's may be another replica's edit, in flight (an
# outage's release is an entry of its own, `ReleaseEdit`). SQLite's timestamps are
# fixed-width text, so their order is time order.
_CLAIM_ADDED_OR_EXTENDED = (
    "CASE WHEN code_hero_threads.edit_until IS NULL "
    "OR excluded.edit_until > code_hero_threads.edit_until "
    "THEN excluded.edit_until ELSE code_hero_threads.edit_until END"
)


# What `put_thread` sets on a row the table has already: the copy's every field (an
# edit's claim added or extended, above) but a deletion's mark the row has (another
# replica's deletion, made on the primary while this one was in an outage: its last step
# ends only a row it marked, so the copy keeps the row marked, ttl 0); or of a late copy
# (`Registry.put_thread`) its deletion's mark alone, on a row no deletion marked, of the
# same thread (created when the copy's was: a thread made anew under the id, after
# another replica deleted the copy's, is not this deletion's to hide and end).
_THREAD_COPY = (
    "user_id = excluded.user_id, status = excluded.status, metadata = excluded.metadata, "
    "created_at = excluded.created_at, updated_at = excluded.updated_at, "
    "ttl_seconds = CASE WHEN code_hero_threads.deletion_token IS NULL "
    "THEN excluded.ttl_seconds ELSE code_hero_threads.ttl_seconds END, "
    "deletion_token = COALESCE(code_hero_threads.deletion_token, excluded.deletion_token), "
    "edit_until = " + _CLAIM_ADDED_OR_EXTENDED
)
_LATE_THREAD_COPY = (
    "ttl_seconds = 0, deletion_token = excluded.deletion_token "
    "WHERE excluded.deletion_token IS NOT NULL AND code_hero_threads.deletion_token IS NULL "
    "AND code_hero_threads.created_at = excluded.created_at"
)


# A run's upsert as given (`put_run`).
_RUN_COPY = (
    f"INSERT INTO code_hero_runs ({RUN_COLUMNS}) VALUES ({', '.join('?' for _ in RUN_FIELDS)}) "
    "ON CONFLICT (run_id) DO UPDATE SET "
    + ", ".join(f"{name} = excluded.{name}" for name in RUN_FIELDS[1:])
)
# An outage's copy of a run (`copy_thread`, a late `put_run(copied=True)`): as given, with
# the mark of what it wrote (its status and lease owner: `migrations._COPY_MARK`), onto a row
# the table has unfinished only (a run another replica ended there keeps its end), and
# only while that row is as a copy left it (or no copy marked it: one of an earlier
# version): a run another executor took over there is left. A cancel requested there is
# kept (another replica's, between two passes of the copy).
_COPY_MARK = "copied_status, copied_lease_owner"
_MARKED = ("status", "lease_owner")  # what the mark repeats
_RUN_COPY_MARKED = (
    f"INSERT INTO code_hero_runs ({RUN_COLUMNS}, {_COPY_MARK}) "
    f"VALUES ({', '.join('?' for _ in (*RUN_FIELDS, *_MARKED))}) "
    "ON CONFLICT (run_id) DO UPDATE SET "
    + ", ".join(
        f"{name} = excluded.{name} OR code_hero_runs.{name}"
        if name == "cancel_requested"
        else f"{name} = excluded.{name}"
        for name in RUN_FIELDS[1:]
    )
    + ", "
    + ", ".join(f"copied_{name} = excluded.copied_{name}" for name in _MARKED)
    + " WHERE code_hero_runs.status IN ('PENDING', 'RUNNING') "
    "AND (code_hero_runs.copied_status IS NULL OR {as_copied})"
)


class _Tombstoned(Exception):
    """A copy's thread was deleted (its tombstone): its write is rolled back."""


def _taken_over(row: Row) -> bool:
    """Whether a run's row (its `as_copied` and `unmarked`, read under its lock) is no
    longer as an outage's copy left it: another executor took it over, or ended it."""
    return not (row["as_copied"] or row["unmarked"])


def _page_size(first: int) -> int:
    if first < 0:
        raise BadInputError(f"first must not be negative, got {first}")
    return first


def _limit(rows: int) -> str:
    """A page's LIMIT, written into its text rather than passed as a parameter.

    PostgreSQL plans a prepared statement generically once its first five custom plans
    show that a generic one costs no more; a generic plan must guess a parameter's
    LIMIT (a tenth of the rows), so it always cost more and every page was planned
    afresh (~0.1 ms of the server's time a page, issue 15). Written in, the limit is
    known to the generic plan; a page size is one of at most `max_page` texts.
    """
    return f"LIMIT {int(rows)}"


def _where(clauses: Sequence[str]) -> str:
    return f"WHERE {' AND '.join(clauses)}" if clauses else ""


class SqlRegistry(
    RunClaims, ThreadEdits, ThreadLifecycle, ThreadTombstones, RunStatsQueries, Registry
):
    """Threads, runs and events in SQL; a subclass supplies the dialect."""

    # --- setup --------------------------------------------------------------

    async def setup(self) -> None:
        async with self._session(atomic=True) as s:
            if self.migration_lock is not None:
                await s.execute(self.migration_lock, [MIGRATION_LOCK_KEY])
            first = self.migrations[0]
            assert isinstance(first, str)  # creates code_hero_migrations: one statement
            await s.execute(first)
            rows = await s.fetch("SELECT MAX(v) AS v FROM code_hero_migrations")
            current = -1 if rows[0]["v"] is None else int(rows[0]["v"])
            for version in range(current + 1, len(self.migrations)):
                migration = self.migrations[version]
                for statement in (migration,) if isinstance(migration, str) else migration:
                    await s.execute(statement)
                await s.execute("INSERT INTO code_hero_migrations (v) VALUES (?)", [version])

    # --- threads ------------------------------------------------------------

    async def touch_threads(
        self,
        touches: Mapping[str, str | None],
        *,
        create: bool = True,
        unless_deleted_since: datetime | None = None,
    ) -> None:
        if not touches:
            return
        now = self._ts(utc_now())
        rows: list[tuple[Any, ...]]
        # An existing owner is kept: a touch fills in a missing user id, never changes one.
        if create and unless_deleted_since is not None:  # an outage's touch, replayed
            await self.touch_unless_deleted(touches, unless_deleted_since)
            return
        if create:
            sql = (
                f"INSERT INTO code_hero_threads ({THREAD_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (thread_id) DO UPDATE SET updated_at = excluded.updated_at, "
                "user_id = COALESCE(code_hero_threads.user_id, excluded.user_id)"
            )
            empty, idle = self._json({}), ThreadStatus.IDLE.value
            # Sorted, so that two concurrent batches lock their rows in the same order.
            rows = [(tid, touches[tid], idle, empty, now, now) for tid in sorted(touches)]
        else:
            sql = (
                "UPDATE code_hero_threads SET updated_at = ?, user_id = COALESCE(user_id, ?) "
                "WHERE thread_id = ?"
            )
            rows = [(now, touches[tid], tid) for tid in sorted(touches)]
        async with self._session(atomic=True) as s:
            await s.executemany(sql, rows)

    async def put_thread(self, thread: ThreadRecord, *, late: bool = False) -> bool:
        upsert, tombstone = self._thread_copy(thread, late=late)
        try:
            async with self._session(atomic=True) as s:
                # Both in one round trip with the BEGIN (a copy-back replays a thread's
                # row twice: issue 15).
                _, tombstoned = await s.fetch_pair(upsert, tombstone)
                if tombstoned:
                    raise _Tombstoned
        except _Tombstoned:
            return False
        return True

    def _thread_copy(
        self, thread: ThreadRecord, *, late: bool
    ) -> tuple[tuple[str, list[Any]], tuple[str, list[Any]]]:
        """A copy of a thread's row (`put_thread`): its upsert, and the look for a
        tombstone that refuses it, to run after the upsert in the same transaction.

        After the write, in a statement of its own: on PostgreSQL a deletion that held
        the row when the write came was waited for, and its tombstone is seen now (read
        committed); one that comes later waits for this commit and deletes the row.
        Tombstoned: rolled back, nothing written. A deleted thread of the id created at
        or after the copy's creation is this thread, or the row a run's admission made
        for it after the switch; one created before is an older incarnation
        (`tombstones.py`)."""
        sql = (
            f"INSERT INTO code_hero_threads ({THREAD_COLUMNS}, ttl_seconds, deletion_token, "
            "edit_until) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (thread_id) DO UPDATE SET "
            + (_LATE_THREAD_COPY if late else _THREAD_COPY)
        )
        # The edit's claim too: a copy of a thread an edit holds (an outage's) holds it. Not
        # a late one's: after the switch the edit's release went to the primary.
        held = None if late else thread.edit_until
        claim = None if held is None else self._ts(utc(held))
        tombstone = (
            "SELECT 1 AS one FROM code_hero_deleted_threads WHERE thread_id = ? AND created_at >= ?"
        )
        return (
            (sql, [*self._thread_params(thread), claim]),
            (tombstone, [thread.thread_id, self._ts(utc(thread.created_at))]),
        )

    async def copy_thread(
        self, thread: ThreadRecord, runs: Sequence[RunRecord], events: Sequence[EventRecord]
    ) -> bool:
        upsert, tombstone = self._thread_copy(thread, late=False)
        ids = sorted({run.run_id for run in runs})
        try:
            async with self._session(atomic=True) as s:
                # The thread's row, then its runs locked in run_id order: every writer's
                # lock order. On PostgreSQL the row's upsert waits for the session's next
                # trip: BEGIN, the upsert, the tombstone's look and the runs' statuses
                # before the copy go in one round trip; the rest with the COMMIT in the
                # next (issue 15: the copy-back's rate is bounded by its round trips).
                await s.executemany(upsert[0], [upsert[1]])
                before: list[Row] = []
                if ids:
                    cond, params = self._in("run_id", ids)
                    tombstoned, before = await s.fetch_pair(
                        tombstone,
                        (
                            f"SELECT run_id, status, {self._as_copied()} AS as_copied, "
                            "copied_status IS NULL AS unmarked FROM code_hero_runs "
                            f"WHERE {cond} ORDER BY run_id{self.for_update}",
                            params,
                        ),
                    )
                else:
                    tombstoned = await s.fetch(*tombstone)
                if tombstoned:
                    raise _Tombstoned
                # A run finished there (another replica's end committed before this copy
                # locked it) keeps its end and is not announced again, as `put_run`'s;
                # one in flight here too (copied by a first pass, ended there since). A
                # run no longer as a copy left it (another executor took it over there,
                # or ended it) is left whole: its events would collide with that
                # executor's or follow its end. (A row no copy marked is an earlier
                # version's copy: judged as that version did.)
                taken = {row["run_id"] for row in before if _taken_over(row)}
                left = taken | {
                    row["run_id"] for row in before if RunStatus(row["status"]).finished
                }
                ends: list[RunRecord] = []
                copy = self._run_copy_marked()
                for run in runs:
                    if run.run_id in left:
                        continue
                    if RunStatus(run.status).finished:
                        ends.append(run)
                    await s.executemany(copy, [self._marked_params(run)])
                events = [e for e in events if e.run_id not in taken]
                if events:  # in run order, as a deletion locks runs
                    ordered = sorted(events, key=lambda e: (e.run_id, e.seq))
                    await s.executemany(*self._copied_events(ordered))
                # Their webhook deliveries commit with them, as finish_run's do.
                queued = await self._enqueue_run_ends(s, ends, last=True)
        except _Tombstoned:
            return False
        if queued:
            self._outbox_committed()
        return True

    def _run_copy_marked(self) -> str:
        """An outage's copy of a run, marked (`_RUN_COPY_MARKED`), in this dialect."""
        return _RUN_COPY_MARKED.format(as_copied=self._as_copied())

    def _marked_params(self, run: RunRecord) -> list[Any]:
        """The parameters of `_run_copy_marked`: the run's, then its mark's."""
        _, params = self._run_copy(run)
        return [*params, *(params[RUN_FIELDS.index(name)] for name in _MARKED)]

    def _copied_events_if(
        self, events: Sequence[EventRecord], guard: str
    ) -> tuple[str, list[Sequence[Any]]]:
        """`_copied_events` of the runs whose row (`r`) passes `guard` only (the event
        `e`)."""
        each = ", ".join(f"? AS {name}" for name in EVENT_COLUMNS.split(", "))
        return (
            f"INSERT INTO code_hero_run_events ({EVENT_COLUMNS}) SELECT e.* FROM "
            f"(SELECT {each}) AS e WHERE EXISTS (SELECT 1 FROM code_hero_runs r "
            f"WHERE r.run_id = e.run_id AND {guard}) ON CONFLICT (run_id, seq) DO NOTHING",
            [self._event_params(e) for e in events],
        )

    def _copied_events(self, events: Sequence[EventRecord]) -> tuple[str, list[Sequence[Any]]]:
        """Copies of `events` (`copy_thread`, which orders them), skipping those stored
        already: an insert and its rows, for `executemany`."""
        return (
            f"INSERT INTO code_hero_run_events ({EVENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (run_id, seq) DO NOTHING",
            [self._event_params(e) for e in events],
        )

    async def get_thread(self, thread_id: str, *, expired: bool = False) -> ThreadRecord | None:
        live, now = ("TRUE", []) if expired else self._live()
        async with self._session() as s:
            rows = await s.fetch(
                f"SELECT {THREAD_READ_COLUMNS} FROM code_hero_threads "
                f"WHERE thread_id = ? AND {live}",
                [thread_id, *now],
            )
        return self._thread(rows[0]) if rows else None

    async def get_threads(self, thread_ids: Sequence[str]) -> dict[str, ThreadRecord]:
        if not thread_ids:
            return {}
        cond, params = self._in("thread_id", list(dict.fromkeys(thread_ids)))
        live, now = self._live()
        async with self._session() as s:
            rows = await s.fetch(
                f"SELECT {THREAD_READ_COLUMNS} FROM code_hero_threads WHERE {cond} AND {live}",
                [*params, *now],
            )
        return {row["thread_id"]: self._thread(row) for row in rows}

    def _thread_where(self, flt: ThreadFilter) -> tuple[list[str], list[Any]]:
        """The filter's conditions: shared by a listing and its count."""
        return thread_where(self, flt)

    async def list_threads(
        self,
        flt: ThreadFilter,
        *,
        first: int,
        after: str | None = None,
        order: ThreadOrder | None = None,
    ) -> Page[ThreadRecord]:
        first = _page_size(first)
        order = order or ThreadOrder()
        clauses, params = self._thread_where(flt)
        self._only_live(clauses, params)
        column = _THREAD_SORT[order.field]
        if after is not None:
            at, key = decode_cursor("thread", after, order)
            clauses.append(f"({column}, thread_id) {_AFTER[order.direction]} (?, ?)")
            params.extend([self._ts(at), key])
        found = await self._threads_of(
            f"FROM code_hero_threads {_where(clauses)} "
            f"ORDER BY {column} {order.direction}, thread_id {order.direction} "
            f"{_limit(first + 1)}",
            params,
        )
        items = found[:first]
        end = thread_cursor(items[-1], order) if items else None
        return Page(items=items, end_cursor=end, has_next_page=len(found) > first)

    async def _threads_of(self, rest: str, params: Sequence[Any]) -> list[ThreadRecord]:
        """The threads `SELECT <their columns> {rest}` finds, in its order."""
        async with self._session() as s:
            rows = await s.fetch(f"SELECT {THREAD_READ_COLUMNS} {rest}", params)
        return [self._thread(row) for row in rows]

    async def count_threads(self, flt: ThreadFilter) -> int:
        clauses, params = self._thread_where(flt)
        self._only_live(clauses, params)
        async with self._session() as s:
            rows = await s.fetch(
                f"SELECT count(*) AS n FROM code_hero_threads {_where(clauses)}", params
            )
        return int(rows[0]["n"])

    async def delete_thread(self, thread_id: str, *, marked: str | None = None) -> tuple[bool, int]:
        async with self._session(atomic=True) as s:
            # The lock order of every writer: the thread, then its runs by id. The
            # foreign keys would cascade; the explicit deletes also serve a fallback,
            # which keeps events of runs whose rows are in the primary.
            locked = await s.fetch(
                "SELECT ttl_seconds, deletion_token FROM code_hero_threads "
                f"WHERE thread_id = ?{self.for_update}",
                [thread_id],
            )
            if (
                marked is not None
                and locked
                and (locked[0]["ttl_seconds"] != 0 or locked[0]["deletion_token"] != marked)
            ):
                # Made anew since the deletion marked it (and maybe marked by another
                # deletion since, which stops its runs first): not this deletion's.
                return False, 0
            await s.fetch(
                "SELECT run_id FROM code_hero_runs WHERE thread_id = ? "
                f"ORDER BY run_id{self.for_update}",
                [thread_id],
            )
            # The outbox: THREAD_DELETED deliveries commit with the deletion.
            queued = await self._enqueue_thread_deleted(s, thread_id)
            await s.execute(
                "DELETE FROM code_hero_run_events WHERE run_id IN "
                "(SELECT run_id FROM code_hero_runs WHERE thread_id = ?)",
                [thread_id],
            )
            runs = await s.execute("DELETE FROM code_hero_runs WHERE thread_id = ?", [thread_id])
            # The tombstone, with the row's delete: a copy-back never brings it back.
            await s.execute(TOMBSTONE_FROM_ROW, [self._ts(utc_now()), thread_id])
            threads = await s.execute(
                "DELETE FROM code_hero_threads WHERE thread_id = ?", [thread_id]
            )
        if queued:
            self._outbox_committed()
        return threads > 0, runs

    async def thread_ids(self, *, updated_before: datetime | None = None) -> list[str]:
        sql, params = "SELECT thread_id FROM code_hero_threads", []
        if updated_before is not None:
            sql, params = f"{sql} WHERE updated_at < ?", [self._ts(utc(updated_before))]
        async with self._session() as s:
            rows = await s.fetch(sql, params)
        return [row["thread_id"] for row in rows]

    # --- runs ---------------------------------------------------------------

    async def update_run(self, run_id: str, **fields: Any) -> RunRecord | None:
        update, params = self._run_update("update_run", fields)
        if not fields:
            return await self.get_run(run_id)
        async with self._session() as s:
            rows = await s.fetch(f"{update} RETURNING {RUN_COLUMNS}", [*params, run_id], last=True)
        return self._run(rows[0]) if rows else None

    async def start_run(self, run_id: str, started_at: datetime) -> tuple[RunRecord | None, int]:
        # One statement for what were two (the RUNNING update, then a look for the last
        # seq) at every run's start (issue 15); the subquery reads what the UPDATE's
        # snapshot holds, as the look before it did.
        last_seq = (
            "(SELECT MAX(e.seq) FROM code_hero_run_events e WHERE e.run_id = code_hero_runs.run_id)"
        )
        update, params = self._run_update(
            "start_run",
            {"status": RunStatus.RUNNING, "started_at": started_at},
            also=f"seq_reserved = {self.greatest}(seq_reserved, COALESCE({last_seq}, 0)) + ?",
        )
        async with self._session() as s:
            rows = await s.fetch(
                f"{update} RETURNING {RUN_COLUMNS}, {last_seq} AS last_seq",
                [*params, SEQ_RESERVE, run_id],
                last=True,
            )
        if not rows:  # gone with its thread: so are its events
            return None, 0
        return self._run(rows[0]), int(rows[0]["last_seq"] or 0)

    async def update_held_run(
        self, run_id: str, owner: str | None, **fields: Any
    ) -> RunRecord | None:
        if not fields:
            return None
        update, params = self._run_update("update_held_run", fields)
        held, held_params = "", []
        if owner is not None:
            # Strictly `owner`'s: a run released meanwhile (by a replica that took it
            # over) is claimable, and a replayed renewal would hold its claims off.
            held, held_params = " AND lease_owner = ?", [owner]
        async with self._session() as s:
            rows = await s.fetch(
                f"{update} AND status IN ('PENDING', 'RUNNING'){held} RETURNING {RUN_COLUMNS}",
                [*params, run_id, *held_params],
            )
        return self._run(rows[0]) if rows else None

    async def get_run(self, run_id: str) -> RunRecord | None:
        async with self._session() as s:
            rows = await s.fetch(
                f"SELECT {RUN_COLUMNS} FROM code_hero_runs WHERE run_id = ?", [run_id]
            )
        return self._run(rows[0]) if rows else None

    async def get_runs(self, run_ids: Sequence[str]) -> dict[str, RunRecord]:
        if not run_ids:
            return {}
        cond, params = self._in("run_id", list(dict.fromkeys(run_ids)))
        async with self._session() as s:
            rows = await s.fetch(f"SELECT {RUN_COLUMNS} FROM code_hero_runs WHERE {cond}", params)
        return {row["run_id"]: self._run(row) for row in rows}

    def _run_where(self, flt: RunFilter) -> tuple[list[str], list[Any]]:
        """The filter's conditions (the owner's among them): shared by a listing and its count."""
        clauses: list[str] = []
        params: list[Any] = []
        for column, value in (
            ("thread_id", flt.thread_id),
            ("status", None if flt.status is None else RunStatus(flt.status).value),
            ("graph", flt.graph),
            ("user_id", flt.user_id),
        ):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if flt.statuses is not None:
            cond, extra = self._in("status", [RunStatus(s).value for s in flt.statuses])
            clauses.append(cond)
            params.extend(extra)
        if flt.metadata:
            cond, extra = self._contains("metadata", flt.metadata)
            clauses.append(f"({cond})")
            params.extend(extra)
        if flt.owner is not None:
            clauses.append(
                "thread_id IN (SELECT thread_id FROM code_hero_threads WHERE user_id = ?)"
            )
            params.append(flt.owner)
        if flt.created_after is not None:
            clauses.append("created_at > ?")
            params.append(self._ts(utc(flt.created_after)))
        if flt.created_before is not None:
            clauses.append("created_at < ?")
            params.append(self._ts(utc(flt.created_before)))
        return clauses, params

    async def list_runs(
        self,
        flt: RunFilter,
        *,
        first: int,
        after: str | None = None,
        order: RunOrder | None = None,
        expired: bool = False,
    ) -> Page[RunRecord]:
        first = _page_size(first)
        order = order or RunOrder()
        clauses, params = self._run_where(flt)
        if not expired:
            self._only_live_runs(clauses, params)
        if after is not None:
            at, key = decode_cursor("run", after, order)
            clauses.append(f"(created_at, run_id) {_AFTER[order.direction]} (?, ?)")
            params.extend([self._ts(at), key])
        sql = (
            f"SELECT {RUN_COLUMNS} FROM code_hero_runs {_where(clauses)} "
            f"ORDER BY created_at {order.direction}, run_id {order.direction} LIMIT ?"
        )
        async with self._session() as s:
            rows = await s.fetch(sql, [*params, first + 1])
        items = [self._run(row) for row in rows[:first]]
        last = items[-1] if items else None
        end = run_cursor(last, order) if last and last.created_at else None
        return Page(items=items, end_cursor=end, has_next_page=len(rows) > first)

    async def count_runs(self, flt: RunFilter) -> int:
        clauses, params = self._run_where(flt)
        self._only_live_runs(clauses, params)
        async with self._session() as s:
            rows = await s.fetch(
                f"SELECT count(*) AS n FROM code_hero_runs {_where(clauses)}", params
            )
        return int(rows[0]["n"])

    async def delete_run(self, run_id: str) -> bool:
        async with self._session(atomic=True) as s:
            await s.execute("DELETE FROM code_hero_run_events WHERE run_id = ?", [run_id])
            deleted = await s.execute("DELETE FROM code_hero_runs WHERE run_id = ?", [run_id])
        return deleted > 0

    def _run_copy(self, run: RunRecord) -> tuple[str, list[Any]]:
        """A run's upsert as given (`put_run`), with its parameters."""
        params = self._run_params(run)
        if run.created_at is None:
            params[RUN_FIELDS.index("created_at")] = self._ts(utc_now())
        return _RUN_COPY, params

    async def put_run(
        self,
        run: RunRecord,
        *,
        announce: bool = False,
        copied: bool = False,
        events: Sequence[EventRecord] = (),
    ) -> None:
        if copied:
            sql, params = self._run_copy_marked(), self._marked_params(run)
        else:
            sql, params = self._run_copy(run)
        queued = 0
        async with self._parent(f"thread {run.thread_id!r}"), self._session(atomic=True) as s:
            ends = announce and RunStatus(run.status).finished
            if not ends:
                await s.execute(sql, params, last=not events)
                await self._put_with_run(s, events, copied=copied)
                return
            # The status before the write, locked, and the write, in one round trip;
            # the deliveries, if any, with the COMMIT in the next (issue 15). Locked
            # and kept from a finished row: another replica's end committed while
            # this copy waited for the row is neither overwritten nor announced again;
            # nor, for a copy, a run another executor took over there.
            before, _ = await s.fetch_pair(
                (
                    f"SELECT status, {self._as_copied()} AS as_copied, "
                    "copied_status IS NULL AS unmarked FROM code_hero_runs "
                    f"WHERE run_id = ?{self.for_update}",
                    [run.run_id],
                ),
                (
                    sql
                    if copied
                    else f"{sql} WHERE code_hero_runs.status IN ('PENDING', 'RUNNING')",
                    params,
                ),
            )
            kept = before and (
                RunStatus(before[0]["status"]).finished or (copied and _taken_over(before[0]))
            )
            # Its events commit with it: a reader never sees its end without them.
            await self._put_with_run(s, events, copied=copied)
            if not kept:
                # It ends here (a run of a thread born in an outage, copied back): its
                # webhook deliveries commit with it, as finish_run's do.
                queued = await self._enqueue_run_end(s, run, last=True)
        if queued:
            self._outbox_committed()

    async def _put_with_run(
        self, s: Session, events: Sequence[EventRecord], *, copied: bool
    ) -> None:
        """`put_run`'s events, in its transaction: those stored already skipped, and for
        a copy only as a late copy's `put_events` takes them (`_copy_guard`)."""
        if not events:
            return
        ordered = sorted(events, key=lambda e: (e.run_id, e.seq))
        if copied:
            await s.executemany(*self._copied_events_if(ordered, self._copy_guard("late")))
        else:
            await s.executemany(*self._copied_events(ordered))

    # --- events -------------------------------------------------------------

    async def store_events(self, events: Sequence[EventRecord]) -> None:
        await self.store_batch(events, {})

    async def store_batch(
        self,
        events: Sequence[EventRecord],
        runs: Mapping[str, Mapping[str, Any]],
        *,
        held_by: Mapping[str, str] | None = None,
    ) -> set[str]:
        sql = f"INSERT INTO code_hero_run_events ({EVENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)"
        async with self._unique("an event whose (run, seq) is already stored"):
            return await self._insert_events(sql, events, runs, held_by=held_by)

    async def put_events(
        self,
        events: Sequence[EventRecord],
        *,
        if_leased_by: str | None = None,
        as_copy: Literal["on_time", "late"] | None = None,
    ) -> None:
        sql = (
            f"INSERT INTO code_hero_run_events ({EVENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (run_id, seq) DO NOTHING"
        )
        if if_leased_by is None and as_copy is None:
            await self._insert_events(sql, events)
            return
        ids = sorted({e.run_id for e in events})
        if not ids:
            return
        cond, params = self._in("run_id", ids)
        if as_copy is not None and if_leased_by is None:
            await self._put_copied_events(events, cond, params, as_copy)
            return
        async with self._session(atomic=True) as s:
            # Checked on the runs' rows, locked: a claim racing the copy passes them over
            # until it commits (then numbers on after these events), or came first (they
            # are left out).
            held = await s.fetch(
                f"SELECT run_id FROM code_hero_runs WHERE {cond} AND lease_owner = ? "
                f"AND status IN ('PENDING', 'RUNNING') ORDER BY run_id{self.for_update}",
                [*params, if_leased_by],
            )
            mine = {row["run_id"] for row in held}
            rows = [
                self._event_params(e)
                for e in sorted(events, key=lambda e: (e.run_id, e.seq))
                if e.run_id in mine
            ]
            if rows:
                await s.executemany(sql, rows)

    async def _put_copied_events(
        self,
        events: Sequence[EventRecord],
        cond: str,
        params: Sequence[Any],
        as_copy: Literal["on_time", "late"],
    ) -> None:
        """`put_events(as_copy=...)`: the events of runs whose rows, locked, pass the
        copy's look (`Registry.put_events`), in one round trip on PostgreSQL (the lock and
        the guarded insert wait for the COMMIT's trip), as an unguarded copy takes."""
        guard = self._copy_guard(as_copy)
        ordered = sorted(events, key=lambda e: (e.run_id, e.seq))
        async with self._session(atomic=True) as s:
            if self.for_update:
                # Locked in run order first: a claim racing the copy passes them over
                # until it commits (then numbers on after these events), or came first
                # (they are left out). A run deleted meanwhile takes none.
                await s.executemany(
                    f"SELECT run_id FROM code_hero_runs WHERE {cond} "
                    f"ORDER BY run_id{self.for_update}",
                    [params],
                )
            await s.executemany(*self._copied_events_if(ordered, guard))

    def _copy_guard(self, as_copy: Literal["on_time", "late"]) -> str:
        """Whether a copy's event `e` goes onto its run's row `r` (`put_events(as_copy=)`)."""
        if as_copy == "on_time":  # an unmarked row: an earlier version's copy took them
            return f"(r.copied_status IS NULL OR {self._as_copied('r')})"
        # nor, past the end another executor wrote there, the events after it
        return (
            f"(r.copied_status IS NULL OR {self._as_copied('r')} "
            f"OR (NOT {self._taken_by_another('r')} AND (r.status IN ('PENDING', 'RUNNING') "
            "OR e.seq <= (SELECT max(x.seq) FROM code_hero_run_events x "
            "WHERE x.run_id = e.run_id))))"
        )

    async def _insert_events(
        self,
        sql: str,
        events: Sequence[EventRecord],
        runs: Mapping[str, Mapping[str, Any]] | None = None,
        *,
        held_by: Mapping[str, str] | None = None,
    ) -> set[str]:
        """Insert in one transaction (with the `runs` field updates); on a foreign-key
        violation, again without the events of runs that are gone (a run that ends
        after its thread's deletion leaves none). The runs of `held_by` not leased by
        the executor it names (taken over, or ended) are left out: their ids returned."""
        runs = runs or {}
        for _ in range(_GONE_RETRIES):
            if not events and not runs:
                return set()
            # In run order: the foreign-key checks lock the runs in the order a deletion
            # locks them; the updates follow, in the same order.
            ordered = sorted(events, key=lambda e: (e.run_id, e.seq))
            try:
                async with self._session(atomic=True) as s:
                    return await self._write_held(s, sql, ordered, runs, held_by or {})
            except Exception as exc:
                if not self._is_orphan(exc):
                    raise
            present = await self.get_runs([e.run_id for e in events])
            events = [e for e in events if e.run_id in present]
        raise NotFoundError("runs of these events keep being deleted: the events are dropped")

    async def _write_held(
        self,
        s: Session,
        sql: str,
        events: Sequence[EventRecord],
        runs: Mapping[str, Mapping[str, Any]],
        held_by: Mapping[str, str],
    ) -> set[str]:
        """An event batch's writes in the atomic session `s` (`_write_events`) but for
        the runs of `held_by` their executor no longer holds (`_not_held`): their ids."""
        lost = await self._not_held(s, events, runs, held_by)
        if lost:
            events = [e for e in events if e.run_id not in lost]
            runs = {k: v for k, v in runs.items() if k not in lost}
        if events or runs:
            await self._write_events(s, sql, events, runs)
        return lost

    async def _not_held(
        self,
        s: Session,
        events: Sequence[EventRecord],
        runs: Mapping[str, Mapping[str, Any]],
        held_by: Mapping[str, str],
    ) -> set[str]:
        """The runs of `held_by` that the executor it names does not hold: taken over by
        another (a stall past the lease: a GC pause, a frozen VM, SIGSTOP), or ended.
        Their rows stay locked (all the batch's runs, in run order, as the writes lock
        them) until the batch commits: a claim passes them over until then (SKIP
        LOCKED), and its holder numbers on after the events stored here. Unchecked, an
        executor back from a stall would store events at seqs its successor numbers
        too: the successor's collide and it is fenced, its end stored without them."""
        ids = sorted({*(e.run_id for e in events), *runs})
        if not any(run_id in held_by for run_id in ids):
            return set()
        cond, params = self._in("run_id", ids)
        rows = await s.fetch(
            f"SELECT run_id, lease_owner, status FROM code_hero_runs WHERE {cond} "
            f"ORDER BY run_id{self.for_update}",
            params,
        )
        return {
            row["run_id"]
            for row in rows
            if row["run_id"] in held_by
            and (
                row["lease_owner"] != held_by[row["run_id"]]
                or row["status"] not in ("PENDING", "RUNNING")
            )
        }

    async def _write_events(
        self,
        s: Session,
        sql: str,
        events: Sequence[EventRecord],
        runs: Mapping[str, Mapping[str, Any]],
    ) -> None:
        """An event batch's writes in the atomic session `s`: `events` (in run order)
        inserted by `sql`, `runs`' fields set."""
        updates = self._run_updates(runs)
        if updates and self.for_update:
            # The runs in run order before the inserts' key locks: an update after them
            # would strengthen a lock out of order. Its rows are not read: it waits, as a
            # batch does, for the session's one trip with the inserts, the updates and
            # COMMIT (issue 15).
            ids = sorted({*(e.run_id for e in events), *runs})
            cond, ids_param = self._in("run_id", ids)
            await s.executemany(
                f"SELECT run_id FROM code_hero_runs WHERE {cond} ORDER BY run_id{self.for_update}",
                [ids_param],
            )
        if events:
            await s.executemany(sql, [self._event_params(e) for e in events])
        for update, params in updates:
            await s.executemany(update, params)

    def _run_updates(
        self, runs: Mapping[str, Mapping[str, Any]]
    ) -> list[tuple[str, list[list[Any]]]]:
        """UPDATE statements setting each run's fields: one per set of field names (the
        event log sends the same set for every run), with the rows in run order."""
        grouped: dict[str, list[list[Any]]] = {}
        for run_id in sorted(runs):
            update, params = self._run_update("store_batch", runs[run_id])
            if params:  # no fields: nothing to set
                grouped.setdefault(update, []).append([*params, run_id])
        return list(grouped.items())

    async def list_events(
        self,
        run_id: str,
        *,
        after_seq: int = 0,
        limit: int | None = None,
        types: Collection[str] | None = None,
    ) -> list[EventRecord]:
        sql = f"SELECT {EVENT_COLUMNS} FROM code_hero_run_events WHERE run_id = ? AND seq > ?"
        params: list[Any] = [run_id, after_seq]
        if types is not None:  # a filtered replay skips what it would drop, in SQL
            wanted = sorted(types)
            sql += f" AND type IN ({', '.join('?' * len(wanted))})" if wanted else " AND 1 = 0"
            params += wanted
        sql += " ORDER BY seq"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(_page_size(limit))
        async with self._session() as s:
            rows = await s.fetch(sql, params)
        return [self._event(row) for row in rows]

    async def last_seq(self, run_id: str) -> int:
        async with self._session() as s:
            rows = await s.fetch(
                "SELECT MAX(seq) AS seq FROM code_hero_run_events WHERE run_id = ?", [run_id]
            )
        return int(rows[0]["seq"] or 0)

    async def thread_seqs(self, thread_id: str, *, since: datetime | None = None) -> dict[str, int]:
        # The thread's runs on code_hero_runs_thread_idx, each one's last seq on the
        # events' primary key (of the runs kept only): no scan of the thread's events.
        cond, params = "", [thread_id]
        if since is not None:
            cond = "WHERE t.status IN ('PENDING', 'RUNNING') OR t.created_at >= ? "
            params.append(self._ts(utc(since)))
        async with self._session() as s:
            rows = await s.fetch(
                f"{thread_runs('run_id, status, created_at')}SELECT t.run_id, (SELECT "
                "MAX(e.seq) FROM code_hero_run_events e WHERE e.run_id = t.run_id) AS seq "
                f"FROM thread_runs t {cond}ORDER BY t.created_at, t.run_id",
                params,
            )
        return {row["run_id"]: int(row["seq"] or 0) for row in rows}
