"""The PostgreSQL backend: N stock AsyncPostgresSaver instances and our registry on one
psycopg pool (autocommit, prepare_threshold=0, checked on checkout without a round
trip: `unreachable.py`).

Apart from `backends.py` so that psycopg and the PostgreSQL saver (~9 MiB resident)
load only in a process that uses PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from time import monotonic
from typing import TYPE_CHECKING, Any, cast

import psycopg
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from psycopg import sql
from psycopg.adapt import AdaptersMap
from psycopg.rows import dict_row
from psycopg.types.json import set_json_dumps, set_json_loads
from psycopg_pool import AsyncConnectionPool

from code_hero.config import MAX_LOCK_TIMEOUT, redact_url
from code_hero.persistence import clock, jsontext
from code_hero.persistence.backends import Backend
from code_hero.persistence.bulk import put_batch as bulk_put
from code_hero.persistence.groupcommit import GroupCommitSaverPool
from code_hero.persistence.jsonbfloats import jsonb_dumps
from code_hero.persistence.migrations import SETUP_LOCK_KEY
from code_hero.persistence.pg_tables import (
    DATA_OBJECTS,
    FUNCTIONS,
    INVALID_INDEXES_SQL,
    MISSING_TABLES_SQL,
    TablesMissing,
    ledgers_missing,
    missing_tables,
)
from code_hero.persistence.pgsaver import LoopReadingPostgresSaver
from code_hero.persistence.records import ThreadPurge
from code_hero.persistence.registry import PostgresRegistry
from code_hero.persistence.savers import SaverPool
from code_hero.persistence.unreachable import check_on_checkout, is_backend_error

if TYPE_CHECKING:
    from code_hero.persistence.entries import PutCheckpoint, PutWrites

__all__ = ["LendingPool", "PostgresBackend"]

log = logging.getLogger(__name__)


class LendingPool(AsyncConnectionPool[Any]):
    """A psycopg pool that knows which connections it has lent out, to end their calls,
    and lends the one most recently returned first."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lent: set[psycopg.AsyncConnection[Any]] = set()
        self._failing: set[asyncio.Future[bool]] = set()
        # Why the database was found unreachable (`fail_waiting`), until a probe answers
        # again (`reachable`): a checkout that comes to the queue meanwhile fails at once.
        self.unreachable: str | None = None

    async def _get_ready_connection(
        self,
        timeout: float | None,  # noqa: ASYNC109 (psycopg_pool's signature)
    ) -> psycopg.AsyncConnection[Any] | None:
        # psycopg_pool lends its idle connections in turn (the one idle longest first).
        # Lent in the reverse order (as PgBouncer does by default), a client's requests
        # one after another run on one server process whose prepared statements and
        # plans are ready and whose caches are warm, where in turn each of the pool's
        # sixteen plans a statement anew for its first runs: a thread's deletion takes
        # about half the time, and 30% less of PostgreSQL's CPU (issue 15). The
        # connections left idle are the ones the pool closes when it shrinks (it closes
        # from the other end, and only when some were not used for max_idle).
        # psycopg_pool expires a connection past max_lifetime only as it comes back, so
        # one left idle at the bottom would never be: the one idle longest is lent
        # once it is past its lifetime, checked on the way out, closed on its return.
        conn: psycopg.AsyncConnection[Any] | None = await super()._get_ready_connection(timeout)
        if conn is not None and self._pool and conn._expire_at > monotonic():
            self._pool.appendleft(conn)  # under the pool's lock, as the call above
            conn = self._pool.pop()
        return conn

    async def _getconn_unchecked(
        self,
        timeout: float,  # noqa: ASYNC109 (psycopg_pool's signature)
    ) -> psycopg.AsyncConnection[Any]:
        # Each try of a checkout passes here: its first, and the next after psycopg_pool's
        # check discarded a dead idle connection and it slept (out of the queue that
        # `fail_waiting` ends). A try after the database was found unreachable would wait
        # out the pool's timeout for connections the pool cannot open.
        if self.unreachable is not None:
            raise psycopg.OperationalError(self.unreachable)
        conn: psycopg.AsyncConnection[Any] = await super()._getconn_unchecked(timeout)
        return conn

    async def getconn(
        self,
        timeout: float | None = None,  # noqa: ASYNC109 (psycopg_pool's signature)
    ) -> psycopg.AsyncConnection[Any]:
        conn: psycopg.AsyncConnection[Any] = await super().getconn(timeout)
        self.lent.add(conn)
        return conn

    async def putconn(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self.lent.discard(conn)
        await super().putconn(conn)

    def abandon_lent(self) -> None:
        """Shut the socket of every connection lent out: a call waiting on one raises
        OperationalError ("server closed the connection") at once, and the pool discards
        the broken connection when it comes back.

        A statement has no bound of its own (a legitimately long one must not be cut),
        and libpq's keepalives and tcp_user_timeout notice only a peer whose kernel stops
        acknowledging: a partition behind a proxy or load balancer that keeps the
        connection open is noticed by the router's probe alone, which calls this.
        """
        for conn in list(self.lent):
            _shut(conn)

    def fail_waiting(self, reason: str) -> None:
        """End every wait for a connection with OperationalError(`reason`), which says
        down: the database was found unreachable, so the pool cannot open what they wait
        for, and each would wait out the pool's timeout (5 s) before taking the outage's
        path. A waiter has sent nothing yet: failed, its call goes on on the fallback. So
        is a checkout between two tries, and any that comes, until `reachable`."""
        self.unreachable = reason
        for client in list(self._waiting):
            ending = asyncio.ensure_future(client.fail(psycopg.OperationalError(reason)))
            self._failing.add(ending)
            ending.add_done_callback(self._failing.discard)

    def reachable(self) -> None:
        """A probe reached the database: checkouts wait for connections again."""
        self.unreachable = None


async def _bound_lock_waits(conn: psycopg.AsyncConnection[Any], seconds: float) -> None:
    """Bound the session's waits for another session's locks to `seconds`, unless the
    database or role sets a lock_timeout of its own. A lock held for a minute (a LOCK
    TABLE, a VACUUM FULL, a row another session keeps FOR UPDATE) would otherwise hold
    every request that needs it as long, with nothing said; bounded, the request
    answers UNAVAILABLE "busy" and a run is released to resume (`contention`). Behind
    PgBouncer in transaction mode a session's setting does not stay with the client:
    set lock_timeout on the role there."""
    if not seconds > 0:  # 0: no bound (nor for NaN)
        return
    ms = max(1, round(min(seconds, MAX_LOCK_TIMEOUT) * 1000))
    # A lock_timeout the database or role sets (even 0: unbounded on purpose) is not
    # the default's.
    await conn.execute(
        "SELECT set_config('lock_timeout', %s, false) "
        "FROM pg_settings WHERE name = 'lock_timeout' AND source = 'default'",
        (f"{ms}ms",),
    )


def _json_adapters() -> AdaptersMap:
    """psycopg's adapters, with every json and jsonb value read by `jsontext.loads` and
    written by `jsonbfloats.jsonb_dumps`.

    Read: the values `json.loads` (psycopg's default) gives, with orjson wherever the two
    agree. A page of ten threads spent about a sixth of its registry time in `json.loads`
    of their metadata (issue 15). Written: the text `json.dumps` (psycopg's default)
    writes, each integral float kept a float (jsonb made 1e23 the int 10**23): the stock
    saver's checkpoint and metadata, a float channel value inline in the first.

    One map for the pool's connections to start from (psycopg's `context`), which they
    share until one of them changes its own: registered on each connection instead,
    the loaders made every connection copy psycopg's maps of loaders, ~10 KiB each.
    """
    adapters = AdaptersMap(psycopg.adapters)
    set_json_loads(jsontext.loads, adapters)
    set_json_dumps(jsonb_dumps, adapters)
    return adapters


def _shut(conn: psycopg.AsyncConnection[Any]) -> None:
    """Shut the connection's socket both ways, without closing its descriptor (the loop
    still watches it; a closed one could be reused by another socket meanwhile)."""
    with contextlib.suppress(OSError, psycopg.Error):
        with socket.socket(fileno=os.dup(conn.fileno())) as sock:
            sock.shutdown(socket.SHUT_RDWR)


async def _read_clock(conn: psycopg.AsyncConnection[Any], *columns: str) -> tuple[Any, ...]:
    """`columns` read, in the trip that measures how far the database's clock is from
    this process's (`clock`: replicas read their times from the database's clock)."""
    before = clock.wall()
    cur = await conn.execute(f"SELECT {', '.join((*columns, 'clock_timestamp()'))}")
    row = await cur.fetchone()
    after = clock.wall()
    assert row is not None
    clock.measured(before, row[-1], after)
    return tuple(row[:-1])


class PostgresBackend(Backend):
    """PostgreSQL: N stock AsyncPostgresSaver instances and the registry on one pool."""

    kind = "postgres"
    batches = True
    purges_in_one_step = True

    # Set once the schema is set up: until then a connection waits for locks unbounded
    # (a migration's ALTER TABLE, CREATE INDEX CONCURRENTLY wait out other replicas'
    # transactions; a bound would fail the start).
    _bounded_locks = False
    # The tables a probe is making again (`_make_missing_tables`), while it does.
    _remaking: tuple[str, ...] = ()
    # A remake began and did not end (cancelled by the probe's timeout, failed): the
    # next probe runs the migrations again though every table is there (its indexes
    # may be INVALID or missing, later migrations not run).
    _remake_unfinished = False
    # The migration ledgers found missing alone, said once (`ledgers_missing`).
    _ledgers_said: tuple[str, ...] = ()

    # The adapters the pool's connections start from (`_json_adapters`); made once.
    _adapters: AdaptersMap | None = None

    async def _configure(self, conn: psycopg.AsyncConnection[Any]) -> None:
        if self._bounded_locks:
            await _bound_lock_waits(conn, self.config.lock_timeout)

    def pool_saturated(self) -> bool:
        # Every connection it may have is open (handed out, or back by now: a burst
        # may have ended since the wait timed out). A pool short of connections
        # could not open them: after a restart, psycopg-pool's growing backoff makes
        # waits time out though nobody holds one, and that is the database's doing.
        return int(self._pool.get_stats().get("pool_size", 0)) >= self._pool.max_size

    async def open(self) -> None:
        url = self.config.connection_string or ""
        # One direct connection first: its error names the real reason (refused,
        # unknown database, authentication), where a pool would only time out.
        conn = await psycopg.AsyncConnection.connect(url, connect_timeout=self._connect_timeout)
        async with conn:  # and the database's clock, before any lease is written
            await _read_clock(conn)
        pool = self._new_pool()
        # Set before opening, so close() releases the pool from any point of a
        # failed or abandoned open.
        self._pool = pool
        try:
            await pool.open(wait=True, timeout=self.config.pool_timeout)
            instances = [LoopReadingPostgresSaver(pool) for _ in range(self.config.saver_instances)]
            self.registry = PostgresRegistry(pool)
            if self.config.auto_setup:
                await self._set_up(instances[0])
            # From here on a lock wait is bounded: the connections opened so far are
            # replaced by ones that are.
            self._bounded_locks = True
            await pool.drain()
            pooled = GroupCommitSaverPool if self.config.group_commit else SaverPool
            self.saver = pooled(instances)
        except BaseException:
            await pool.close()
            raise

    async def _set_up(self, saver: AsyncPostgresSaver) -> None:
        """Run the saver's and the registry's migrations, one replica at a time."""
        assert isinstance(self.registry, PostgresRegistry)
        async with self._pool.connection() as lock_conn:
            await _take_setup_lock(lock_conn)
            try:
                await _drop_invalid_indexes(lock_conn)
                await saver.setup()
                await self.registry.setup()
            finally:
                await lock_conn.execute("SELECT pg_advisory_unlock(%s)", (SETUP_LOCK_KEY,))

    async def _make_missing_tables(
        self, conn: psycopg.AsyncConnection[Any], missing: list[str]
    ) -> None:
        """Tables of ours are gone from a database that answers (dropped and recreated,
        restored empty): make them again as at start, on the probe's connection `conn`,
        or raise `TablesMissing`, which keeps the outage. Without `auto_setup` nobody
        here may make them.

        Not on the pool: after an outage it may lend nothing until its reconnection
        backoff ends (`reconnect`), and the probe would time out meanwhile. A setup
        that fails (no schema of the search_path, no CREATE permission, a lock not
        had within `_REMAKE_LOCK_SHARE` of the probe's timeout) is the outage's too:
        `TablesMissing` says why. A migration ledger missing alone comes not here
        (`_say_ledgers_missing`)."""
        if not self.config.auto_setup or not isinstance(self.saver, SaverPool):
            raise TablesMissing(missing)
        conn.row_factory = cast(Any, dict_row)
        # A bound on its lock waits, whatever the role's: the tables it makes are new,
        # but a migration rerun on tables that are there (`_remake_unfinished`) alters
        # them, and an ALTER TABLE queued behind an open reader would stall every
        # later call on its table until the probe's timeout.
        ms = max(1, round(self.config.pool_timeout * 1000 * _REMAKE_LOCK_SHARE))
        await conn.execute(f"SET lock_timeout = {ms}")
        # Until they are all made, a call meeting a table or column not there yet is
        # the outage's (`missing_tables`), not its own error.
        self._remaking = tuple(missing)
        self._remake_unfinished = True
        try:
            try:
                made = await _remake_tables(conn)
            except psycopg.Error as exc:
                if is_backend_error(exc):  # the database went away meanwhile
                    raise
                if not missing:  # a remake cut short, finished again
                    raise psycopg.OperationalError(
                        "the migrations of a remake of the tables, cut short, could not "
                        f"be finished: {type(exc).__name__}: {exc}".strip()[:400]
                    ) from exc
                raise TablesMissing(missing, cause=exc, note=await _schema_note(conn, exc)) from exc
            still = [name for name in await missing_tables(conn) if name in DATA_OBJECTS]
        finally:
            self._remaking = ()
        self._remake_unfinished = False
        if still:  # a table dropped alone: its migration is recorded as done
            raise TablesMissing(still, repaired=True)
        tables = [name for name in made if name not in FUNCTIONS]
        if tables:  # else another replica made them, and says so
            log.warning(
                "the database %s had lost tables of ours (%s): made them again; what "
                "they held is gone, and what this process holds is copied in",
                self.description,
                ", ".join(made),
            )
        elif made:  # a function alone: no row was lost with it
            log.warning(
                "the database %s had lost functions of ours (%s): made them again; no "
                "data was lost with them",
                self.description,
                ", ".join(made),
            )

    @property
    def _connect_timeout(self) -> int:
        return max(1, int(self.config.pool_timeout))

    def _new_pool(self) -> LendingPool:
        connect_timeout = self._connect_timeout
        if self._adapters is None:
            self._adapters = _json_adapters()
        return LendingPool(
            self.config.connection_string or "",
            min_size=self.config.pool_min_size,
            max_size=max(2, self.config.pool_max_size),
            kwargs={
                "autocommit": True,
                "prepare_threshold": 0,
                "row_factory": dict_row,
                "context": self._adapters,
                # psycopg's default is 130 s: a pool refilling against a server
                # that accepts and never answers would hold a worker that long.
                "connect_timeout": connect_timeout,
            },
            check=check_on_checkout,
            configure=self._configure,
            timeout=self.config.pool_timeout,
            name="code-hero",
            open=False,
        )

    async def reconnect(self) -> None:
        # After an outage the pool retries its lost connections with a backoff that
        # doubles (1, 2, 4, 8 s ...) and nothing resets: a fresh pool connects now.
        # It starts reachable, not as the old one was found: it has just connected
        # (after a probe answered); the database found gone after the swap marks it
        # (`abandon_waits`, whether the primary serves or not).
        pool = self._new_pool()
        await pool.open(wait=True, timeout=self.config.pool_timeout)
        old, self._pool = self._pool, pool
        assert isinstance(self.saver, SaverPool) and isinstance(self.registry, PostgresRegistry)
        for instance in self.saver.instances:
            assert isinstance(instance, AsyncPostgresSaver)
            instance.conn = pool
        self.registry.pool = pool
        await old.close(timeout=1.0)

    async def put_batch(self, items: Sequence[PutCheckpoint | PutWrites]) -> None:
        assert isinstance(self.saver, SaverPool)
        saver = self.saver.instances[0]
        assert isinstance(saver, AsyncPostgresSaver)
        await bulk_put(self._pool, saver, items)

    def abandon_calls(self) -> None:
        self._pool.abandon_lent()

    def abandon_waits(self) -> None:
        self._pool.fail_waiting(
            "the database was found unreachable while this call waited for a connection"
        )

    @property
    def description(self) -> str:
        return redact_url(self.config.connection_string or "")

    @property
    def pool(self) -> LendingPool:
        """The shared psycopg pool."""
        return self._pool

    async def close(self) -> None:
        pool = getattr(self, "_pool", None)
        if pool is not None:
            await pool.close()

    async def _fetch(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        async with self._pool.connection() as conn, conn.cursor() as cur:
            await cur.execute(sql, params)
            return list(await cur.fetchall())

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        """A connection of its own, not one from the pool: a stopped server refuses it
        at once, where the pool would wait pool_timeout for a replacement of the
        connections the shutdown closed, and a saturated pool would wait as long."""
        return await psycopg.AsyncConnection.connect(
            self.config.connection_string or "",
            connect_timeout=self._connect_timeout,
            autocommit=True,
        )

    async def probe(self, *, room: bool = False) -> None:
        # One connection of its own per probe interval (`_connect`).
        async with await self._connect() as conn:
            row = await _read_clock(
                conn, "current_setting('transaction_read_only')", MISSING_TABLES_SQL
            )
            if room:
                await _check_room(conn)
            # A new session that may not write (a standby, default_transaction_read_only):
            # the server answers, but no write would go in, and a copy-back would fail.
            if row[0] == "on":
                raise psycopg.errors.ReadOnlySqlTransaction(
                    "the database is read-only: a new session cannot write (a standby, "
                    "or default_transaction_read_only is on)"
                )
            # A database that answers without our tables (`pg_tables`): every call
            # would fail. A migration ledger missing alone fails none: said, not made.
            missing = [name for name in row[1] if name in DATA_OBJECTS]
            if missing or self._remake_unfinished:  # named with the ledgers missing too
                await self._make_missing_tables(conn, list(row[1]) if missing else [])
            else:
                self._say_ledgers_missing(list(row[1]))
        pool = getattr(self, "_pool", None)
        if pool is not None:  # opened: checkouts wait for connections again
            pool.reachable()

    def _say_ledgers_missing(self, ledgers: list[str]) -> None:
        """One WARNING when migration ledgers are found missing alone (not each probe),
        with the SQL to restore them; again only once they were back and went again."""
        if tuple(ledgers) != self._ledgers_said and ledgers:
            log.warning("the database %s: %s", self.description, ledgers_missing(ledgers))
        self._ledgers_said = tuple(ledgers)

    async def missing_tables(self) -> list[str]:
        # On a connection of its own, as the probe: a call's own undefined_table on a
        # saturated pool must not wait out pool_timeout to ask (`RouterFailover`).
        if self._remaking:
            return list(self._remaking)
        async with await self._connect() as conn:
            return [name for name in await missing_tables(conn) if name in DATA_OBJECTS]

    async def count_checkpoints(self, thread_id: str, namespace: str | None = None) -> int:
        sql, params = "SELECT count(*) AS n FROM checkpoints WHERE thread_id = %s", [thread_id]
        if namespace is not None:
            sql, params = f"{sql} AND checkpoint_ns = %s", [thread_id, namespace]
        rows = await self._fetch(sql, tuple(params))
        return int(rows[0]["n"])

    async def checkpoint_keys(self, thread_id: str) -> set[tuple[str, str]]:
        sql = "SELECT checkpoint_ns, checkpoint_id FROM checkpoints WHERE thread_id = %s"
        rows = await self._fetch(sql, (thread_id,))
        return {(r["checkpoint_ns"], r["checkpoint_id"]) for r in rows}

    async def checkpoint_thread_ids(self) -> list[str]:
        rows = await self._fetch("SELECT DISTINCT thread_id FROM checkpoints")
        return [r["thread_id"] for r in rows]

    async def checkpoint_namespaces(self, thread_id: str) -> list[str]:
        sql = "SELECT DISTINCT checkpoint_ns FROM checkpoints WHERE thread_id = %s"
        return [r["checkpoint_ns"] for r in await self._fetch(sql, (thread_id,))]

    async def delete_checkpoints(self, thread_id: str) -> int:
        # The stock adelete_thread's three deletes as one statement: one round trip and
        # one commit (the stock saver commits each delete on an autocommit connection),
        # counted by the statement itself rather than a count query before it.
        rows = await self._fetch(
            """WITH gone AS (DELETE FROM checkpoints WHERE thread_id = %s RETURNING 1),
                    blobs AS (DELETE FROM checkpoint_blobs WHERE thread_id = %s),
                    writes AS (DELETE FROM checkpoint_writes WHERE thread_id = %s)
               SELECT count(*) AS n FROM gone""",
            (str(thread_id),) * 3,
        )
        return int(rows[0]["n"])

    async def delete_orphan_checkpoints(
        self, thread_id: str, token: str | None = None
    ) -> int | None:
        # One statement, one snapshot: a row committed before it keeps every checkpoint,
        # and one committed after it came before any checkpoint of the new thread (a run
        # writes after its admission, an edit after its claim), which it does not see. A
        # row with a ttl of 0 is a deletion under way (`start_deletion`): no row, if that
        # deletion is the one `token` names (without a token, any).
        rows = await self._fetch(
            """WITH go AS (SELECT NOT EXISTS (
                        SELECT 1 FROM code_hero_threads WHERE thread_id = %s
                        AND (ttl_seconds IS DISTINCT FROM 0 OR deletion_token
                             IS DISTINCT FROM coalesce(%s::text, deletion_token))) AS ok),
                    gone AS (DELETE FROM checkpoints WHERE thread_id = %s
                             AND (SELECT ok FROM go) RETURNING 1),
                    blobs AS (DELETE FROM checkpoint_blobs WHERE thread_id = %s
                              AND (SELECT ok FROM go)),
                    writes AS (DELETE FROM checkpoint_writes WHERE thread_id = %s
                               AND (SELECT ok FROM go))
               SELECT (SELECT ok FROM go) AS ok, (SELECT count(*) FROM gone) AS n""",
            (str(thread_id), token, *(str(thread_id),) * 3),
        )
        return int(rows[0]["n"]) if rows[0]["ok"] else None

    async def purge_idle_thread(
        self, thread_id: str, live_at: datetime | None, owner: str | None = None
    ) -> ThreadPurge:
        # One round trip for the checkpoints and the registry rows (issue 15).
        assert isinstance(self.registry, PostgresRegistry)
        purged: ThreadPurge = await self.registry.purge_idle_thread(thread_id, live_at, owner)
        return purged

    async def keep_latest(self, thread_id: str, keep: int) -> int:
        async with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            # The thread's row first, as admit_run and claim_edit lock it, in a statement
            # of its own: the DELETE's snapshot is taken with the lock held, so it sees
            # every fork and edit claim committed before, and none comes until the commit.
            # A thread only the savers hold gets a row until the commit: the admission or
            # edit that would make one waits for it the same way.
            await cur.execute(_LOCK_THREAD, (thread_id,))
            made = False
            if not cur.rowcount:
                await cur.execute(_HOLD_NEW_THREAD, (thread_id,))
                made = cur.rowcount == 1
                if not made:  # an admission made it meanwhile
                    await cur.execute(_LOCK_THREAD, (thread_id,))
            # The forks of unfinished runs are read from the thread's runs, materialised:
            # not off the unfinished-runs index and all its dead entries (`thread_runs`).
            await cur.execute(
                """DELETE FROM checkpoints c USING (
                       SELECT checkpoint_ns, checkpoint_id, row_number() OVER (
                           PARTITION BY checkpoint_ns ORDER BY checkpoint_id DESC) AS rn
                       FROM checkpoints WHERE thread_id = %s) old
                   WHERE c.thread_id = %s AND old.rn > %s
                     AND c.checkpoint_ns = old.checkpoint_ns
                     AND c.checkpoint_id = old.checkpoint_id
                     AND NOT (c.checkpoint_ns = '' AND c.checkpoint_id IN (
                         WITH thread_runs AS MATERIALIZED (
                             SELECT status, config ->> 'checkpoint_id' AS checkpoint_id
                             FROM code_hero_runs WHERE thread_id = %s)
                         SELECT checkpoint_id FROM thread_runs
                         WHERE status IN ('PENDING', 'RUNNING')
                           AND checkpoint_id IS NOT NULL))
                     AND NOT EXISTS (SELECT 1 FROM code_hero_threads t
                         WHERE t.thread_id = %s AND t.edit_until > %s)""",
                (thread_id, thread_id, keep, thread_id, thread_id, clock.now()),
            )
            removed = cur.rowcount
            await cur.execute(
                """DELETE FROM checkpoint_writes w WHERE w.thread_id = %s AND NOT EXISTS (
                       SELECT 1 FROM checkpoints c WHERE c.thread_id = w.thread_id
                       AND c.checkpoint_ns = w.checkpoint_ns
                       AND c.checkpoint_id = w.checkpoint_id)""",
                (thread_id,),
            )
            await cur.execute(
                """DELETE FROM checkpoint_blobs b WHERE b.thread_id = %s AND NOT EXISTS (
                       SELECT 1 FROM checkpoints c WHERE c.thread_id = b.thread_id
                       AND c.checkpoint_ns = b.checkpoint_ns
                       AND c.checkpoint -> 'channel_versions' ->> b.channel = b.version)""",
                (thread_id,),
            )
            if made:
                await cur.execute(
                    "DELETE FROM code_hero_threads WHERE thread_id = %s", (thread_id,)
                )
        return int(removed)


_LOCK_THREAD = "SELECT 1 FROM code_hero_threads WHERE thread_id = %s FOR UPDATE"
_HOLD_NEW_THREAD = (
    "INSERT INTO code_hero_threads (thread_id, status, created_at, updated_at) "
    "VALUES (%s, 'IDLE', now(), now()) ON CONFLICT (thread_id) DO NOTHING"
)


# The share of the probe's timeout (pool_timeout) a remake's statement may wait for a
# lock: a DDL statement never queues long behind readers, and the probe says why.
_REMAKE_LOCK_SHARE = 0.25


async def _take_setup_lock(conn: psycopg.AsyncConnection[Any]) -> None:
    """Take the set-up lock by polling, with no transaction open while waiting."""
    delay = 0.02
    while True:
        cur = await conn.execute("SELECT pg_try_advisory_lock(%s) AS taken", (SETUP_LOCK_KEY,))
        row = await cur.fetchone()
        if row is not None and row["taken"]:
            return
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.5)


async def _schema_note(conn: psycopg.AsyncConnection[Any], exc: psycopg.Error) -> str:
    """For invalid_schema_name ("no schema has been selected to create in"): the
    search_path whose schemas the database lacks (a new database has only public)."""
    if exc.sqlstate != "3F000":
        return ""
    try:
        cur = await conn.execute("SELECT current_setting('search_path') AS path")
        row = await cur.fetchone()
    except psycopg.Error:
        return ""
    return f" (search_path {row['path']})" if row else ""


class _OneConnection:
    """What `PostgresRegistry` asks of a pool (`connection()`), lending one connection."""

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self._conn = conn

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        yield self._conn


async def _remake_tables(conn: psycopg.AsyncConnection[Any]) -> list[str]:
    """Run the saver's and the registry's migrations on `conn` (dict rows, autocommit)
    under the set-up lock, if tables of ours are still missing once it is held: the
    ones this made, none when another replica made them first."""
    await _take_setup_lock(conn)
    try:
        missing = await missing_tables(conn)
        # Every table there (a remake left unfinished, `_remake_unfinished`): the
        # migrations rerun from where their ledgers say; unless a ledger is missing
        # (they would rerun from the first on tables that are there).
        run = any(name in DATA_OBJECTS for name in missing) or not missing
        if run:
            await _drop_invalid_indexes(conn)
            await AsyncPostgresSaver(conn).setup()
            await PostgresRegistry(cast(AsyncConnectionPool[Any], _OneConnection(conn))).setup()
    finally:
        with contextlib.suppress(psycopg.Error):  # else the connection's end releases it
            await conn.execute("SELECT pg_advisory_unlock(%s)", (SETUP_LOCK_KEY,))
    return missing if run else []


async def _drop_invalid_indexes(conn: psycopg.AsyncConnection[Any]) -> None:
    """Drop our tables' INVALID indexes (`INVALID_INDEXES_SQL`), under the set-up lock,
    so the migrations that made them build them again. CONCURRENTLY: no lock that
    would hold a reader's call (`conn` in autocommit)."""
    cur = await conn.execute(INVALID_INDEXES_SQL)
    for row in await cur.fetchall():
        schema, name = (row["schema"], row["name"]) if isinstance(row, dict) else row
        log.warning("dropping the INVALID index %s.%s, to make it again", schema, name)
        await conn.execute(
            sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}.{}").format(
                sql.Identifier(schema), sql.Identifier(name)
            )
        )


async def _check_room(conn: psycopg.AsyncConnection[Any]) -> None:
    """Raise disk_full (53100) unless the database can write a little now.

    A function scan of 3,000 rows with the smallest work_mem spills to a temporary
    file of about 48 kB, in the tablespace the database's own files are in (unless
    temp_tablespaces names another): no WAL, no catalog row, removed at the end of the
    statement. On a full disk it fails with disk_full about its temporary file, which
    alone is no outage (one statement's spill, `_postgres_down`): here it is the answer,
    raised as the database's disk. Another error that does not mean down
    (temp_file_limit below 48 kB) proves nothing: the copy-back is left to find out.
    """
    try:
        await conn.execute("SET work_mem = '64kB'")
        await conn.execute("SELECT count(*) FROM generate_series(1, 3000)")
    except psycopg.errors.DiskFull as exc:
        raise psycopg.errors.DiskFull(
            "the database's disk is full: a probe could not write a 48 kB file "
            "(No space left on device)"
        ) from exc
    except psycopg.Error as exc:
        if is_backend_error(exc):
            raise
