"""Forward-only migrations of the registry tables, one list per SQL dialect.

A migration's position in its list is its version, recorded in
`code_hero_migrations(v)` once applied. Entry 0 creates that table. Never edit
or reorder an entry that has shipped: append a new one (to both lists when the
change concerns both dialects, a no-op "SELECT 1" to the other when it does
not, so that a version means the same change on both). An entry is one
statement, or a tuple of statements applied in order in the same transaction
(SQLite cannot add a constraint to a table: it rebuilds the table).

Every table is prefixed `code_hero_` so it cannot collide with the LangGraph
checkpoint savers' tables (`checkpoints`, `checkpoint_blobs`,
`checkpoint_writes`, `checkpoint_migrations`, `writes`) in the same database.

PostgreSQL stores JSON as JSONB and times as TIMESTAMPTZ; ids use the "C"
collation so that keyset order is plain byte order, as on SQLite. SQLite
stores JSON as TEXT and times as fixed-width ISO-8601 UTC text
(`2025-01-02T03:04:05.000006+00:00`), which sorts as the times do.
"""

from __future__ import annotations

__all__ = [
    "MIGRATION_LOCK_KEY",
    "POSTGRES_MIGRATIONS",
    "PURGE_BUSY",
    "PURGE_THREAD",
    "PURGE_THREAD_SIGNATURE",
    "SETUP_LOCK_KEY",
    "SQLITE_MIGRATIONS",
    "Migration",
]

Migration = str | tuple[str, ...]

# PostgreSQL advisory-lock keys. SETUP_LOCK_KEY (b"codehero") serialises whole
# set-ups of one database (the savers' migrations, then the registry's) across
# replicas, held as a session lock taken by polling: a replica waiting for it holds
# no open transaction, which the savers' CREATE INDEX CONCURRENTLY would wait for
# (two replicas starting together deadlocked that way). MIGRATION_LOCK_KEY
# (b"codehrmg") is the registry's own transaction lock, for a setup() called alone;
# a different key, so it never waits on its own process's session lock.
SETUP_LOCK_KEY = 0x636F_6465_6865_726F
MIGRATION_LOCK_KEY = 0x636F_6465_6872_6D67

# v11 (deletes are final): runs belong to a thread and events to a run,
# enforced by foreign keys that cascade a thread's deletion. Rows that an earlier
# version left without their parent (a run finishing after its thread's deletion)
# are removed first.
_DELETE_ORPHANS = (
    "DELETE FROM code_hero_runs WHERE thread_id NOT IN (SELECT thread_id FROM code_hero_threads)",
    "DELETE FROM code_hero_run_events WHERE run_id NOT IN (SELECT run_id FROM code_hero_runs)",
)

# v12 (both): threads listed by creation time (orderBy CREATED_AT, either direction: a
# B-tree is read backwards as well), with and without the owner's filter.
_THREADS_BY_CREATION = (
    "CREATE INDEX code_hero_threads_created_idx ON code_hero_threads (created_at, thread_id)",
    """
    CREATE INDEX code_hero_threads_user_created_idx
        ON code_hero_threads (user_id, created_at, thread_id)
    """,
)


# (webhooks, both) registered webhooks and the outbox of their deliveries. A webhook's
# events are a comma-framed list matched with LIKE, its run filter's fields columns:
# both compared in the INSERT ... SELECT that writes the outbox rows with a run's end
# (see persistence/registry/outbox.py). A delivery outlives its run and thread (no
# foreign key to them), not its webhook. Payloads are TEXT on both: the exact body
# that is signed and sent on every attempt.
def _webhook_tables(ts: str, key: str, boolean: str) -> tuple[str, ...]:
    return (
        f"""
        CREATE TABLE code_hero_webhooks (
            webhook_id TEXT{key} PRIMARY KEY,
            user_id TEXT,
            all_users {boolean} NOT NULL,
            url TEXT NOT NULL,
            events TEXT NOT NULL,
            secret TEXT NOT NULL,
            filter_thread_id TEXT,
            filter_status TEXT,
            filter_graph TEXT,
            filter_user_id TEXT,
            created_at {ts} NOT NULL
        )
        """,
        "CREATE INDEX code_hero_webhooks_user_idx ON code_hero_webhooks (user_id, created_at)",
        f"""
        CREATE TABLE code_hero_webhook_deliveries (
            delivery_id TEXT{key} PRIMARY KEY,
            webhook_id TEXT REFERENCES code_hero_webhooks (webhook_id) ON DELETE CASCADE,
            user_id TEXT,
            run_id TEXT,
            thread_id TEXT,
            event TEXT NOT NULL,
            url TEXT NOT NULL,
            payload TEXT NOT NULL,
            status TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            last_status_code INTEGER,
            last_error TEXT,
            created_at {ts} NOT NULL,
            delivered_at {ts},
            next_attempt_at {ts},
            lease_owner TEXT,
            lease_expires_at {ts}
        )
        """,
        """
        CREATE INDEX code_hero_webhook_deliveries_due_idx
            ON code_hero_webhook_deliveries (next_attempt_at) WHERE status = 'PENDING'
        """,
        """
        CREATE INDEX code_hero_webhook_deliveries_created_idx
            ON code_hero_webhook_deliveries (created_at, delivery_id)
        """,
        """
        CREATE INDEX code_hero_webhook_deliveries_webhook_idx
            ON code_hero_webhook_deliveries (webhook_id)
        """,
    )


# Thread retention (issue 13): a thread may carry `ttl_seconds`; `expires_at` is
# `updated_at + ttl_seconds` (null: never), indexed for the sweep. A trigger keeps it
# with `updated_at` in every statement that moves either (touches, run admission and
# end, put_thread, updateThread), so no write path has to remember it.
_THREAD_EXPIRY_PG = (
    "ALTER TABLE code_hero_threads ADD COLUMN ttl_seconds INTEGER",
    "ALTER TABLE code_hero_threads ADD COLUMN expires_at TIMESTAMPTZ",
    """
    CREATE INDEX code_hero_threads_expires_idx ON code_hero_threads (expires_at)
        WHERE expires_at IS NOT NULL
    """,
    """
    CREATE OR REPLACE FUNCTION code_hero_thread_expiry() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        NEW.expires_at := CASE WHEN NEW.ttl_seconds IS NULL THEN NULL
            ELSE NEW.updated_at + make_interval(secs => NEW.ttl_seconds) END;
        RETURN NEW;
    END
    $$
    """,
    """
    CREATE TRIGGER code_hero_threads_expiry
        BEFORE INSERT OR UPDATE OF updated_at, ttl_seconds ON code_hero_threads
        FOR EACH ROW EXECUTE FUNCTION code_hero_thread_expiry()
    """,
)


# SQLite's times are fixed-width text: whole seconds are added by datetime() and the
# fraction and offset (characters 20 on) kept, so the result sorts like the others.
def _sqlite_expiry_triggers(marked: str = "") -> tuple[str, str]:
    """The two triggers that keep a row's expires_at; with `marked`, a line of the CASE
    for a row a deletion marked."""
    later = "replace(datetime(NEW.updated_at, '+' || NEW.ttl_seconds || ' seconds'), ' ', 'T')"
    body = f"""
    UPDATE code_hero_threads SET expires_at = CASE WHEN NEW.ttl_seconds IS NULL THEN NULL
{marked}        ELSE {later}
            || substr(NEW.updated_at, 20) END
    WHERE thread_id = NEW.thread_id;
"""
    return (
        f"""
    CREATE TRIGGER code_hero_threads_expiry_insert AFTER INSERT ON code_hero_threads
    BEGIN {body} END
    """,
        f"""
    CREATE TRIGGER code_hero_threads_expiry_update
        AFTER UPDATE OF updated_at, ttl_seconds ON code_hero_threads
    BEGIN {body} END
    """,
    )


_THREAD_EXPIRY_SQLITE = (
    "ALTER TABLE code_hero_threads ADD COLUMN ttl_seconds INTEGER",
    "ALTER TABLE code_hero_threads ADD COLUMN expires_at TEXT",
    """
    CREATE INDEX code_hero_threads_expires_idx ON code_hero_threads (expires_at)
        WHERE expires_at IS NOT NULL
    """,
    *_sqlite_expiry_triggers(),
)

# A thread a deletion marked (`start_deletion`: ttl 0) expired at the epoch, not at its
# `updated_at`: a write stamped after a reader took its now (the stopped run's end, a
# checkpoint's touch), a reader on a replica whose clock runs behind within the
# offset's tolerance, or a wall clock stepped back made the marked row look live, and a
# startRun on the id answered CONFLICT instead of ending the deletion (CI, seen once).
_MARKED_EPOCH_PG = "timestamptz '1970-01-01 00:00:00+00'"
_MARKED_EXPIRED_PG = (
    f"""
    CREATE OR REPLACE FUNCTION code_hero_thread_expiry() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        NEW.expires_at := CASE WHEN NEW.ttl_seconds IS NULL THEN NULL
            WHEN NEW.ttl_seconds = 0 THEN {_MARKED_EPOCH_PG}
            ELSE NEW.updated_at + make_interval(secs => NEW.ttl_seconds) END;
        RETURN NEW;
    END
    $$
    """,
    f"UPDATE code_hero_threads SET expires_at = {_MARKED_EPOCH_PG} WHERE ttl_seconds = 0",
)
_MARKED_EPOCH_SQLITE = "'1970-01-01T00:00:00.000000+00:00'"
_MARKED_EXPIRED_SQLITE = (
    "DROP TRIGGER code_hero_threads_expiry_insert",
    "DROP TRIGGER code_hero_threads_expiry_update",
    *_sqlite_expiry_triggers(f"        WHEN NEW.ttl_seconds = 0 THEN {_MARKED_EPOCH_SQLITE}\n"),
    f"UPDATE code_hero_threads SET expires_at = {_MARKED_EPOCH_SQLITE} WHERE ttl_seconds = 0",
)

# Run timelines and usage (issue 12): the tokens a run's chat models reported, summed
# by runStats in SQL, and its steps (node executions, a JSON list written with the
# run's row as it goes: a run's detail loads them with the run, in the same query).
_RUN_USAGE_AND_STEPS_PG = (
    "ALTER TABLE code_hero_runs ADD COLUMN input_tokens BIGINT NOT NULL DEFAULT 0",
    "ALTER TABLE code_hero_runs ADD COLUMN output_tokens BIGINT NOT NULL DEFAULT 0",
    "ALTER TABLE code_hero_runs ADD COLUMN steps JSONB NOT NULL DEFAULT '[]'",
)
_RUN_USAGE_AND_STEPS_SQLITE = (
    "ALTER TABLE code_hero_runs ADD COLUMN input_tokens INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE code_hero_runs ADD COLUMN output_tokens INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE code_hero_runs ADD COLUMN steps TEXT NOT NULL DEFAULT '[]'",
)

# A human edit's claim on its thread (runs/edits.py): until this time no run is admitted
# and no other edit claims the thread; NULL or past: free. Taken by `claim_edit` only
# while the thread has no unfinished run, released when the edit ends, and lapsing by
# itself when the process that took it died.
_EDIT_CLAIM_PG = "ALTER TABLE code_hero_threads ADD COLUMN edit_until TIMESTAMPTZ"
_EDIT_CLAIM_SQLITE = "ALTER TABLE code_hero_threads ADD COLUMN edit_until TEXT"

# (both) the token of the deletion that marked a thread's row (`start_deletion`): its
# last step takes the row only while it carries that token, never a row another
# deletion marked after a client made the thread anew.
_DELETION_TOKEN = "ALTER TABLE code_hero_threads ADD COLUMN deletion_token TEXT"


# (both) What an outage's copy-back last wrote of a run's row (`Registry.copy_thread`):
# its status and lease owner. While the row still has them (an unfinished status for an
# unfinished one), no other executor claimed, released or ended the run since, and a
# later copy of it from the same fallback may write it again, its end too; once they
# differ, another executor took the run over (or ended it) and the copy leaves it. A
# claim by an executor other than the one the copy wrote sets copied_status to
# 'TAKEN_OVER' for good (`Dialect._claim_mark`): released there again, the row would
# look as the copy left it. NULL: no copy wrote the row (or one of an earlier version
# did).
_COPY_MARK = (
    "ALTER TABLE code_hero_runs ADD COLUMN copied_status TEXT",
    "ALTER TABLE code_hero_runs ADD COLUMN copied_lease_owner TEXT",
)


def _deleted_threads(time: str, collate: str) -> tuple[str, ...]:
    """(both) A record of each finished deletion (`tombstones.py`): the thread's id and
    when it was created (one incarnation of the id) and deleted. Written by every
    deletion's last step with the row's delete; an outage's copy-back gives nothing to a
    thread incarnation it names. Pruned by deleted_at (the sweep's retention)."""
    return (
        f"""
        CREATE TABLE code_hero_deleted_threads (
            thread_id TEXT{collate} NOT NULL,
            created_at {time} NOT NULL,
            deleted_at {time} NOT NULL,
            PRIMARY KEY (thread_id, created_at)
        )
        """,
        "CREATE INDEX code_hero_deleted_threads_at_idx ON code_hero_deleted_threads (deleted_at)",
    )


# (PostgreSQL) A thread's one-step deletion (`PostgresRegistry.purge_idle_thread`) as
# one function call: one statement where it was two in a pipeline (the thread's lock,
# then one statement of data-modifying CTEs), each with its Bind, Execute and send, and
# the CTE statement's executor start over some sixty plan nodes. Measured side by side
# at the registry: 0.25-0.4 ms less a deletion, 0.12 ms less of the client's CPU (issue
# 15). In a volatile plpgsql function each statement takes a snapshot of its own (READ
# COMMITTED), so the checks after the lock see every run admitted before it, as the
# pipeline's second statement did; the function's statements run in the caller's one
# statement, committed together or not at all. Locks in every writer's order: the
# thread, its runs by id, then the checkpoints. Its plans are generic from its first
# call on a connection (the function's own setting): planned afresh for each of the
# first five, a connection's first deletions paid more planning than execution. The
# THREAD_DELETED deliveries are `OutboxQueries._thread_deleted_insert`'s, with the
# thread's row still there; the tombstone is the row deleted (`tombstones.py`).
# Returns what the statement returned: locked, locked_runs, queued, runs, threads,
# checkpoints, and busy (unfinished runs), edited (an edit's claim), expired (at
# p_live_at), foreign_ (not p_owner's, or no row, when p_owner is given): any of the
# four and nothing is deleted. No `?` or percent sign in the text: the migration runs
# through the registry's placeholders.
PURGE_BUSY = (
    # Over the thread's runs, not `status IN (...)` in the WHERE: that condition
    # matches the partial index of unfinished runs, which holds an entry for every
    # version of a run that was ever unfinished until a vacuum (test_purge_plan.py).
    "coalesce((SELECT bool_or(status IN ('PENDING', 'RUNNING')) FROM code_hero_runs "
    "WHERE thread_id = p_thread), false)"
)
# Its signature, as `to_regprocedure` finds it (`pg_tables.FUNCTIONS`).
PURGE_THREAD_SIGNATURE = (
    "code_hero_purge_thread(text, timestamptz, timestamptz, text, text, text, text, text)"
)
PURGE_THREAD = f"""
    CREATE FUNCTION code_hero_purge_thread(
        p_thread TEXT, p_now TIMESTAMPTZ, p_live_at TIMESTAMPTZ, p_owner TEXT,
        p_prefix TEXT, p_event TEXT, p_payload TEXT, p_events TEXT,
        OUT locked INTEGER, OUT locked_runs INTEGER, OUT queued INTEGER, OUT runs INTEGER,
        OUT threads INTEGER, OUT checkpoints INTEGER, OUT busy BOOLEAN, OUT edited BOOLEAN,
        OUT expired BOOLEAN, OUT foreign_ BOOLEAN
    ) VOLATILE SET plan_cache_mode = force_generic_plan LANGUAGE plpgsql AS $purge$
    DECLARE
        th RECORD;
        found_row BOOLEAN;
        ids TEXT[];
        made TIMESTAMPTZ;
    BEGIN
        locked := 0; locked_runs := 0; queued := 0; runs := 0; threads := 0;
        checkpoints := 0;
        SELECT t.edit_until, t.expires_at, t.ttl_seconds, t.user_id INTO th
            FROM code_hero_threads t WHERE t.thread_id = p_thread FOR UPDATE;
        found_row := FOUND;
        busy := {PURGE_BUSY};
        edited := coalesce(th.edit_until > p_now, false);
        -- A ttl of 0 is a deletion under way (start_deletion) that failed: a retry ends it.
        expired := coalesce(th.expires_at <= p_live_at AND th.ttl_seconds IS DISTINCT FROM 0,
                            false);
        foreign_ := p_owner IS NOT NULL AND th.user_id IS DISTINCT FROM p_owner;
        IF busy OR edited OR expired OR foreign_ THEN
            -- busy, edited: deletable once they end (so never when expired or foreign).
            busy := busy AND NOT expired AND NOT foreign_;
            edited := edited AND NOT expired AND NOT foreign_;
            RETURN;
        END IF;
        IF found_row THEN
            locked := 1;
            SELECT array_agg(r.run_id) INTO ids FROM (
                SELECT run_id FROM code_hero_runs WHERE thread_id = p_thread
                ORDER BY run_id FOR UPDATE) r;
            locked_runs := coalesce(cardinality(ids), 0);
            INSERT INTO code_hero_webhook_deliveries (
                delivery_id, webhook_id, user_id, run_id, thread_id, event, url, payload,
                status, attempts, created_at, next_attempt_at)
            SELECT p_prefix || w.webhook_id, w.webhook_id, w.user_id, NULL, t.thread_id,
                p_event, w.url, p_payload, 'PENDING', 0, p_now, p_now
            FROM code_hero_webhooks w JOIN code_hero_threads t
                ON t.thread_id = p_thread AND (w.all_users OR w.user_id = t.user_id)
            WHERE w.events LIKE p_events
                AND (w.filter_thread_id IS NULL OR w.filter_thread_id = p_thread);
            GET DIAGNOSTICS queued = ROW_COUNT;
            IF ids IS NOT NULL THEN
                -- Its runs (all locked above; none comes while the thread is) by its id,
                -- their events by the foreign key's cascade, one run at a time by key:
                -- a delete by `run_id = ANY(...)` planned generically while the tables
                -- were small and not yet analysed scanned every run or every event, and
                -- went on doing so as they grew.
                DELETE FROM code_hero_runs WHERE thread_id = p_thread;
                GET DIAGNOSTICS runs = ROW_COUNT;
            END IF;
            DELETE FROM code_hero_threads WHERE thread_id = p_thread
                RETURNING created_at INTO made;
            GET DIAGNOSTICS threads = ROW_COUNT;
            IF threads > 0 THEN  -- the row deleted (locked above: it is)
                INSERT INTO code_hero_deleted_threads (thread_id, created_at, deleted_at)
                    VALUES (p_thread, made, p_now)
                    ON CONFLICT (thread_id, created_at)
                    DO UPDATE SET deleted_at = excluded.deleted_at;
            END IF;
        END IF;
        -- The stock adelete_thread's three deletes (see PostgresBackend.delete_checkpoints).
        DELETE FROM checkpoints WHERE thread_id = p_thread;
        GET DIAGNOSTICS checkpoints = ROW_COUNT;
        DELETE FROM checkpoint_blobs WHERE thread_id = p_thread;
        DELETE FROM checkpoint_writes WHERE thread_id = p_thread;
    END
    $purge$
"""


POSTGRES_MIGRATIONS: list[Migration] = [
    "CREATE TABLE IF NOT EXISTS code_hero_migrations (v INTEGER PRIMARY KEY)",
    """
    CREATE TABLE code_hero_threads (
        thread_id TEXT COLLATE "C" PRIMARY KEY,
        user_id TEXT,
        status TEXT NOT NULL,
        metadata JSONB NOT NULL DEFAULT '{}',
        created_at TIMESTAMPTZ NOT NULL,
        updated_at TIMESTAMPTZ NOT NULL
    )
    """,
    """
    CREATE INDEX code_hero_threads_updated_idx
        ON code_hero_threads (updated_at DESC, thread_id DESC)
    """,
    """
    CREATE INDEX code_hero_threads_user_idx
        ON code_hero_threads (user_id, updated_at, thread_id)
    """,
    """
    CREATE INDEX code_hero_threads_metadata_idx
        ON code_hero_threads USING GIN (metadata jsonb_path_ops)
    """,
    """
    CREATE TABLE code_hero_runs (
        run_id TEXT COLLATE "C" PRIMARY KEY,
        thread_id TEXT COLLATE "C" NOT NULL,
        graph TEXT NOT NULL,
        status TEXT NOT NULL,
        input JSONB,
        output JSONB,
        error TEXT,
        metadata JSONB NOT NULL DEFAULT '{}',
        config JSONB NOT NULL DEFAULT '{}',
        user_id TEXT,
        multitask TEXT NOT NULL DEFAULT 'REJECT',
        created_at TIMESTAMPTZ NOT NULL,
        started_at TIMESTAMPTZ,
        finished_at TIMESTAMPTZ,
        lease_owner TEXT,
        lease_expires_at TIMESTAMPTZ
    )
    """,
    "CREATE INDEX code_hero_runs_created_idx ON code_hero_runs (created_at, run_id)",
    """
    CREATE INDEX code_hero_runs_thread_idx
        ON code_hero_runs (thread_id, created_at, run_id)
    """,
    """
    CREATE TABLE code_hero_run_events (
        run_id TEXT COLLATE "C" NOT NULL,
        seq BIGINT NOT NULL,
        thread_id TEXT COLLATE "C" NOT NULL,
        type TEXT NOT NULL,
        payload JSONB NOT NULL,
        at TIMESTAMPTZ NOT NULL,
        PRIMARY KEY (run_id, seq)
    )
    """,
    # v9, v10: runs are claimed from the table by any replica (several replicas on one database).
    "ALTER TABLE code_hero_runs ADD COLUMN cancel_requested BOOLEAN NOT NULL DEFAULT false",
    """
    CREATE INDEX code_hero_runs_unfinished_idx ON code_hero_runs (created_at, run_id)
        WHERE status IN ('PENDING', 'RUNNING')
    """,
    (
        *_DELETE_ORPHANS,
        """
        ALTER TABLE code_hero_runs ADD CONSTRAINT code_hero_runs_thread_fk
            FOREIGN KEY (thread_id) REFERENCES code_hero_threads (thread_id) ON DELETE CASCADE
        """,
        """
        ALTER TABLE code_hero_run_events ADD CONSTRAINT code_hero_run_events_run_fk
            FOREIGN KEY (run_id) REFERENCES code_hero_runs (run_id) ON DELETE CASCADE
        """,
    ),
    _THREADS_BY_CREATION,
    _webhook_tables("TIMESTAMPTZ", ' COLLATE "C"', "BOOLEAN"),  # webhooks
    _THREAD_EXPIRY_PG,  # thread retention: ttl_seconds, expires_at (issue 13)
    _RUN_USAGE_AND_STEPS_PG,  # run usage and steps (issue 12)
    _EDIT_CLAIM_PG,  # an edit and a run's admission exclude each other
    _DELETION_TOKEN,  # a deletion's last step takes only the row it marked
    _deleted_threads("TIMESTAMPTZ", ' COLLATE "C"'),  # tombstones of finished deletions
    PURGE_THREAD,  # a thread's one-step deletion in one statement (issue 15)
    _COPY_MARK,  # a run's row as an outage's copy left it
    "ALTER TABLE code_hero_runs ADD COLUMN seq_reserved BIGINT NOT NULL DEFAULT 0",
    _MARKED_EXPIRED_PG,  # a marked thread expired at the epoch, whatever the clocks
]

SQLITE_MIGRATIONS: list[Migration] = [
    "CREATE TABLE IF NOT EXISTS code_hero_migrations (v INTEGER PRIMARY KEY)",
    """
    CREATE TABLE code_hero_threads (
        thread_id TEXT PRIMARY KEY,
        user_id TEXT,
        status TEXT NOT NULL,
        metadata TEXT NOT NULL DEFAULT '{}',
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    )
    """,
    """
    CREATE INDEX code_hero_threads_updated_idx
        ON code_hero_threads (updated_at DESC, thread_id DESC)
    """,
    """
    CREATE INDEX code_hero_threads_user_idx
        ON code_hero_threads (user_id, updated_at, thread_id)
    """,
    # Keeps the versions of both lists aligned: PostgreSQL's v4 is the GIN index
    # on metadata, and SQLite has no containment operator that an index could back.
    "SELECT 1",
    """
    CREATE TABLE code_hero_runs (
        run_id TEXT PRIMARY KEY,
        thread_id TEXT NOT NULL,
        graph TEXT NOT NULL,
        status TEXT NOT NULL,
        input TEXT,
        output TEXT,
        error TEXT,
        metadata TEXT NOT NULL DEFAULT '{}',
        config TEXT NOT NULL DEFAULT '{}',
        user_id TEXT,
        multitask TEXT NOT NULL DEFAULT 'REJECT',
        created_at TEXT NOT NULL,
        started_at TEXT,
        finished_at TEXT,
        lease_owner TEXT,
        lease_expires_at TEXT
    )
    """,
    "CREATE INDEX code_hero_runs_created_idx ON code_hero_runs (created_at, run_id)",
    """
    CREATE INDEX code_hero_runs_thread_idx
        ON code_hero_runs (thread_id, created_at, run_id)
    """,
    """
    CREATE TABLE code_hero_run_events (
        run_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        thread_id TEXT NOT NULL,
        type TEXT NOT NULL,
        payload TEXT NOT NULL,
        at TEXT NOT NULL,
        PRIMARY KEY (run_id, seq)
    )
    """,
    "ALTER TABLE code_hero_runs ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0",
    """
    CREATE INDEX code_hero_runs_unfinished_idx ON code_hero_runs (created_at, run_id)
        WHERE status IN ('PENDING', 'RUNNING')
    """,
    (
        *_DELETE_ORPHANS,
        # SQLite adds a foreign key only by rebuilding the table (the columns are
        # those of v5 and v9; the indexes of v6, v7 and v10 go with the old table).
        """
        CREATE TABLE code_hero_runs_v11 (
            run_id TEXT PRIMARY KEY,
            thread_id TEXT NOT NULL
                REFERENCES code_hero_threads (thread_id) ON DELETE CASCADE,
            graph TEXT NOT NULL,
            status TEXT NOT NULL,
            input TEXT,
            output TEXT,
            error TEXT,
            metadata TEXT NOT NULL DEFAULT '{}',
            config TEXT NOT NULL DEFAULT '{}',
            user_id TEXT,
            multitask TEXT NOT NULL DEFAULT 'REJECT',
            created_at TEXT NOT NULL,
            started_at TEXT,
            finished_at TEXT,
            lease_owner TEXT,
            lease_expires_at TEXT,
            cancel_requested INTEGER NOT NULL DEFAULT 0
        )
        """,
        """
        INSERT INTO code_hero_runs_v11 (run_id, thread_id, graph, status, input, output,
            error, metadata, config, user_id, multitask, created_at, started_at, finished_at,
            lease_owner, lease_expires_at, cancel_requested)
        SELECT run_id, thread_id, graph, status, input, output, error, metadata, config,
            user_id, multitask, created_at, started_at, finished_at, lease_owner,
            lease_expires_at, cancel_requested
        FROM code_hero_runs
        """,
        "DROP TABLE code_hero_runs",
        "ALTER TABLE code_hero_runs_v11 RENAME TO code_hero_runs",
        "CREATE INDEX code_hero_runs_created_idx ON code_hero_runs (created_at, run_id)",
        """
        CREATE INDEX code_hero_runs_thread_idx
            ON code_hero_runs (thread_id, created_at, run_id)
        """,
        """
        CREATE INDEX code_hero_runs_unfinished_idx ON code_hero_runs (created_at, run_id)
            WHERE status IN ('PENDING', 'RUNNING')
        """,
        """
        CREATE TABLE code_hero_run_events_v11 (
            run_id TEXT NOT NULL REFERENCES code_hero_runs (run_id) ON DELETE CASCADE,
            seq INTEGER NOT NULL,
            thread_id TEXT NOT NULL,
            type TEXT NOT NULL,
            payload TEXT NOT NULL,
            at TEXT NOT NULL,
            PRIMARY KEY (run_id, seq)
        )
        """,
        """
        INSERT INTO code_hero_run_events_v11 (run_id, seq, thread_id, type, payload, at)
        SELECT run_id, seq, thread_id, type, payload, at FROM code_hero_run_events
        """,
        "DROP TABLE code_hero_run_events",
        "ALTER TABLE code_hero_run_events_v11 RENAME TO code_hero_run_events",
    ),
    _THREADS_BY_CREATION,
    _webhook_tables("TEXT", "", "INTEGER"),  # webhooks
    _THREAD_EXPIRY_SQLITE,  # thread retention: ttl_seconds, expires_at (issue 13)
    _RUN_USAGE_AND_STEPS_SQLITE,  # run usage and steps (issue 12)
    _EDIT_CLAIM_SQLITE,  # an edit and a run's admission exclude each other
    _DELETION_TOKEN,  # a deletion's last step takes only the row it marked
    _deleted_threads("TEXT", ""),  # tombstones of finished deletions
    "SELECT 1",  # (PostgreSQL: the one-step deletion's function)
    _COPY_MARK,  # a run's row as an outage's copy left it
    # The seq a run's events may be published up to before they are stored (SEQ_RESERVE).
    "ALTER TABLE code_hero_runs ADD COLUMN seq_reserved INTEGER NOT NULL DEFAULT 0",
    _MARKED_EXPIRED_SQLITE,  # a marked thread expired at the epoch, whatever the clocks
]
