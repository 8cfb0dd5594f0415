"""The dialect seam of the registry: what SQLite and PostgreSQL spell differently.

Every registry query is written once, with `?` placeholders, against `Dialect`.
A dialect fills in how a session (connection, lock, transaction) is had, how
JSON and times travel, how metadata containment, key presence and "id in list"
are spelled,
and which error means a duplicate key or a missing parent. Rows become records
here, once, for both.
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import fields as dataclass_fields
from datetime import UTC, datetime
from typing import Any, ClassVar, Protocol

from code_hero.errors import BadInputError, ConflictError, NotFoundError
from code_hero.persistence import clock
from code_hero.persistence.migrations import Migration
from code_hero.persistence.records import (
    EventRecord,
    RunRecord,
    RunStatus,
    StepRecord,
    ThreadRecord,
    ThreadStatus,
)
from code_hero.persistence.unreachable import UnstorableJSON

__all__ = [
    "EVENT_COLUMNS",
    "OLDEST_UNFINISHED_RUN",
    "RUN_COLUMNS",
    "RUN_FIELDS",
    "THREAD_COLUMNS",
    "Dialect",
    "Row",
    "Session",
    "dumps",
    "finite",
    "thread_runs",
    "utc",
    "utc_now",
]

_new = object.__new__
_THREAD_STATUSES = {status.value: status for status in ThreadStatus}
_RUN_STATUSES = {status.value: status for status in RunStatus}

Row = dict[str, Any]

THREAD_COLUMNS = "thread_id, user_id, status, metadata, created_at, updated_at"
RUN_FIELDS = tuple(f.name for f in dataclass_fields(RunRecord))
RUN_COLUMNS = ", ".join(RUN_FIELDS)
EVENT_COLUMNS = "run_id, seq, thread_id, type, payload, at"
RUN_JSON = frozenset({"input", "output", "metadata", "config"})
RUN_NULLABLE_JSON = frozenset({"input", "output"})
RUN_TIMES = frozenset({"created_at", "started_at", "finished_at", "lease_expires_at"})


def thread_runs(columns: str) -> str:
    """A WITH clause naming `thread_runs`: these columns of one thread's runs (its id the
    clause's one parameter), for a condition on their status."""
    # Materialised, so the status condition filters the thread's runs (read on
    # code_hero_runs_thread_idx), not `status IN (...)` beside `thread_id = ?`: that
    # matches code_hero_runs_unfinished_idx, which on PostgreSQL the planner, once the
    # table is analysed, takes for nearly empty (its statistics count live unfinished
    # runs). It also holds an entry for every version of a run that was PENDING or
    # RUNNING, until a vacuum; while another transaction holds those versions visible (a
    # backup, a long report) no scan can mark them dead, and every look at one thread
    # visited all of them: 40,000 buffers and 6 ms at 20,000 runs, against 5 and 0.03 ms
    # (issue 15, as `purge_idle_thread`'s busy check did).
    return (
        "WITH thread_runs AS MATERIALIZED "
        f"(SELECT {columns} FROM code_hero_runs WHERE thread_id = ?) "
    )


# The thread's oldest unfinished run (one parameter: the thread's id): what a new run
# would wait for, and what keeps an edit off the thread.
OLDEST_UNFINISHED_RUN = (
    f"{thread_runs('run_id, status, created_at')}SELECT run_id FROM thread_runs "
    "WHERE status IN ('PENDING', 'RUNNING') ORDER BY created_at, run_id LIMIT 1"
)


# One encoder for every call: json.dumps with separators builds a new one each time.
# Strict: json writes NaN and Infinity as such, text SQLite's JSON functions refuse
# ("malformed JSON": every metadata filter over the row failed) and jsonb too.
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def dumps(value: Any) -> str:
    """Compact JSON text, as json.dumps writes it (non-ASCII as `\\u` escapes): SQLite
    compares an array in a metadata filter as stored text, so every row and every
    filter value keep one spelling (orjson's UTF-8 missed rows stored before it).
    NaN and infinities are written null, as the PostgreSQL registry writes them."""
    try:
        return _ENCODER.encode(value)
    except ValueError:  # a NaN or an infinity (what else fails, fails again below)
        pass
    try:
        return _ENCODER.encode(finite(value))
    except ValueError as exc:  # an int past Python's digit limit: refused, every time
        raise UnstorableJSON(f"not storable as JSON: {exc}") from exc


def finite(value: Any) -> Any:
    """`value` (JSON) with each NaN and infinity in it replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def utc_now() -> datetime:
    """The current time, aware UTC."""
    return clock.now()


def utc(value: datetime) -> datetime:
    """An aware datetime in UTC; a naive one is the caller's mistake (BadInputError)."""
    if value.tzinfo is None:
        raise BadInputError(f"naive datetime {value!r}: pass a timezone-aware (UTC) one")
    return value.astimezone(UTC)


class Session(Protocol):
    """One connection (and, when asked for, one transaction) of a registry call.

    `last`: no statement of the session follows this one, so a database whose
    every statement is a round trip (SQLite, through aiosqlite's thread) commits
    in the same trip; the session's end commits as usual on the others."""

    async def fetch(
        self, sql: str, params: Sequence[Any] = (), *, last: bool = False
    ) -> list[Row]: ...

    async def execute(self, sql: str, params: Sequence[Any] = (), *, last: bool = False) -> int: ...

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...

    async def fetch_pair(
        self,
        first: tuple[str, Sequence[Any]],
        second: tuple[str, Sequence[Any]],
        *,
        last: bool = False,
    ) -> tuple[list[Row], list[Row]]:
        """Both statements' rows; the second runs after the first whatever it answered,
        so PostgreSQL sends them in one round trip."""
        ...

    async def fetch_each(
        self, statements: Sequence[tuple[str, Sequence[Any]]], *, last: bool = False
    ) -> list[list[Row]]:
        """Each statement's rows, run in order whatever the earlier ones answered; one
        trip to aiosqlite's thread on SQLite."""
        ...


# A copy's mark (`migrations._COPY_MARK`) once another executor claimed the run
# (`Dialect._claim_mark`): never as a copy left it again, whatever happens to it next.
TAKEN_OVER = "TAKEN_OVER"


class Dialect(ABC):
    """The seam every registry query is written against; a subclass per database."""

    migrations: ClassVar[Sequence[Migration]]
    migration_lock: ClassVar[str | None] = None
    skip_locked: ClassVar[str] = ""  # PostgreSQL: claimers skip rows another one locked
    # PostgreSQL: row locks. Every transaction that locks a thread and its runs locks the
    # thread first, then the runs in run_id order (SQLite: one writer at a time anyway).
    for_update: ClassVar[str] = ""
    # PostgreSQL: a transaction lock per (class, user), taken before a capped insert.
    webhook_cap_lock: ClassVar[str | None] = None
    # PostgreSQL: data-modifying statements in WITH, so rows of two tables go in one.
    writable_ctes: ClassVar[bool] = False
    # The later of two values: SQLite's two-argument max(), PostgreSQL's greatest().
    greatest: ClassVar[str] = "max"
    # Equality that holds for two NULLs: SQLite's IS, PostgreSQL's IS NOT DISTINCT FROM.
    same: ClassVar[str] = "IS"

    # --- what a dialect supplies --------------------------------------------

    @abstractmethod
    def _session(self, *, atomic: bool = False) -> AbstractAsyncContextManager[Session]:
        """A session; `atomic` wraps it in one transaction (writes commit at the end)."""

    @abstractmethod
    def _json(self, value: Any) -> Any:
        """A JSON-compatible value as a query parameter."""

    @abstractmethod
    def _from_json(self, value: Any) -> Any:
        """A JSON column's value as read back."""

    @abstractmethod
    def _ts(self, value: datetime) -> Any:
        """An aware datetime as a query parameter."""

    @abstractmethod
    def _from_ts(self, value: Any) -> datetime:
        """A time column's value as an aware UTC datetime."""

    @abstractmethod
    def _contains(self, column: str, subset: Mapping[str, Any]) -> tuple[str, list[Any]]:
        """A condition: the JSON object in `column` contains `subset`."""

    def _in(self, column: str, values: Sequence[str]) -> tuple[str, list[Any]]:
        """A condition: `column` is one of `values` (any number, one parameter). One value
        is an equality: no array for the driver to dump (~6 % of a thread record's read
        on PostgreSQL; py-spy, bench/page_ab.py)."""
        if len(values) == 1:
            return f"{column} = ?", [values[0]]
        return self._in_many(column, values)

    @abstractmethod
    def _in_many(self, column: str, values: Sequence[str]) -> tuple[str, list[Any]]:
        """`_in` of any number of values, as one parameter (an array, a JSON list)."""

    @abstractmethod
    def _has_keys(self, column: str, keys: Sequence[str]) -> tuple[str, list[Any]]:
        """A condition: the JSON object in `column` has every one of these top-level keys."""

    @abstractmethod
    def _is_duplicate(self, exc: BaseException) -> bool:
        """True when `exc` is a primary-key or unique violation."""

    @abstractmethod
    def _is_orphan(self, exc: BaseException) -> bool:
        """True when `exc` is a foreign-key violation (the row's thread or run is gone)."""

    def _subscribed(self, column: str, event: str) -> tuple[str, list[Any]]:
        """A condition: the comma-framed event list in `column` names `event`."""
        return f"{column} LIKE ?", [f"%,{event},%"]

    # --- built on the seam, for both ----------------------------------------

    @asynccontextmanager
    async def _unique(self, what: str) -> AsyncIterator[None]:
        try:
            yield
        except Exception as exc:
            if self._is_duplicate(exc):
                raise ConflictError(f"{what} already exists") from exc
            raise

    @asynccontextmanager
    async def _parent(self, what: str) -> AsyncIterator[None]:
        try:
            yield
        except Exception as exc:
            if self._is_orphan(exc):
                raise NotFoundError(f"{what} is gone: it was deleted") from exc
            raise

    def _from_ts_or_none(self, value: Any) -> datetime | None:
        return None if value is None else self._from_ts(value)

    def _thread(self, row: Row) -> ThreadRecord:
        # Every field filled in, as ThreadRecord(...) would (it has no __post_init__):
        # its frozen __init__ sets each of the ten through object.__setattr__, about
        # ten times the cost of filling the instance's dict, and a page of threads
        # builds one a row (issue 15).
        status = row["status"]
        record: ThreadRecord = _new(ThreadRecord)
        record.__dict__.update(
            thread_id=row["thread_id"],
            user_id=row["user_id"],
            status=_THREAD_STATUSES.get(status) or ThreadStatus(status),
            metadata=self._from_json(row["metadata"]),
            created_at=self._from_ts(row["created_at"]),
            updated_at=self._from_ts(row["updated_at"]),
            ttl_seconds=row.get("ttl_seconds"),
            expires_at=self._from_ts_or_none(row.get("expires_at")),
            deletion_token=row.get("deletion_token"),
            edit_until=self._from_ts_or_none(row.get("edit_until")),
        )
        return record

    def _run(self, row: Row) -> RunRecord:
        # Every field filled in, as RunRecord(...) would (as `_thread` does): its frozen
        # __init__ sets each of the twenty through object.__setattr__, and a run's
        # admission, claim, start and end each read its row back (issue 15).
        status = row["status"]
        record: RunRecord = _new(RunRecord)
        record.__dict__.update(
            run_id=row["run_id"],
            thread_id=row["thread_id"],
            graph=row["graph"],
            status=_RUN_STATUSES.get(status) or RunStatus(status),
            input=self._from_json(row["input"]),
            output=self._from_json(row["output"]),
            error=row["error"],
            metadata=self._from_json(row["metadata"]),
            config=self._from_json(row["config"]),
            user_id=row["user_id"],
            multitask=row["multitask"],
            created_at=self._from_ts(row["created_at"]),
            started_at=self._from_ts_or_none(row["started_at"]),
            finished_at=self._from_ts_or_none(row["finished_at"]),
            lease_owner=row["lease_owner"],
            lease_expires_at=self._from_ts_or_none(row["lease_expires_at"]),
            cancel_requested=bool(row["cancel_requested"]),
            input_tokens=int(row["input_tokens"]),
            output_tokens=int(row["output_tokens"]),
            steps=tuple(_step_of(x) for x in self._from_json(row["steps"]) or ()),
            seq_reserved=int(row["seq_reserved"]),
        )
        return record

    def _event(self, row: Row) -> EventRecord:
        return EventRecord(
            run_id=row["run_id"],
            thread_id=row["thread_id"],
            seq=row["seq"],
            type=row["type"],
            payload=self._from_json(row["payload"]),
            at=self._from_ts(row["at"]),
        )

    def _event_params(self, event: EventRecord) -> tuple[Any, ...]:
        """An event as the parameters of its row, in EVENT_COLUMNS order."""
        return (
            event.run_id,
            event.seq,
            event.thread_id,
            event.type,
            self._json(event.payload),
            self._ts(utc(event.at)),
        )

    def _run_param(self, name: str, value: Any) -> Any:
        """A RunRecord field's value as the parameter of its column."""
        if name in RUN_JSON:
            if value is None:
                return None if name in RUN_NULLABLE_JSON else self._json({})
            return self._json(value)
        if name in RUN_TIMES:
            return None if value is None else self._ts(utc(value))
        if name == "status":
            return RunStatus(value).value
        if name == "steps":
            return self._json([_step_json(x) for x in value or ()])
        return value

    def _run_update(
        self, caller: str, fields: Mapping[str, Any], *, also: str = ""
    ) -> tuple[str, list[Any]]:
        """The UPDATE of one run's `fields` (the run's id its last parameter) and the
        fields' parameters; TypeError naming `caller` for a field RunRecord cannot update.
        `also`: more of the SET, of columns no RunRecord field names (its parameters the
        caller's, after the fields')."""
        unknown = sorted(set(fields) - set(RUN_FIELDS[1:]))
        if unknown:
            raise TypeError(f"{caller}() got fields RunRecord cannot update: {unknown}")
        sets = ", ".join([*(f"{name} = ?" for name in fields), *([also] if also else [])])
        params = [self._run_param(name, value) for name, value in fields.items()]
        return f"UPDATE code_hero_runs SET {sets} WHERE run_id = ?", params

    def _as_copied(self, table: str = "code_hero_runs") -> str:
        """Whether a run's row is still as an outage's copy-back left it (its mark,
        `migrations._COPY_MARK`): the lease owner the copy wrote (renewals keep it; a
        claim, a release and an end change it), and its status, or an unfinished one
        for an unfinished one (its executor starts it). False for a row no copy marked."""
        return (
            f"({table}.copied_status IS NOT NULL "
            f"AND {table}.lease_owner {self.same} {table}.copied_lease_owner "
            f"AND ({table}.status = {table}.copied_status "
            f"OR ({table}.status IN ('PENDING', 'RUNNING') "
            f"AND {table}.copied_status IN ('PENDING', 'RUNNING'))))"
        )

    def _taken_by_another(self, table: str = "code_hero_runs") -> str:
        """Whether a run's row a copy marked was taken over by an executor other than
        the one the copy wrote: claimed by it since (`_claim_mark`), or unfinished under
        its lease."""
        return (
            f"({table}.copied_status = '{TAKEN_OVER}' OR ({table}.copied_status IS NOT NULL "
            f"AND {table}.lease_owner IS NOT NULL "
            f"AND {table}.status IN ('PENDING', 'RUNNING') "
            f"AND NOT ({table}.lease_owner {self.same} {table}.copied_lease_owner)))"
        )

    def _claim_mark(self) -> str:
        """A claim's SET of the copy's mark, its one parameter the claiming executor: a
        run a copy marked, claimed by an executor other than the one the copy wrote, is
        marked taken over for good (`TAKEN_OVER`), as its lease alone cannot say once
        that executor releases it (a run copied released: the lease the copy wrote,
        none, again). A claim by the executor the copy wrote (its lease lapsed) keeps
        the mark: the run is still the one the copy left."""
        return (
            "copied_status = CASE WHEN copied_status IS NULL "
            f"OR copied_lease_owner {self.same} ? THEN copied_status "
            f"ELSE '{TAKEN_OVER}' END"
        )

    def _run_params(self, run: RunRecord) -> list[Any]:
        return [self._run_param(name, getattr(run, name)) for name in RUN_FIELDS]

    def _thread_params(self, thread: ThreadRecord) -> list[Any]:
        """A thread's row: THREAD_COLUMNS, then ttl_seconds and deletion_token."""
        return [
            thread.thread_id,
            thread.user_id,
            ThreadStatus(thread.status).value,
            self._json(dict(thread.metadata)),
            self._ts(utc(thread.created_at)),
            self._ts(utc(thread.updated_at)),
            thread.ttl_seconds,
            thread.deletion_token,
        ]


def _step_json(step: StepRecord) -> dict[str, Any]:
    """A step as the JSON object its run's `steps` column holds (times as ISO text)."""
    return {
        "node": step.node,
        "namespace": step.namespace,
        "started_at": utc(step.started_at).isoformat(),
        "finished_at": None if step.finished_at is None else utc(step.finished_at).isoformat(),
        "error": step.error,
    }


def _step_of(data: Mapping[str, Any]) -> StepRecord:
    finished = data.get("finished_at")
    return StepRecord(
        node=str(data["node"]),
        namespace=str(data.get("namespace", "")),
        started_at=datetime.fromisoformat(data["started_at"]),
        finished_at=None if finished is None else datetime.fromisoformat(finished),
        error=data.get("error"),
    )
