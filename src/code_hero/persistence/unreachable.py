"""Down means down: which errors say a database cannot be reached, not that one call failed.

`is_backend_error` is the one test the fallback router applies: only an error
it accepts moves the process to the fallback; any other error fails the one
call and the primary keeps serving. One error it accepts only on trust:
`is_pool_timeout` (a saturated pool raises it as well), which the router
confirms with the backend's own probe before it moves. `check_on_checkout` is
the PostgreSQL pool's check that discards a connection the server hung up on.
`background_level` is the level a background loop logs a failure at: the
outage has its own two WARNING lines (the router's), no loop adds another; a
busy pool on a serving database is no outage, and warns (`BackgroundLog`, at
most once a minute per loop).
`is_refused_value` is the other end: the database refused what it was given,
so the same write fails again however often it is tried.
"""

from __future__ import annotations

import logging
import select
import sqlite3
import sys
from typing import TYPE_CHECKING, Any

from code_hero.errors import BackendUnavailableError, CodeHeroError
from code_hero.persistence.backgroundlog import BackgroundLog

if TYPE_CHECKING:
    import psycopg

__all__ = [
    "PG_DISK_FULL_STATES",
    "PG_DOWN_CLASSES",
    "PG_DOWN_STATES",
    "PG_MISSING_TABLE_STATES",
    "PG_READ_ONLY_STATES",
    "SQLITE_DOWN_CODES",
    "BackgroundLog",
    "UnstorableJSON",
    "background_level",
    "check_on_checkout",
    "is_backend_error",
    "is_disk_full",
    "is_missing_table",
    "is_pool_timeout",
    "is_refused_value",
]

# Which errors mean "the database cannot be reached". Only these move the whole
# process to the fallback (and make registry calls UNAVAILABLE until it heals);
# any other error fails the one call and the primary keeps serving.
#
# PostgreSQL, by SQLSTATE. A psycopg OperationalError without one comes from
# libpq itself: refused, reset or lost connection, connect timeout, a closed
# connection. With one, the server answered, so only these count:
PG_DOWN_CLASSES = frozenset({"08"})  # connection_exception: the session failed
PG_DOWN_STATES = frozenset(
    {
        "57P01",  # admin_shutdown: what every session gets when the server stops
        "57P02",  # crash_shutdown: another backend crashed, the server restarts
        "57P03",  # cannot_connect_now: the server is starting up or shutting down
        "57P04",  # database_dropped: nothing here can be served until it is recreated
        # too_many_connections: the server refuses new sessions, so a pool that
        # lost its connections cannot get any back; it is raised at connect only.
        "53300",
    }
)
# read_only_sql_transaction: a standby (a failover pointed us at one, the old primary
# came back as one) or default_transaction_read_only set on. The server answers, but
# every write fails until someone acts, as SQLite's read-only file: down, so runs go
# on on the fallback; the probe asks whether a new session may write
# (`PostgresBackend.probe`), and the copy-back's fresh pool brings writable sessions.
# psycopg raises it as an InternalError (class 25), not an OperationalError.
PG_READ_ONLY_STATES = frozenset({"25006"})
# disk_full ("could not extend file ...: No space left on device"): the disk of the
# database's files (or of its temporary files) is full. Reads go on, but nearly every
# write of ours adds rows, so every run would fail until someone frees space, as with
# SQLite's full file: down, so runs go on on the fallback; while the outage lasts the
# probe writes a temporary file of 48 kB (`PostgresBackend.probe(room=True)`), so the
# copy-back waits for room. A disk too full for the WAL stops the server (a PANIC):
# that arrives as a lost connection, then a refused one until space is freed and the
# server is started again. psycopg raises it as an OperationalError (class 53).
PG_DISK_FULL_STATES = frozenset({"53100"})
# undefined_table, invalid_schema_name, undefined_column: our statements name only
# tables of ours, so a database without one was dropped and recreated (or restored
# empty) under us; a column is missing while the probe makes the tables again. Down
# only once confirmed (`is_missing_table`, `RouterFailover.outage`): the backend says
# which tables it lacks or is making; when none, the call's own error (a bug).
# undefined_function (42883): a deletion's first name is its function
# (`pg_tables.FUNCTIONS`), gone with the database or alone.
PG_MISSING_TABLE_STATES = frozenset({"42P01", "3F000", "42703", "42883"})
# Not down although the server ended or hurt only this session or statement:
# 57P05 idle_session_timeout (one idle connection; the checkout check normally
# discards it first), 25P03 idle_in_transaction_session_timeout, 57014
# query_canceled, 55P03 lock_not_available, 40P01 deadlock_detected, 40001
# serialization_failure, 53200 out_of_memory (one statement's memory), 53400
# configuration_limit_exceeded (temp_file_limit), class 58 (the server reports one
# file's I/O failure and keeps serving), and every integrity, syntax and data error.
#
# psycopg's other no-SQLSTATE OperationalErrors are not outages: PipelineAborted
# follows an earlier statement's error in the same pipeline, and the pool's
# TooManyRequests is load shedding. InterfaceError means misuse in psycopg 3
# (a closed cursor, no loader for a type): a closed or broken connection
# raises OperationalError("the connection is closed") instead. (psycopg is imported
# only where PostgreSQL is used, ~9 MiB resident: see `_postgres_down`.)

# SQLite, by primary result code (extended codes carry it in the low byte).
# There is no server: the file is the database, so failing to open, read,
# write or grow it is the database being unreachable for every statement.
SQLITE_DOWN_CODES = frozenset(
    {
        sqlite3.SQLITE_CANTOPEN,  # "unable to open database file" (also a journal file)
        sqlite3.SQLITE_IOERR,  # "disk I/O error", every SQLITE_IOERR_* variant
        # A full disk (or max_page_count) fails every write, not one statement,
        # and clears without a code change: the fallback keeps runs going and
        # its journal replays once there is room (recovery stops while it
        # still fails, so this does not flap).
        sqlite3.SQLITE_FULL,
        # A read-only file system or file (a remount after I/O errors, changed
        # permissions): as for FULL, every write fails until someone acts.
        sqlite3.SQLITE_READONLY,
    }
)
# Not down: SQLITE_BUSY and SQLITE_LOCKED. busy_timeout has already waited 5 s
# for a lock held by another process (the CLI, a second server, a backup), or
# a transaction lost an upgrade race (BUSY_SNAPSHOT): the file is reachable,
# and the next statement will most likely get the lock. It is PostgreSQL's
# lock_not_available, which is not down either; switching would also buy
# nothing, since the recovery replay would queue behind the same lock.
# SQLITE_CORRUPT and SQLITE_NOTADB are not down: waiting does not heal them,
# corruption may be limited to a few pages (one thread's rows), and replaying a
# journal into a damaged file is the wrong repair; the call fails loudly and a
# person restores the file. SQLITE_ERROR (syntax, missing table), CONSTRAINT
# (IntegrityError), INTERRUPT, NOMEM, TOOBIG, MISMATCH: one statement's fault.


def is_backend_error(exc: BaseException) -> bool:
    """True when `exc` says the database cannot be reached, not that one call failed."""
    if "psycopg_pool" in sys.modules or "psycopg" in sys.modules:  # else it is no psycopg error
        verdict = _postgres_down(exc)
        if verdict is not None:
            return verdict
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        return code is not None and code & 0xFF in SQLITE_DOWN_CODES
    # OSError covers ConnectionError and TimeoutError (asyncio's too): a socket
    # or file that cannot be reached, e.g. a SQLite directory that is a file.
    return isinstance(exc, OSError)


def background_level(exc: BaseException, *, serving: bool, saturated: bool) -> int:
    """The level a background loop (webhook claims, the bus's notifications) logs `exc`
    at: DEBUG when it is an outage's, which the router logs once and the loop survives
    by trying again; WARNING for anything else, a busy database included.

    An outage's: the router has declared it (`serving` False), or `exc` says the
    database cannot be reached where the router's probe will find it too (a loop often
    meets an outage before the probe does). Not a pool's wait that timed out while the
    pool has every connection it may open (`saturated`): a busy pool on a healthy
    database raises that too, and the router, which calls it busy and fails nothing
    over, logs nothing of it. Nor any SQLite error: SQLite's probe reads through the
    connection already open (often from its cache), so it does not find a full or
    read-only disk, nor a journal that cannot be created; the router declares those
    only when one of its own calls fails, and a loop on a quiet server that hid them
    would leave every failing write unsaid. Nor the router's own
    UNAVAILABLE while it serves: that is its "busy" (it raises "unreachable" only
    after failing over, when it no longer serves).
    """
    if not serving:
        return logging.DEBUG
    if isinstance(exc, BackendUnavailableError):
        return logging.WARNING
    if is_pool_timeout(exc):
        return logging.WARNING if saturated else logging.DEBUG
    if isinstance(exc, sqlite3.Error):
        return logging.WARNING
    if getattr(exc, "sqlstate", None) in PG_DISK_FULL_STATES:
        # The probe (a read) passes on a full disk: the router declares it only when
        # one of its own writes fails, so a loop on a quiet server must say it.
        return logging.WARNING
    return logging.DEBUG if is_backend_error(exc) else logging.WARNING


def _postgres_down(exc: BaseException) -> bool | None:
    """The verdict on a psycopg or pool error; None for any other error."""
    import psycopg
    from psycopg_pool import PoolClosed, PoolTimeout, TooManyRequests

    # The pool's errors subclass psycopg.OperationalError: test them first.
    # PoolTimeout counts because a server that cannot be reached shows up as
    # exactly that; a saturated pool raises it too, so it is confirmed first
    # (`is_pool_timeout`).
    if isinstance(exc, PoolTimeout | PoolClosed):
        return True
    if not isinstance(exc, psycopg.Error):
        return None
    if exc.sqlstate in PG_READ_ONLY_STATES:
        return True
    if exc.sqlstate in PG_DISK_FULL_STATES:
        # Not one statement's temporary files (a big sort on a full temporary volume,
        # or one that filled the disk and whose file is gone already): that call fails,
        # every other write may go in. Failing the server over for it would take
        # every client down, or flap at each sort that spills.
        return not _temporary_file(exc)
    not_down = (psycopg.errors.PipelineAborted, TooManyRequests)
    if not isinstance(exc, psycopg.OperationalError) or isinstance(exc, not_down):
        return False
    state = exc.sqlstate
    return state is None or state[:2] in PG_DOWN_CLASSES or state in PG_DOWN_STATES


def _temporary_file(exc: BaseException) -> bool:
    """True when a disk_full error is about a statement's temporary file, not the
    database's own files ("could not write to file "base/pgsql_tmp/...", "could not
    write block N of temporary file")."""
    text = str(exc)
    return "pgsql_tmp" in text or "temporary file" in text


def is_disk_full(exc: BaseException) -> bool:
    """True when `exc` says the database's disk has no room for what it writes
    (PostgreSQL's disk_full, SQLite's SQLITE_FULL): down until space is freed."""
    if getattr(exc, "sqlstate", None) in PG_DISK_FULL_STATES:
        return True
    code = getattr(exc, "sqlite_errorcode", None) if isinstance(exc, sqlite3.Error) else None
    return code is not None and code & 0xFF == sqlite3.SQLITE_FULL


def is_missing_table(exc: BaseException) -> bool:
    """True when `exc` says a table (or schema) a statement named does not exist: ours
    were dropped with the database, unless the database still has them all."""
    return getattr(exc, "sqlstate", None) in PG_MISSING_TABLE_STATES


def is_pool_timeout(exc: BaseException) -> bool:
    """True when `exc` is a pool's wait for a connection that ran out: the database
    may be down, or only busy (every connection in use); only a probe can tell."""
    if "psycopg_pool" not in sys.modules:
        return False
    from psycopg_pool import PoolTimeout

    return isinstance(exc, PoolTimeout)


async def check_on_checkout(conn: psycopg.AsyncConnection[Any]) -> None:
    """The pool's checkout check, without a round trip.

    psycopg's `check_connection` sends a query on every checkout: one extra
    round trip per checkpoint write, about an eighth of the CPU of a graph run
    here. An idle connection has nothing to read, so a readable socket means
    the server closed it or sent a termination notice (a restart, an idle
    timeout); that connection is discarded and the pool opens a fresh one.
    """
    import psycopg

    if conn.closed or conn.broken:
        raise psycopg.OperationalError("connection closed")
    # poll, not select: select() rejects descriptors from 1024 up, which a
    # replica holding a thousand client sockets hands its new connections.
    # POLLHUP, POLLERR and POLLNVAL are always reported: a hung-up socket
    # counts like a readable one.
    idle = select.poll()
    idle.register(conn.fileno(), select.POLLIN)
    if idle.poll(0):
        # Closed, so the pool sees a lost connection and replaces it (a merely
        # failed check would put it back in the pool as good).
        await conn.close()
        raise psycopg.OperationalError("the server closed or notified an idle connection")


class UnstorableJSON(ValueError):
    """A value no JSON text can be made of for the database (an int past Python's
    digit limit, a NaN as a key): refused as a data exception is, every time."""


def is_refused_value(exc: BaseException) -> bool:
    """Whether `exc` says the database refused a value it was given (a NUL in a jsonb, a
    number out of range, one that cannot be encoded): the same write fails every time,
    unlike a busy pool, a deadlock or an outage.

    Only these, listed: PostgreSQL's class 22 (data exception), psycopg's DataError
    (also raised client-side with no SQLSTATE: "text fields cannot contain NUL"),
    sqlite3's DataError, OverflowError (an int too big for a column) and
    UnicodeEncodeError (a lone surrogate). Not a plain ValueError or TypeError:
    aiosqlite raises ValueError on a closed connection, and a TypeError is a bug; a
    run ended ERROR for either would be a run lost to what a next claimer survives.
    Nor any of our own errors (BadInputError is a ValueError too).
    """
    if isinstance(exc, CodeHeroError):
        return False
    sqlstate = getattr(exc, "sqlstate", None)
    if isinstance(sqlstate, str):
        return sqlstate.startswith("22")
    if isinstance(exc, (sqlite3.DataError, OverflowError, UnicodeEncodeError, UnstorableJSON)):
        return True
    if "psycopg" in sys.modules:  # else it is no psycopg error
        import psycopg

        return isinstance(exc, psycopg.DataError)
    return False
