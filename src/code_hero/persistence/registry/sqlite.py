"""The registry on SQLite: its session, and metadata containment compiled to JSON1.

SQLite has no `@>`: `_contains` walks the subset's leaves and compares each
with `json_extract`/`json_type` (or, for keys a JSON path cannot quote, with
`json_each`; an array leaf, with `json_each` over its elements), so a filter on
thread metadata means on SQLite what it means on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, ClassVar, TypeVar

import aiosqlite

from code_hero.persistence.jsontext import loads
from code_hero.persistence.migrations import SQLITE_MIGRATIONS, Migration
from code_hero.persistence.records import ThreadPurge
from code_hero.persistence.registry.dialect import Row, Session, dumps, utc_now
from code_hero.persistence.registry.sql import SqlRegistry
from code_hero.persistence.registry.tombstones import TOMBSTONE_FROM_ROW

__all__ = ["SqliteRegistry"]

T = TypeVar("T")


def _unquotable(key: str) -> bool:
    """True for a key that a quoted JSON path label cannot spell: SQLite has no escapes
    in a label, and matches it against the key as stored, escapes and all, while the
    registry stores JSON as json.dumps writes it: a key with a non-ASCII or control
    character is there as `\\u` escapes ("日本" as "\\u65e5\\u672c"), which no label
    matches. `json_each` compares keys decoded."""
    return any(c in '"\\' or not " " <= c <= "~" for c in key)


def _sqlite_path(keys: Sequence[str]) -> str:
    return "$" + "".join(f'."{key}"' for key in keys)


def _sqlite_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _sqlite_leaf(value_sql: str, type_sql: str, leaf: Any, depth: int = 0) -> tuple[str, list[Any]]:
    """A condition on one leaf, given SQL for its value and for its JSON type."""
    if leaf is None:
        return f"{type_sql} = 'null'", []
    if isinstance(leaf, bool):
        return f"{type_sql} = ?", ["true" if leaf else "false"]
    if isinstance(leaf, Mapping):  # an empty object: any object is there
        return f"{type_sql} = 'object'", []
    if isinstance(leaf, list):
        return _sqlite_array(value_sql, type_sql, leaf, depth)
    # The type test keeps true from matching 1, and "[1]" from matching [1].
    kinds = "'text'" if isinstance(leaf, str) else "'integer', 'real'"
    return f"{type_sql} IN ({kinds}) AND {value_sql} = json_extract(?, '$')", [dumps(leaf)]


def _sqlite_array(
    value_sql: str, type_sql: str, items: Sequence[Any], depth: int
) -> tuple[str, list[Any]]:
    """An array that contains each item (in any order), as PostgreSQL's @>: an object
    item is contained by an object element holding it, an array item by an array element
    containing it, any other by an equal element. Texts and numbers are matched in one
    pass over the array (not one parse and scan an item: 60 rows took 10 s with many)."""
    alias = f"a{depth}"  # its own name at each depth: an inner one reads the outer one
    clauses, params = [], []
    # Texts and numbers: the distinct ones met among the elements, looked up in the
    # items (a subquery of no row's, made once a statement), are as many as SQLite tells
    # the items apart (1 and 1.0 are one, as 10**23 and 1e23 are; json_each's columns
    # have no affinity, so "1" is never 1).
    atoms = list(
        dict.fromkeys(
            item
            for item in items
            if isinstance(item, (str, int, float)) and not isinstance(item, bool)
        )
    )
    if len(atoms) == 1:  # no subquery for the items: nested arrays stay within the
        # parser's stack (10 levels of not around 5 of arrays)
        cond, extra = _sqlite_leaf(f"{alias}.value", f"{alias}.type", atoms[0], depth + 1)
        clauses.append(f"EXISTS (SELECT 1 FROM json_each({value_sql}) AS {alias} WHERE {cond})")
        params.extend(extra)
    elif atoms:
        clauses.append(
            f"(SELECT count(DISTINCT {alias}.atom) FROM json_each({value_sql}) AS {alias} "
            f"WHERE {alias}.type IN ('text', 'integer', 'real') "
            f"AND {alias}.atom IN (SELECT value FROM json_each(?))) = "
            "(SELECT count(DISTINCT value) FROM json_each(?))"
        )
        params.extend([dumps(atoms), dumps(atoms)])
    for item in dict.fromkeys(i for i in items if i is None or isinstance(i, bool)):
        kind = "'null'" if item is None else ("'true'" if item else "'false'")
        clauses.append(
            f"EXISTS (SELECT 1 FROM json_each({value_sql}) AS {alias} WHERE {alias}.type = {kind})"
        )
    for item in items:
        if isinstance(item, Mapping) and item:
            cond, extra = _sqlite_contains(f"{alias}.value", item, depth + 1)
            cond = f"{alias}.type = 'object' AND {cond}"
        elif isinstance(item, (Mapping, list)):
            cond, extra = _sqlite_leaf(f"{alias}.value", f"{alias}.type", item, depth + 1)
        else:
            continue  # a scalar: above
        clauses.append(f"EXISTS (SELECT 1 FROM json_each({value_sql}) AS {alias} WHERE {cond})")
        params.extend(extra)
    # The type first: SQLite evaluates AND left to right (3.40; not promised), so no
    # text element reaches json_each (CASE, which is promised, overflowed the parser's
    # stack at the deepest nesting allowed).
    clauses.insert(0, f"{type_sql} = 'array'")
    return " AND ".join(f"({c})" for c in clauses), params


def _sqlite_contains(
    column: str, subset: Mapping[str, Any], depth: int = 0
) -> tuple[str, list[Any]]:
    """A condition: the JSON object in `column` contains `subset` (not empty)."""
    clauses: list[str] = []
    params: list[Any] = []
    for path, leaf in _leaves(subset):
        if not any(_unquotable(key) for key in path):
            json_path = _sqlite_literal(_sqlite_path(path))
            cond, extra = _sqlite_leaf(
                f"json_extract({column}, {json_path})",
                f"json_type({column}, {json_path})",
                leaf,
                depth,
            )
            clauses.append(cond)
            params.extend(extra)
            continue
        # SQLite's JSON paths cannot spell such a key ('"', an escaped character), so
        # walk such paths with json_each, which compares keys decoded.
        parent, parent_params = column, []
        for key in path[:-1]:
            parent = f"(SELECT value FROM json_each({parent}) WHERE key = ? AND type = 'object')"
            parent_params.append(key)
        cond, extra = _sqlite_leaf("e.value", "e.type", leaf, depth)
        clauses.append(
            f"EXISTS (SELECT 1 FROM json_each({parent}) AS e WHERE e.key = ? AND {cond})"
        )
        params.extend([*parent_params, path[-1], *extra])
    return " AND ".join(f"({c})" for c in clauses), params


def _leaves(
    subset: Mapping[str, Any], prefix: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], Any]]:
    for key, value in subset.items():
        if isinstance(value, Mapping) and value:
            yield from _leaves(value, (*prefix, str(key)))
        else:
            yield (*prefix, str(key)), value


# Statements whose result columns are known, at most this many (filters make SQL of
# their own, so the texts are not a fixed set).
MAX_KNOWN_COLUMNS = 512


class _SqliteSession:
    def __init__(
        self,
        conn: aiosqlite.Connection,
        columns: dict[str, list[str]],
        *,
        begin: bool = False,
        defer: bool = True,
    ) -> None:
        self._conn = conn
        self._columns = columns
        # An atomic session's BEGIN IMMEDIATE, sent with its first statement: one
        # trip to aiosqlite's thread fewer (a run's admission, end and event batches
        # each open one). It takes the write lock at the same point as a trip of its
        # own would, before any statement of the session has run.
        self._begin = begin
        # `executemany` answers nothing, so it waits for the session's next trip (a
        # statement, or the commit) and goes with it, in order: a run's admission
        # and end each store events that way, and an event batch is one trip, its
        # BEGIN, inserts and commit together. Its error, if any, comes from that
        # trip, in the same transaction, which is rolled back whole. Not in
        # `transaction()`, whose callers use the connection itself.
        self._defer = defer
        self._deferred: list[tuple[str, Sequence[Sequence[Any]]]] = []

    async def fetch(self, sql: str, params: Sequence[Any] = (), *, last: bool = False) -> list[Row]:
        # Every call is a round trip to aiosqlite's thread, and the connection's lock is
        # held through each: a statement's columns follow from its text (the registry
        # names its columns, never `*`), so once known, one `execute_fetchall` trip
        # replaces execute + fetchall + close.
        names = self._columns.get(sql)
        rows: Iterable[Sequence[Any]]
        if self._begin or self._deferred or last:
            rows, found = await self._on_thread(_fetch, sql, params, last=last)
        elif names is not None:
            rows, found = await self._conn.execute_fetchall(sql, params), names
        else:
            async with self._conn.execute(sql, params) as cur:
                rows = await cur.fetchall()
                found = [d[0] for d in cur.description or ()]
        if names is None:
            self._remember(sql, found)
            names = found
        return [dict(zip(names, row, strict=True)) for row in rows]

    async def fetch_pair(
        self,
        first: tuple[str, Sequence[Any]],
        second: tuple[str, Sequence[Any]],
        *,
        last: bool = False,
    ) -> tuple[list[Row], list[Row]]:
        head, tail = await self.fetch_each([first, second], last=last)
        return head, tail

    async def fetch_each(
        self, statements: Sequence[tuple[str, Sequence[Any]]], *, last: bool = False
    ) -> list[list[Row]]:
        # One trip to aiosqlite's thread for them all (issue 15): each trip is a hop to
        # that thread and back, with the connection's lock held throughout.
        found = await self._on_thread(_fetch_each, statements, last=last)
        answers = []
        for (sql, _), (rows, names) in zip(statements, found, strict=True):
            self._remember(sql, names)
            answers.append([dict(zip(names, row, strict=True)) for row in rows])
        return answers

    def _remember(self, sql: str, names: list[str]) -> None:
        if sql not in self._columns:
            if len(self._columns) >= MAX_KNOWN_COLUMNS:
                self._columns.clear()
            self._columns[sql] = names

    # A statement that returns no rows has run to its end once `execute` returns: its
    # cursor is left to the garbage collector rather than closed in a trip of its own.
    async def execute(self, sql: str, params: Sequence[Any] = (), *, last: bool = False) -> int:
        if self._begin or self._deferred or last:
            rowcount: int = await self._on_thread(_execute, sql, params, last=last)
            return rowcount
        cur = await self._conn.execute(sql, params)
        return cur.rowcount

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if self._defer:
            self._deferred.append((sql, rows))
        elif self._begin:
            await self._on_thread(_executemany, sql, rows)
        else:
            await self._conn.executemany(sql, rows)

    async def commit(self) -> None:
        """Commit the session's transaction, with the statements still waiting."""
        if self._begin or self._deferred:
            await _to_the_end(self._on_thread(_nothing, last=True))
        elif self._conn.in_transaction:
            await _to_the_end(self._conn.commit())

    async def _on_thread(self, call: Callable[..., T], *args: Any, last: bool = False) -> T:
        """BEGIN IMMEDIATE (an atomic session's first trip), the statements waiting,
        `call(connection, *args)` and (`last`) the commit, in one trip on aiosqlite's
        thread (the queue all its own methods use)."""
        begin, self._begin = self._begin, False
        deferred, self._deferred = self._deferred, []
        result: T = await self._conn._execute(  # type: ignore[no-untyped-call]
            _trip, self._conn._conn, begin, deferred, last, call, *args
        )
        return result


def _trip(
    conn: sqlite3.Connection,
    begin: bool,
    deferred: Sequence[tuple[str, Sequence[Sequence[Any]]]],
    commit: bool,
    call: Callable[..., T],
    *args: Any,
) -> T:
    # IMMEDIATE takes the write lock now: another process cannot slip in between our
    # first read and first write.
    if begin and not conn.in_transaction:
        conn.execute("BEGIN IMMEDIATE")
    for sql, rows in deferred:
        conn.executemany(sql, rows)
    result = call(conn, *args)
    if commit and conn.in_transaction:  # a failed statement above leaves it to the rollback
        conn.commit()
    return result


def _nothing(conn: sqlite3.Connection) -> None:
    return None


def _fetch(
    conn: sqlite3.Connection, sql: str, params: Sequence[Any]
) -> tuple[list[Any], list[str]]:
    cur = conn.execute(sql, params)
    try:
        return cur.fetchall(), [d[0] for d in cur.description or ()]
    finally:
        cur.close()


def _fetch_each(
    conn: sqlite3.Connection, statements: Sequence[tuple[str, Sequence[Any]]]
) -> list[tuple[list[Any], list[str]]]:
    return [_fetch(conn, sql, params) for sql, params in statements]


def _execute(conn: sqlite3.Connection, sql: str, params: Sequence[Any]) -> int:
    return conn.execute(sql, params).rowcount


def _executemany(conn: sqlite3.Connection, sql: str, rows: Sequence[Sequence[Any]]) -> None:
    conn.executemany(sql, rows)


class SqliteRegistry(SqlRegistry):
    """The registry in the SQLite database of the checkpoints, on the saver's connection.

    Every statement runs under `lock`, the one the `AsyncSqliteSaver` holds on the
    same connection, and each write commits before the lock is released. The
    foreign keys hold only on a connection with `PRAGMA foreign_keys = ON`, which
    the backends turn on (a fallback's stays off: it keeps the events of runs whose
    rows are in the primary).
    """

    migrations: ClassVar[Sequence[Migration]] = SQLITE_MIGRATIONS

    # Times are fixed-width ISO text: whole seconds from strftime, microseconds from
    # characters 21-26, so a duration is exact to the microsecond (julianday is not).
    duration_ms_sql: ClassVar[str] = (
        "(((CAST(strftime('%s', finished_at) AS INTEGER)"
        " - CAST(strftime('%s', started_at) AS INTEGER)) * 1000000"
        " + CAST(substr(finished_at, 21, 6) AS INTEGER)"
        " - CAST(substr(started_at, 21, 6) AS INTEGER)) / 1000.0)"
    )
    bucket_key_sql: ClassVar[str] = "substr(created_at, 1, {length})"

    def __init__(self, conn: aiosqlite.Connection, lock: asyncio.Lock) -> None:
        self.conn = conn
        self.lock = lock
        self._columns: dict[str, list[str]] = {}  # result columns by statement text

    @asynccontextmanager
    async def _session(self, *, atomic: bool = False, defer: bool = True) -> AsyncIterator[Session]:
        async with self.lock:
            session = _SqliteSession(self.conn, self._columns, begin=atomic, defer=defer)
            try:
                yield session
                await session.commit()
            except BaseException:
                # A commit that failed (its waiting statements refused, the file busy)
                # leaves the transaction open: the next session must not carry it on.
                await _to_the_end(self.conn.rollback())
                raise

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Session]:
        """One write transaction on the shared connection, under its lock, taken at once
        and rolled back on any error or cancellation: for the backend's own statements on
        the saver's tables (a transaction left open would carry the next caller's).

        BEGIN IMMEDIATE goes out here, not with the session's first statement: the
        backend's callers run theirs on the connection itself, and one that looks
        before it deletes (`delete_orphan_checkpoints`) must hold the write lock from
        its look on, or another process could commit a thread made anew in between."""
        async with self._session(defer=False) as session:
            await self.conn.execute("BEGIN IMMEDIATE")
            yield session

    async def purge_idle_thread(
        self, thread_id: str, live_at: datetime | None, owner: str | None = None
    ) -> ThreadPurge:
        """Delete the thread's registry rows and its checkpoints (the saver's tables are in
        this file) in one transaction, unless it has unfinished runs, an edit's claim, had
        expired at `live_at` or (with `owner`) is not that user's: then nothing is deleted."""
        outbox = self._thread_deleted_insert(thread_id)
        live = None if live_at is None else self._ts(live_at)
        async with self.lock:
            # The whole transaction in one call on aiosqlite's thread: the two steps
            # made thirteen trips there (each handed on by the event loop) and two
            # commits (issue 15). A cancellation waits for its end, as a session does.
            connection = self.conn._conn
            step = self.conn._execute(  # type: ignore[no-untyped-call]
                _purge_idle, connection, thread_id, live, self._ts(utc_now()), owner, outbox
            )
            done: tuple[ThreadPurge, int] = await _to_the_end(step)
        purged, queued = done
        if queued:
            self._outbox_committed()
        return purged

    def _json(self, value: Any) -> Any:
        return dumps(value)

    def _from_json(self, value: Any) -> Any:
        return None if value is None else loads(value)

    def _ts(self, value: datetime) -> Any:
        # Fixed width (always microseconds, always +00:00), so text order is time order.
        return value.astimezone(UTC).isoformat(timespec="microseconds")

    def _from_ts(self, value: Any) -> datetime:
        return datetime.fromisoformat(value)

    def _contains(self, column: str, subset: Mapping[str, Any]) -> tuple[str, list[Any]]:
        # As JSONB: numbers compare by value (1 matches 1.0), an array leaf matches any
        # array that contains its items (`_sqlite_array`).
        return _sqlite_contains(column, subset)

    def _in_many(self, column: str, values: Sequence[str]) -> tuple[str, list[Any]]:
        return f"{column} IN (SELECT value FROM json_each(?))", [dumps(list(values))]

    def _has_keys(self, column: str, keys: Sequence[str]) -> tuple[str, list[Any]]:
        # json_each walks the object's top-level keys as plain text: any key works.
        wanted = list(dict.fromkeys(keys))
        return (
            f"(SELECT count(*) FROM json_each({column}) "
            "WHERE key IN (SELECT value FROM json_each(?))) = ?"
        ), [dumps(wanted), len(wanted)]

    def _subscribed(self, column: str, event: str) -> tuple[str, list[Any]]:
        # The pattern in the text, not a parameter: SQLite plans a LIKE by its pattern, so
        # a statement whose pattern is bound is prepared afresh at every execution (a
        # deletion's outbox insert: 20 us of its 350 on aiosqlite's thread, issue 15).
        # An event's name is letters and underscores: nothing to quote.
        if not event.replace("_", "").isalpha():
            raise ValueError(f"not an event name: {event!r}")
        return f"{column} LIKE '%,{event},%'", []

    def _is_duplicate(self, exc: BaseException) -> bool:
        return isinstance(exc, sqlite3.IntegrityError) and exc.sqlite_errorcode in (
            1555,  # SQLITE_CONSTRAINT_PRIMARYKEY
            2067,  # SQLITE_CONSTRAINT_UNIQUE
        )

    def _is_orphan(self, exc: BaseException) -> bool:
        # SQLITE_CONSTRAINT_FOREIGNKEY; only raised on a connection with foreign_keys on.
        return isinstance(exc, sqlite3.IntegrityError) and exc.sqlite_errorcode == 787


# Whether the thread may go now: its runs are all finished, it had not expired, it is
# the named owner's (with no owner named, anyone's).
_IDLE_CHECKS = (
    "SELECT EXISTS (SELECT 1 FROM code_hero_runs WHERE thread_id = ? "
    "AND status IN ('PENDING', 'RUNNING')), "
    # An edit between its claim and its write would write onto the deleted thread.
    "EXISTS (SELECT 1 FROM code_hero_threads WHERE thread_id = ? AND edit_until > ?), "
    # A ttl of 0 is a deletion under way (`start_deletion`) that failed: a retry ends it.
    "EXISTS (SELECT 1 FROM code_hero_threads WHERE thread_id = ? AND expires_at <= ? "
    "AND ttl_seconds IS NOT 0), "
    "? IS NOT NULL AND NOT EXISTS (SELECT 1 FROM code_hero_threads "
    "WHERE thread_id = ? AND user_id = ?)"
)


def _purge_idle(
    conn: sqlite3.Connection,
    thread_id: str,
    live: str | None,
    now: str,
    owner: str | None,
    outbox: tuple[str, list[Any]],
) -> tuple[ThreadPurge, int]:
    """`SqliteRegistry.purge_idle_thread`'s transaction, on aiosqlite's thread; what it
    did and how many THREAD_DELETED deliveries it queued."""
    if not conn.in_transaction:
        # IMMEDIATE takes the write lock before the checks: no other process admits a
        # run between them and the deletes.
        conn.execute("BEGIN IMMEDIATE")
    try:
        busy, edited, expired, foreign = conn.execute(
            _IDLE_CHECKS, (thread_id, thread_id, now, thread_id, live, owner, thread_id, owner)
        ).fetchone()
        checkpoints = runs = threads = queued = 0
        if not (busy or edited or expired or foreign):
            # The stock adelete_thread's two deletes, then SqlRegistry.delete_thread's
            # (the outbox insert first: it reads the thread's owner).
            key = (thread_id,)
            checkpoints = conn.execute("DELETE FROM checkpoints WHERE thread_id = ?", key).rowcount
            conn.execute("DELETE FROM writes WHERE thread_id = ?", key)
            queued = conn.execute(*outbox).rowcount
            conn.execute(
                "DELETE FROM code_hero_run_events WHERE run_id IN "
                "(SELECT run_id FROM code_hero_runs WHERE thread_id = ?)",
                key,
            )
            runs = conn.execute("DELETE FROM code_hero_runs WHERE thread_id = ?", key).rowcount
            # The tombstone, with the row's delete: a copy-back never brings it back.
            conn.execute(TOMBSTONE_FROM_ROW, (now, thread_id))
            threads = conn.execute(
                "DELETE FROM code_hero_threads WHERE thread_id = ?", key
            ).rowcount
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    purged = ThreadPurge(
        # busy: deletable once its runs stop (so never when expired or another's).
        busy=bool(busy) and not expired and not foreign,
        edited=bool(edited) and not expired and not foreign,
        expired=bool(expired),
        existed=threads > 0,
        checkpoints=checkpoints,
        runs=runs,
        foreign=bool(foreign),
    )
    return purged, queued


async def _to_the_end(step: Awaitable[T]) -> T:
    """Await a rollback, a commit or a whole transaction sent in one call to its end
    (its result), even through a cancellation.

    aiosqlite runs statements in order on its own thread, and a cancelled
    coroutine does not stop the statement it sent: if the lock were released
    before the rollback ran, the next session would find a transaction that an
    abandoned statement opened ("cannot start a transaction within a
    transaction"). Awaiting the rollback means every statement sent before it
    has run and none is left open; a cancellation is raised once it has.
    """
    task = asyncio.ensure_future(step)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            cancelled = True
    result = task.result()
    if cancelled:
        raise asyncio.CancelledError
    return result
