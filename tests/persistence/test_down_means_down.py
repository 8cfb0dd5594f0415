"""Only an unreachable database moves the process to the fallback; a bad statement does not.

A statement error (a duplicate key, a syntax error, a lock timeout, a
deadlock, a cancelled query, a locked SQLite file) fails the one call with
the original exception; the primary keeps serving and the next write lands in
it. A lost server (terminated sessions, a full or unopenable file) switches.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, cast

import psycopg
import psycopg.errors as pg
import pytest
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import empty_checkpoint
from psycopg_pool import PoolClosed, PoolTimeout, TooManyRequests

from code_hero.checkpointing import (
    CheckpointerConfig,
    EnhancedCheckpointerManager,
    create_postgres_checkpointer,
    create_sqlite_checkpointer,
)
from code_hero.errors import BadInputError, ConfigurationError, ConflictError
from code_hero.persistence.backends import PostgresBackend
from code_hero.persistence.records import RunRecord, RunStatus
from code_hero.persistence.registry import SqliteRegistry
from code_hero.persistence.unreachable import is_backend_error, is_refused_value
from tests.conftest import settle_test_databases

# --- the classification, error by error ---------------------------------------


def _sqlite_error(cls: type[sqlite3.Error], code: int) -> sqlite3.Error:
    exc = cls(f"code {code}")
    exc.sqlite_errorcode = code  # as sqlite3 sets it on a real error
    return exc


DOWN: list[BaseException] = [
    psycopg.OperationalError("connection failed: Connection refused"),
    psycopg.OperationalError("the connection is closed"),
    pg.ConnectionTimeout("connection timeout expired"),
    pg.AdminShutdown(),
    pg.CrashShutdown(),
    pg.CannotConnectNow(),
    pg.DatabaseDropped(),
    pg.TooManyConnections(),
    pg.ReadOnlySqlTransaction(),  # a standby, default_transaction_read_only
    pg.DiskFull(),  # no room for a new page or a temporary file
    pg.ConnectionFailure(),
    pg.ProtocolViolation(),
    pg.SqlclientUnableToEstablishSqlconnection(),
    PoolTimeout("couldn't get a connection after 5.00 sec"),
    PoolClosed("the pool 'code-hero' is already closed"),
    OSError("no route to host"),
    ConnectionRefusedError(),
    ConnectionResetError(),
    TimeoutError(),
    NotADirectoryError("/x is not a directory"),
    _sqlite_error(sqlite3.OperationalError, sqlite3.SQLITE_CANTOPEN),
    _sqlite_error(sqlite3.OperationalError, sqlite3.SQLITE_CANTOPEN_ISDIR),
    _sqlite_error(sqlite3.OperationalError, sqlite3.SQLITE_IOERR),
    _sqlite_error(sqlite3.OperationalError, sqlite3.SQLITE_IOERR_WRITE),
    _sqlite_error(sqlite3.OperationalError, sqlite3.SQLITE_IOERR_FSYNC),
    _sqlite_error(sqlite3.OperationalError, sqlite3.SQLITE_FULL),
    _sqlite_error(sqlite3.OperationalError, sqlite3.SQLITE_READONLY),
    _sqlite_error(sqlite3.OperationalError, sqlite3.SQLITE_READONLY_DBMOVED),
]

NOT_DOWN: list[BaseException] = [
    pg.DeadlockDetected(),
    pg.LockNotAvailable(),
    pg.QueryCanceled(),
    pg.SerializationFailure(),
    pg.StringDataRightTruncation(),
    pg.UniqueViolation(),
    pg.SyntaxError(),
    pg.UndefinedTable(),
    pg.OutOfMemory(),
    pg.ConfigurationLimitExceeded(),  # temp_file_limit
    pg.IoError(),
    pg.IdleSessionTimeout(),
    pg.IdleInTransactionSessionTimeout(),
    pg.InternalError_(),
    pg.PipelineAborted(),
    TooManyRequests("the pool 'code-hero' has already 10 requests waiting"),
    psycopg.InterfaceError("the cursor is closed"),
    psycopg.ProgrammingError("query parameter missing"),
    _sqlite_error(sqlite3.OperationalError, sqlite3.SQLITE_BUSY),
    _sqlite_error(sqlite3.OperationalError, sqlite3.SQLITE_BUSY_SNAPSHOT),
    _sqlite_error(sqlite3.OperationalError, sqlite3.SQLITE_LOCKED),
    _sqlite_error(sqlite3.OperationalError, sqlite3.SQLITE_ERROR),
    _sqlite_error(sqlite3.OperationalError, sqlite3.SQLITE_INTERRUPT),
    _sqlite_error(sqlite3.DatabaseError, sqlite3.SQLITE_CORRUPT),
    _sqlite_error(sqlite3.DatabaseError, sqlite3.SQLITE_NOTADB),
    _sqlite_error(sqlite3.IntegrityError, sqlite3.SQLITE_CONSTRAINT_UNIQUE),
    sqlite3.ProgrammingError("Cannot operate on a closed database."),
    sqlite3.OperationalError("no code"),
    ConflictError("run 'r' already exists"),
    ValueError("Connection closed"),
    KeyError("thread_id"),
]


@pytest.mark.parametrize("exc", DOWN, ids=lambda e: f"{type(e).__name__}-{e}"[:60])
def test_unreachable_database_errors_are_backend_errors(exc: BaseException) -> None:
    assert is_backend_error(exc)


@pytest.mark.parametrize("exc", NOT_DOWN, ids=lambda e: f"{type(e).__name__}-{e}"[:60])
def test_statement_errors_are_not_backend_errors(exc: BaseException) -> None:
    assert not is_backend_error(exc)


def _raised(call: Callable[[], object]) -> BaseException:
    try:
        call()
    except Exception as exc:
        return exc
    raise AssertionError("no error raised")


# --- refused values: the same write fails every time -----------------------------
REFUSED: list[BaseException] = [
    pg.UntranslatableCharacter("unsupported Unicode escape sequence"),  # 22P05: a NUL in jsonb
    pg.NumericValueOutOfRange("integer out of range"),  # 22003
    pg.CharacterNotInRepertoire("invalid byte sequence"),  # 22021
    psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes"),  # client-side
    sqlite3.DataError("string or blob too big"),
    OverflowError("Python int too large to convert to SQLite INTEGER"),
    UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"),
]
NOT_REFUSED: list[BaseException] = [
    ValueError("no active connection"),  # aiosqlite, on a closed connection
    TypeError("'NoneType' object is not subscriptable"),  # a bug
    BadInputError("not a valid input"),  # a ValueError too
    ConfigurationError("no such graph"),  # a ValueError too
    pg.UniqueViolation("duplicate key"),
    pg.DeadlockDetected("deadlock detected"),
    pg.LockNotAvailable("lock timeout"),
    psycopg.OperationalError("the connection is closed"),
    sqlite3.OperationalError("database is locked"),
    PoolTimeout("couldn't get a connection"),
    ConnectionResetError(),
]


@pytest.mark.parametrize("exc", REFUSED, ids=lambda e: f"{type(e).__name__}-{e}"[:60])
def test_values_the_database_refuses_are_refused_values(exc: BaseException) -> None:
    assert is_refused_value(exc)


@pytest.mark.parametrize("exc", NOT_REFUSED, ids=lambda e: f"{type(e).__name__}-{e}"[:60])
def test_other_errors_are_not_refused_values(exc: BaseException) -> None:
    assert not is_refused_value(exc)


@pytest.mark.postgres
async def test_a_nul_psycopg_refuses_client_side_is_a_refused_value(pg_database: str) -> None:
    async with await psycopg.AsyncConnection.connect(pg_database) as conn:
        with pytest.raises(psycopg.DataError) as refused:
            await conn.execute("SELECT %s::text", ["zero\x00byte"])
    assert refused.value.sqlstate is None and is_refused_value(refused.value)


def test_real_sqlite_errors(tmp_path: Path) -> None:
    path = str(tmp_path / "db.sqlite")
    conn = sqlite3.connect(path, timeout=0.05)
    conn.execute("CREATE TABLE t (k TEXT PRIMARY KEY)")
    conn.execute("INSERT INTO t VALUES ('a')")
    conn.commit()
    other = sqlite3.connect(path, timeout=0.05, isolation_level=None)
    try:
        duplicate = _raised(lambda: conn.execute("INSERT INTO t VALUES ('a')"))
        assert isinstance(duplicate, sqlite3.IntegrityError)
        syntax = _raised(lambda: conn.execute("SELEC 1"))
        missing = _raised(lambda: conn.execute("SELECT * FROM nowhere"))
        conn.rollback()  # the failed INSERT left its transaction open
        other.execute("BEGIN EXCLUSIVE")
        busy = _raised(lambda: conn.execute("INSERT INTO t VALUES ('b')"))
        other.execute("ROLLBACK")
        assert getattr(busy, "sqlite_errorname", None) == "SQLITE_BUSY"
        conn.execute("PRAGMA query_only = 1")
        read_only = _raised(lambda: conn.execute("INSERT INTO t VALUES ('c')"))
        unopenable = _raised(lambda: sqlite3.connect(str(tmp_path)).execute("SELECT 1"))
        assert getattr(unopenable, "sqlite_errorname", None) == "SQLITE_CANTOPEN"
    finally:
        conn.close()
        other.close()
    assert not any(is_backend_error(e) for e in (duplicate, syntax, missing, busy))
    assert is_backend_error(read_only) and is_backend_error(unopenable)


# --- the same through the manager, on SQLite and PostgreSQL -------------------

KINDS = ["sqlite", "postgres"]
Write = Callable[[str], Awaitable[RunnableConfig]]


def _config(kind: str, request: pytest.FixtureRequest, **kwargs: Any) -> CheckpointerConfig:
    # No background probe: each test decides when the router checks and heals.
    kwargs.setdefault("health_check_interval", 3600)
    if kind == "sqlite":
        return create_sqlite_checkpointer(request.getfixturevalue("sqlite_path"), **kwargs)
    return create_postgres_checkpointer(request.getfixturevalue("pg_database"), **kwargs)


@contextlib.asynccontextmanager
async def _manager(config: CheckpointerConfig) -> AsyncIterator[EnhancedCheckpointerManager]:
    manager = EnhancedCheckpointerManager(config)
    try:
        assert await manager.initialize()
        yield manager
    finally:
        await manager.cleanup()


def _writer(manager: EnhancedCheckpointerManager) -> Write:
    """Writes one fresh checkpoint to a thread through the managed saver."""

    async def write(thread_id: str) -> RunnableConfig:
        config: RunnableConfig = {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}
        metadata: Any = {"source": "input", "step": -1, "parents": {}}
        saver = manager.get_checkpointer()
        return await saver.aput(config, empty_checkpoint(), metadata, {})

    return write


def _stored(config: CheckpointerConfig, thread_id: str) -> int:
    """Checkpoints of the thread in the primary database, read with a connection of our own."""
    if config.kind == "sqlite":
        with contextlib.closing(sqlite3.connect(config.database_path or "")) as conn:
            row = conn.execute(
                "SELECT count(*) FROM checkpoints WHERE thread_id = ?", (thread_id,)
            ).fetchone()
    else:
        with psycopg.connect(config.connection_string or "") as pconn:
            row = pconn.execute(
                "SELECT count(*) FROM checkpoints WHERE thread_id = %s", (thread_id,)
            ).fetchone()
    assert row is not None
    return int(row[0])


async def _assert_primary_serves(
    manager: EnhancedCheckpointerManager, thread_id: str = "after"
) -> None:
    assert manager.overall_status == "healthy"
    assert manager.router.active == 0
    before = _stored(manager.config, thread_id)
    await _writer(manager)(thread_id)
    assert _stored(manager.config, thread_id) == before + 1
    assert manager.router.pending_sync == 0
    assert (await manager.health_check())["overall_status"] == "healthy"
    assert manager.metrics.fallback_switches == 0


async def _raw(manager: EnhancedCheckpointerManager, *statements: str) -> None:
    """Statements on the primary's own connection (SQLite) or pool (PostgreSQL)."""
    backend = manager.router.primary.backend
    for sql in statements:
        if isinstance(backend, PostgresBackend):
            async with backend.pool.connection() as conn:
                await conn.execute(sql.encode())
        else:
            assert backend is not None
            await cast(SqliteRegistry, backend.registry).conn.execute(sql)


@pytest.mark.parametrize("kind", KINDS)
async def test_duplicate_run_fails_the_call_only(kind: str, request: pytest.FixtureRequest) -> None:
    async with _manager(_config(kind, request)) as manager:
        run = RunRecord(run_id="r1", thread_id="t", graph="g", status=RunStatus.PENDING)
        await manager.registry.admit_run(run, reject_if_busy=False)
        with pytest.raises(ConflictError, match="already exists") as conflict:
            await manager.registry.admit_run(run, reject_if_busy=False)
        assert not is_backend_error(conflict.value.__cause__ or conflict.value)
        await _assert_primary_serves(manager)


@pytest.mark.parametrize("kind", KINDS)
async def test_syntax_error_on_the_backends_connection(
    kind: str, request: pytest.FixtureRequest
) -> None:
    async with _manager(_config(kind, request)) as manager:
        error = pg.SyntaxError if kind == "postgres" else sqlite3.OperationalError
        with pytest.raises(error, match="syntax error") as syntax:
            await _raw(manager, "SELEC 1")
        assert not is_backend_error(syntax.value)
        await _assert_primary_serves(manager)


@pytest.mark.parametrize("kind", KINDS)
async def test_rejected_checkpoint_write_fails_without_switching(
    kind: str, request: pytest.FixtureRequest
) -> None:
    # A trigger rejects one thread's checkpoints: the saver's own statement fails.
    async with _manager(_config(kind, request)) as manager:
        if kind == "sqlite":
            await _raw(
                manager,
                "CREATE TRIGGER poison BEFORE INSERT ON checkpoints "
                "WHEN NEW.thread_id = 'poison' BEGIN SELECT RAISE(ABORT, 'poisoned'); END",
            )
            expected: type[Exception] = sqlite3.IntegrityError
        else:
            await _raw(
                manager,
                """CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$
                   BEGIN
                       IF NEW.thread_id = 'poison' THEN
                           RAISE EXCEPTION 'poisoned' USING ERRCODE = 'check_violation';
                       END IF;
                       RETURN NEW;
                   END $$""",
                "CREATE TRIGGER poison BEFORE INSERT ON checkpoints "
                "FOR EACH ROW EXECUTE FUNCTION poison()",
            )
            expected = pg.CheckViolation
        with pytest.raises(expected, match="poisoned"):
            await _writer(manager)("poison")
        assert _stored(manager.config, "poison") == 0
        await _assert_primary_serves(manager)


# --- SQLite -------------------------------------------------------------------


async def test_sqlite_file_locked_by_another_process_is_not_down(
    request: pytest.FixtureRequest,
) -> None:
    config = _config("sqlite", request)
    async with _manager(config) as manager:
        await _raw(manager, "PRAGMA busy_timeout = 100")  # not 5 s per attempt in a test
        write = _writer(manager)
        with contextlib.closing(
            sqlite3.connect(config.database_path or "", isolation_level=None)
        ) as other:
            other.execute("BEGIN EXCLUSIVE")
            with pytest.raises(sqlite3.OperationalError, match="database is locked"):
                await write("locked")
            other.execute("ROLLBACK")
        await _assert_primary_serves(manager, "locked")


async def test_full_sqlite_file_switches_and_heals(request: pytest.FixtureRequest) -> None:
    # max_page_count makes the file "full" as a full disk would: SQLITE_FULL.
    config = _config("sqlite", request)
    async with _manager(config) as manager:
        write = _writer(manager)
        await write("full")
        with contextlib.closing(sqlite3.connect(config.database_path or "")) as conn:
            pages = conn.execute("PRAGMA page_count").fetchone()[0]
        await _raw(manager, f"PRAGMA max_page_count = {pages}")
        written = 1
        while manager.router.active == 0:  # until a write needs a new page
            assert written < 200, "the file never filled up"
            await write("full")
            written += 1
        assert manager.overall_status == "degraded"
        assert "database or disk is full" in (manager.router.primary.last_error or "")
        assert manager.router.pending_sync == 1  # the write that failed went on in memory
        assert _stored(config, "full") == written - 1

        await _raw(manager, "PRAGMA max_page_count = 1073741823")
        assert (await manager.health_check())["overall_status"] == "healthy"
        assert manager.router.pending_sync == 0
        assert _stored(config, "full") == written


# --- PostgreSQL ---------------------------------------------------------------


@contextlib.contextmanager
def _admin(url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(url, autocommit=True) as conn:
        yield conn


async def _wait_for_lock_waiter(url: str, blocked: asyncio.Task[Any]) -> int:
    """The pid of the session of `url`'s database that waits for a lock (for `blocked`'s
    write). Looked for from a connection of its own, each look in its own transaction:
    inside the locking transaction, pg_stat_activity's sessions are those of its first
    look, and a pool connection opened after it was never seen waiting."""
    deadline = time.monotonic() + 30
    with _admin(url) as observer:
        dbname = observer.info.dbname
        while time.monotonic() < deadline:
            if blocked.done():  # say what ended it, not only that nothing waits
                raise AssertionError(
                    f"the blocked write ended before it was seen waiting: {blocked}"
                )
            row = observer.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s AND wait_event_type = 'Lock'",
                (dbname,),
            ).fetchone()
            if row is not None:
                return int(row[0])
            await asyncio.sleep(0.02)
    raise AssertionError("no session waits for the lock")


@pytest.mark.postgres
async def test_postgres_statement_errors_by_sqlstate(pg_database: str) -> None:
    # Each SQLSTATE raised from inside the saver's own INSERT, as the server would.
    config = create_postgres_checkpointer(pg_database, health_check_interval=3600)
    async with _manager(config) as manager:
        await _raw(
            manager,
            "CREATE TABLE poison (thread_id text PRIMARY KEY, code text NOT NULL)",
            """CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$
               DECLARE c text;
               BEGIN
                   SELECT code INTO c FROM poison WHERE thread_id = NEW.thread_id;
                   IF c IS NOT NULL THEN
                       RAISE EXCEPTION 'poisoned with %', c USING ERRCODE = c;
                   END IF;
                   RETURN NEW;
               END $$""",
            "CREATE TRIGGER poison BEFORE INSERT ON checkpoints "
            "FOR EACH ROW EXECUTE FUNCTION poison()",
        )
        write = _writer(manager)
        expected = {
            "23505": pg.UniqueViolation,
            "22001": pg.StringDataRightTruncation,
            "40P01": pg.DeadlockDetected,
            "40001": pg.SerializationFailure,
            "55P03": pg.LockNotAvailable,
            "57014": pg.QueryCanceled,
            "42601": pg.SyntaxError,
            "XX000": pg.InternalError_,
        }
        with _admin(pg_database) as admin:
            for code, error in expected.items():
                admin.execute("INSERT INTO poison VALUES (%s, %s)", (code, code))
                with pytest.raises(error, match=f"poisoned with {code}"):
                    await write(code)
                assert manager.router.active == 0, code
        await _assert_primary_serves(manager)


@pytest.mark.postgres
async def test_postgres_lock_timeout_is_not_down(pg_database: str) -> None:
    with _admin(pg_database) as admin:
        dbname = admin.info.dbname
        admin.execute(f"ALTER DATABASE \"{dbname}\" SET lock_timeout = '200ms'")
    config = create_postgres_checkpointer(pg_database, health_check_interval=3600)
    async with _manager(config) as manager:
        write = _writer(manager)
        saved = await write("locked")
        with _admin(pg_database) as admin:
            with admin.transaction():
                admin.execute("LOCK TABLE checkpoints IN ACCESS EXCLUSIVE MODE")
                with pytest.raises(pg.LockNotAvailable):
                    await write("locked")
                with pytest.raises(pg.LockNotAvailable):  # a read fails the same way
                    await manager.get_checkpoint("locked", saved["configurable"]["checkpoint_id"])
                assert manager.router.active == 0
        await _assert_primary_serves(manager, "locked")


@pytest.mark.postgres
async def test_postgres_cancelled_query_is_not_down(pg_database: str) -> None:
    # The write waits for the lock until cancelled, not until the lock bound (a loaded
    # machine may take longer than that to see it waiting).
    config = create_postgres_checkpointer(pg_database, health_check_interval=3600, lock_timeout=60)
    async with _manager(config) as manager:
        write = _writer(manager)
        with _admin(pg_database) as admin:
            with admin.transaction():
                admin.execute("LOCK TABLE checkpoints IN ACCESS EXCLUSIVE MODE")
                blocked = asyncio.create_task(write("cancelled"))
                pid = await _wait_for_lock_waiter(pg_database, blocked)
                admin.execute("SELECT pg_cancel_backend(%s)", (pid,))
                with pytest.raises(pg.QueryCanceled):
                    await blocked
        await _assert_primary_serves(manager, "cancelled")


@pytest.mark.postgres
async def test_postgres_deadlock_is_not_down(pg_database: str) -> None:
    config = create_postgres_checkpointer(pg_database, health_check_interval=3600)
    async with _manager(config) as manager:
        await manager.registry.touch_threads({"a": None, "b": None})
        pool = cast(PostgresBackend, manager.router.primary.backend).pool
        step = asyncio.Barrier(2)

        async def cross(first: str, second: str) -> None:
            async with pool.connection() as conn, conn.transaction():
                await conn.execute("SET LOCAL deadlock_timeout = '50ms'")
                update = "UPDATE code_hero_threads SET status = status WHERE thread_id = %s"
                await conn.execute(update, (first,))
                await step.wait()
                await conn.execute(update, (second,))

        results = await asyncio.gather(cross("a", "b"), cross("b", "a"), return_exceptions=True)
        deadlocks = [r for r in results if isinstance(r, pg.DeadlockDetected)]
        assert len(deadlocks) == 1 and not is_backend_error(deadlocks[0])
        await _assert_primary_serves(manager)


@pytest.mark.postgres
async def test_postgres_terminated_session_switches_and_heals(pg_database: str) -> None:
    # pg_terminate_backend sends admin_shutdown (57P01), what a stopping server sends.
    # The write waits for the lock until terminated, not until the lock bound (as above).
    config = create_postgres_checkpointer(pg_database, health_check_interval=3600, lock_timeout=60)
    async with _manager(config) as manager:
        write = _writer(manager)
        with _admin(pg_database) as admin:
            with admin.transaction():
                admin.execute("LOCK TABLE checkpoints IN ACCESS EXCLUSIVE MODE")
                blocked = asyncio.create_task(write("terminated"))
                pid = await _wait_for_lock_waiter(pg_database, blocked)
                admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
                await blocked  # the write went on in the fallback
            assert manager.overall_status == "degraded"
            assert manager.router.active == 1
            # AdminShutdown, or (in the saver's pipeline) the lost connection after it.
            assert "OperationalError" in (manager.router.primary.last_error or "") or (
                "AdminShutdown" in (manager.router.primary.last_error or "")
            )
            assert manager.router.pending_sync == 2  # the checkpoint and its thread's touch
            assert await manager.get_checkpoint("terminated") is not None
            assert _stored(config, "terminated") == 0

        assert (await manager.health_check())["overall_status"] == "healthy"
        assert manager.router.pending_sync == 0
        assert _stored(config, "terminated") == 1


# --- the pool's checkout check ------------------------------------------------


def _pool_backend_pids(admin: psycopg.Connection[Any]) -> list[int]:
    rows = admin.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
        "AND pid <> pg_backend_pid()"
    ).fetchall()
    return [int(r[0]) for r in rows]


async def _terminate_idle_sessions(pg_database: str) -> int:
    with _admin(pg_database) as admin:
        pids = _pool_backend_pids(admin)
        for pid in pids:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        deadline = time.monotonic() + 10
        while set(pids) & set(_pool_backend_pids(admin)):
            assert time.monotonic() < deadline, "terminated sessions linger"
            await asyncio.sleep(0.02)
    return len(pids)


@pytest.mark.postgres
async def test_idle_connections_the_server_closed_are_replaced(pg_database: str) -> None:
    config = create_postgres_checkpointer(pg_database, health_check_interval=3600)
    async with _manager(config) as manager:
        write = _writer(manager)
        await write("idle")
        assert await _terminate_idle_sessions(pg_database) >= 1
        await write("idle")
        assert await manager.get_checkpoint("idle") is not None
        assert await manager.registry.get_thread("idle") is not None
        assert _stored(config, "idle") == 2
        await _assert_primary_serves(manager)


@pytest.fixture
def high_descriptors() -> Iterator[None]:
    """Occupies every descriptor below 1100, so new sockets get numbers select() rejects."""
    settle_test_databases()  # a drop in flight would free a low one meanwhile
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 4096
    if soft < wanted:
        if hard != resource.RLIM_INFINITY and hard < wanted:
            pytest.fail(f"RLIMIT_NOFILE hard limit {hard} is below {wanted}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    opened: list[int] = []
    try:
        while not opened or opened[-1] < 1100:
            opened.append(os.open(os.devnull, os.O_RDONLY))
        yield
    finally:
        for fd in opened:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.postgres
@pytest.mark.usefixtures("high_descriptors")
async def test_pool_works_with_descriptors_above_1024(pg_database: str) -> None:
    config = create_postgres_checkpointer(pg_database, health_check_interval=3600)
    async with _manager(config) as manager:
        pool = cast(PostgresBackend, manager.router.primary.backend).pool
        async with pool.connection() as one, pool.connection() as two:
            assert min(one.fileno(), two.fileno()) >= 1024

        # The server hangs up on idle connections: still noticed at checkout.
        assert await _terminate_idle_sessions(pg_database) >= 1
        write = _writer(manager)
        await write("high-after")
        assert _stored(config, "high-after") == 1
        assert manager.router.active == 0

        for i in range(5):
            await asyncio.gather(*(write(f"high-{i}-{j}") for j in range(4)))
        await manager.registry.touch_threads({"high-0-0": None})
        page = await manager.threads_page(first=50)
        assert len(page.items) == 21
        assert await manager.get_checkpoint("high-4-3") is not None
        await _assert_primary_serves(manager)
