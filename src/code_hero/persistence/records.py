"""Records of the registry kept beside the checkpoints: threads, runs, run events.

These are plain frozen dataclasses: the registry returns them, the run
executor and the GraphQL layer read them. Timestamps are timezone-aware UTC.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field, fields, replace
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Generic, Literal, NewType, Protocol, TypeVar

if TYPE_CHECKING:  # the stats records import RunStatus from here
    from code_hero.persistence.stats import RunStats, TimeBucket

__all__ = [
    "SEQ_RESERVE",
    "THREAD_STATUS_AFTER",
    "DeletionMark",
    "EventRecord",
    "MultitaskStrategy",
    "Page",
    "Registry",
    "RunFilter",
    "RunId",
    "RunOrder",
    "RunRecord",
    "RunStatus",
    "SortDirection",
    "StepRecord",
    "ThreadFilter",
    "ThreadId",
    "ThreadOrder",
    "ThreadPurge",
    "ThreadRecord",
    "ThreadSortField",
    "ThreadStatus",
    "changed_run",
]

ThreadId = NewType("ThreadId", str)
RunId = NewType("RunId", str)
T = TypeVar("T")


class ThreadStatus(StrEnum):
    IDLE = "IDLE"
    BUSY = "BUSY"
    INTERRUPTED = "INTERRUPTED"
    ERROR = "ERROR"


class RunStatus(StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCESS = "SUCCESS"
    ERROR = "ERROR"
    INTERRUPTED = "INTERRUPTED"
    CANCELLED = "CANCELLED"

    @property
    def finished(self) -> bool:
        """True for the statuses that end a run."""
        return self not in (RunStatus.PENDING, RunStatus.RUNNING)


class MultitaskStrategy(StrEnum):
    """What a new run does when its thread already has one in flight (`RunRecord.multitask`)."""

    REJECT = "REJECT"
    ENQUEUE = "ENQUEUE"
    INTERRUPT = "INTERRUPT"


# What a thread's status becomes when its last unfinished run ends this way.
THREAD_STATUS_AFTER = {
    RunStatus.SUCCESS: ThreadStatus.IDLE,
    RunStatus.CANCELLED: ThreadStatus.IDLE,
    RunStatus.ERROR: ThreadStatus.ERROR,
    RunStatus.INTERRUPTED: ThreadStatus.INTERRUPTED,
}


@dataclass(frozen=True)
class ThreadRecord:
    thread_id: str
    user_id: str | None
    status: ThreadStatus
    metadata: Mapping[str, Any]
    created_at: datetime
    updated_at: datetime
    # Retention: the thread is deleted `ttl_seconds` after its last update, at
    # `expires_at` (the database derives it from updated_at); None: never.
    ttl_seconds: int | None = None
    expires_at: datetime | None = None
    # The token of the deletion that marked the row (`Registry.start_deletion`, ttl 0):
    # its last step takes the row only while it carries that token. None on a live row.
    deletion_token: str | None = None
    # Until when an edit's claim holds the thread (`Registry.claim_edit`); None or past:
    # no edit holds it.
    edit_until: datetime | None = None


@dataclass(frozen=True)
class DeletionMark:
    """A deletion's start (`Registry.start_deletion`): the token its last step takes the
    thread's row by, and whether there was a row to mark (marked now, by this deletion
    or by one it joined). A thread with no row (only the savers hold it, or nothing)
    gets a token no row carries: its last step takes only what has no row."""

    token: str
    marked: bool


@dataclass(frozen=True)
class ThreadPurge:
    """What a one-step deletion of a thread did (`Backend.purge_idle_thread`).

    A busy thread (unfinished runs), one an edit holds, an expired one or another
    user's is left as it was: its runs are stopped first, the edit ends first, or it is
    not the caller's to delete.
    """

    busy: bool
    expired: bool
    existed: bool  # its registry row was deleted
    checkpoints: int
    runs: int
    foreign: bool = False  # not the named owner's (or no row): left as it was
    edited: bool = False  # an edit's claim holds it (`Registry.claim_edit`): left as it was


@dataclass(frozen=True)
class StepRecord:
    """One node execution of a run (a bar of its timeline); namespace "" is the root graph.

    `finished_at` is None while the node runs, and stays None when the executor running
    it was lost (the run resumed elsewhere runs the node again, as a new step)."""

    node: str
    namespace: str
    started_at: datetime
    finished_at: datetime | None = None
    error: str | None = None


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    thread_id: str
    graph: str
    status: RunStatus
    input: Any = None
    output: Any = None
    error: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    config: Mapping[str, Any] = field(default_factory=dict)
    user_id: str | None = None
    multitask: str = "REJECT"
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    lease_owner: str | None = None
    lease_expires_at: datetime | None = None
    cancel_requested: bool = False
    # Recorded as the run goes (runs.timeline): tokens its chat models reported, and
    # every node execution in start order.
    input_tokens: int = 0
    output_tokens: int = 0
    steps: Sequence[StepRecord] = ()
    # The highest seq its executor may publish to live subscribers before storing it
    # (`SEQ_RESERVE` ahead of the events stored): one that takes the run over after
    # that executor died numbers on after it, not after the last event stored.
    seq_reserved: int = 0


# How far past its last stored event a run's executor may publish events before they
# are stored (live subscribers see them at once; the log stores them in batches). A
# process killed outright loses at most these: the run resumed elsewhere numbers on
# past them, so no seq a subscriber saw names another event, and the log fills them
# with events saying they were lost (`seq` has no gaps).
SEQ_RESERVE = 32


_RUN_FIELDS = frozenset(f.name for f in fields(RunRecord))


def changed_run(record: RunRecord, changes: Mapping[str, Any]) -> RunRecord:
    """`dataclasses.replace(record, **changes)`, filled in as RunRecord's __init__ fills
    it (it has no __post_init__): its frozen __init__ sets each of the twenty fields
    through object.__setattr__, and an event batch changes the copy a registry keeps
    of every run in it (issue 15). A name RunRecord lacks raises replace's TypeError."""
    if not changes.keys() <= _RUN_FIELDS:
        return replace(record, **changes)
    changed: RunRecord = object.__new__(RunRecord)
    changed.__dict__.update(record.__dict__)
    changed.__dict__.update(changes)
    return changed


@dataclass(frozen=True)
class EventRecord:
    run_id: str
    thread_id: str
    seq: int
    type: str
    payload: Mapping[str, Any]
    at: datetime


@dataclass(frozen=True)
class ThreadFilter:
    """Which threads match: every given field (AND); `any_of` is an OR, `not_` a negation.

    An empty `ids`, `statuses` or `any_of` matches nothing (one of none); an empty
    `metadata_has_keys` matches everything (every one of none).
    """

    user_id: str | None = None
    status: ThreadStatus | None = None
    metadata: Mapping[str, Any] | None = None  # containment: thread metadata contains this
    updated_after: datetime | None = None
    updated_before: datetime | None = None
    ids: Sequence[str] | None = None
    statuses: Sequence[ThreadStatus] | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    metadata_has_keys: Sequence[str] | None = None  # top-level keys, every one present
    any_of: Sequence[ThreadFilter] | None = None
    not_: ThreadFilter | None = None


@dataclass(frozen=True)
class RunFilter:
    thread_id: str | None = None
    status: RunStatus | None = None
    graph: str | None = None
    user_id: str | None = None  # the user who started the run
    owner: str | None = None  # the user who owns the run's thread
    statuses: Sequence[RunStatus] | None = None  # one of these (none: matches nothing)
    metadata: Mapping[str, Any] | None = None  # containment: run metadata contains this
    created_after: datetime | None = None
    created_before: datetime | None = None


class SortDirection(StrEnum):
    """Which way a listing runs: oldest first (ASC) or newest first (DESC)."""

    ASC = "ASC"
    DESC = "DESC"


class ThreadSortField(StrEnum):
    """The time a listing of threads is ordered by (ties broken by thread id)."""

    UPDATED_AT = "UPDATED_AT"
    CREATED_AT = "CREATED_AT"


@dataclass(frozen=True)
class ThreadOrder:
    """The order of a listing of threads; a cursor is valid only for the order it came from."""

    field: ThreadSortField = ThreadSortField.UPDATED_AT
    direction: SortDirection = SortDirection.DESC


@dataclass(frozen=True)
class RunOrder:
    """The order of a listing of runs: by creation time (ties broken by run id)."""

    direction: SortDirection = SortDirection.DESC


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a keyset-paged listing; `end_cursor` is opaque to callers."""

    items: Sequence[T]
    end_cursor: str | None
    has_next_page: bool


class Registry(Protocol):
    """Threads, runs and run events, stored in the same database as the checkpoints.

    The one definition of the registry's interface and its documentation. Two
    families implement it: `SqlRegistry` (`persistence/registry/`, on SQLite and
    PostgreSQL) and `FallbackRegistry` (`persistence/fallback_registry.py`, which
    routes each call to the primary's or, through an outage, the fallback's).
    """

    async def setup(self) -> None:
        """Run the registry's forward-only migrations (idempotent)."""

    # threads
    async def touch_threads(
        self,
        touches: Mapping[str, str | None],
        *,
        create: bool = True,
        unless_deleted_since: datetime | None = None,
    ) -> None:
        """Bump updated_at of each thread id, creating missing ones with that user id
        (unless not `create`: a run's checkpoint never brings a deleted thread back).
        With `unless_deleted_since` (an outage's touch replayed), an id with a tombstone
        of a deletion since then is left alone: neither made anew nor bumped."""

    async def put_thread(self, thread: ThreadRecord, *, late: bool = False) -> bool:
        """Insert or replace a thread as given, timestamps included (for migration and the
        outage journal's copies), but a deletion's mark the row has (another deletion's: it
        ends only a row it marked) and an edit's claim it has, which a copy extends but
        never clears (another replica's edit may hold it). With `late` (an outage's copy,
        made after the primary served again), a row it has keeps its fields (they may be
        newer) and takes only the copy's deletion mark, if no deletion marked it and it was
        created when the copy's was (else it is a thread made anew under the id): that
        deletion's last step ends only a row it marked; a row it adds has no claim (the
        edit's release went to the primary). False, and nothing written, when a finished
        deletion left a tombstone of the id created at or after the copy's created_at
        (this thread, or a row made for it since): the deletion wins."""

    async def copy_thread(
        self, thread: ThreadRecord, runs: Sequence[RunRecord], events: Sequence[EventRecord]
    ) -> bool:
        """An outage's copy of a thread born in it, in one transaction: its row as
        `put_thread` takes it, then its `runs` (oldest first) and their `events` as
        `put_run(announce=True)` and `put_events` take them: a run the registry has
        finished keeps its end and is not announced again (one copied in flight too), a
        cancel requested there is kept, and an event stored already is skipped. Each
        run copied is marked with the status and lease written; a run whose row is no
        longer as a copy left it (another executor took it over, or ended it) is left
        whole, its events too (`put_run(copied=True)`). False, and nothing written,
        when a tombstone refuses the row."""

    async def get_thread(self, thread_id: str, *, expired: bool = False) -> ThreadRecord | None:
        """One thread, or None; with `expired`, an expired one too (a copy of the thread
        carries the mark of a deletion under way: `start_deletion`)."""

    async def get_threads(self, thread_ids: Sequence[str]) -> dict[str, ThreadRecord]:
        """Several threads in one query (for DataLoaders)."""

    async def list_threads(
        self,
        flt: ThreadFilter,
        *,
        first: int,
        after: str | None = None,
        order: ThreadOrder | None = None,
    ) -> Page[ThreadRecord]:
        """In `order` (default: newest updated first), keyset-paged; a page's cost does
        not grow with the table. A cursor of another order is BadInputError."""

    async def count_threads(self, flt: ThreadFilter) -> int:
        """How many threads match the filter, counted in the database."""

    async def delete_thread(self, thread_id: str, *, marked: str | None = None) -> tuple[bool, int]:
        """Delete the thread row, its runs and their events: (existed, runs deleted). With
        `marked` (the token `start_deletion` returned), the last step of a deletion in
        steps: nothing unless the row still carries that deletion's mark, checked in the
        same transaction; a thread made anew under the id meanwhile is left alone, and so
        is the mark another deletion put on it since (that deletion stops its runs)."""

    async def thread_ids(self, *, updated_before: datetime | None = None) -> list[str]:
        """Every thread id (optionally only those not updated since a time)."""

    # tombstones: deletions that finished (`registry/tombstones.py`)
    async def deleted_threads(
        self, thread_ids: Sequence[str]
    ) -> dict[str, list[tuple[datetime, datetime]]]:
        """The tombstones of these ids: id -> [(created_at, deleted_at)], oldest deletion
        first; an id never deleted (or whose tombstones were forgotten) is absent."""

    async def forget_deleted_threads(self, before: datetime, *, limit: int) -> int:
        """Delete up to `limit` tombstones of deletions before `before`, oldest first;
        returns how many."""

    # thread editing and retention (an expired thread is absent from every read above)
    async def create_thread(self, thread: ThreadRecord) -> ThreadRecord | None:
        """Insert a new thread (its ttl_seconds too); None when the id is taken."""

    async def update_thread(
        self,
        thread_id: str,
        *,
        metadata: Mapping[str, Any] | None = None,
        ttl_seconds: int | None = None,
        set_ttl: bool = False,
    ) -> ThreadRecord | None:
        """Merge `metadata` (a None value removes its key), set the ttl when `set_ttl`,
        bump updated_at: one transaction. None when there is no such live thread."""

    async def default_ttl(self, thread_id: str, ttl_seconds: int) -> None:
        """Give the thread this ttl unless it has one."""

    async def expired_thread_ids(
        self, now: datetime, *, limit: int, among: Sequence[str] | None = None
    ) -> list[str]:
        """Threads whose expires_at has passed, soonest expired first (only `among`)."""

    async def matching_thread_ids(
        self, flt: ThreadFilter, *, limit: int, updated_before: datetime | None = None
    ) -> list[str]:
        """Up to `limit` live threads matching the filter (and not updated since a time),
        oldest updated first."""

    def sweeping(self) -> AbstractAsyncContextManager[bool]:
        """Hold the right to sweep expired threads (True), or learn that another replica
        holds it now (False)."""

    # runs
    async def update_run(self, run_id: str, **fields: Any) -> RunRecord | None:
        """Set the given RunRecord fields; returns the new record (None if missing)."""

    async def start_run(self, run_id: str, started_at: datetime) -> tuple[RunRecord | None, int]:
        """Mark a claimed run RUNNING since `started_at`; returns the new record (None if
        missing) and the highest seq stored for the run (`last_seq`), in one statement.
        Its `seq_reserved` becomes SEQ_RESERVE past the later of the last seq stored and
        the one an earlier executor of the run may have published up to (the record's
        value less SEQ_RESERVE: its new writer numbers on after that)."""

    async def update_held_run(
        self, run_id: str, owner: str | None, **fields: Any
    ) -> RunRecord | None:
        """Set the fields of a run still unfinished and leased by `owner` (with `owner`
        None, by anyone or no one); returns the new record (None if not changed)."""

    async def get_run(self, run_id: str) -> RunRecord | None:
        """One run, or None."""

    async def get_runs(self, run_ids: Sequence[str]) -> dict[str, RunRecord]:
        """Several runs in one query (for DataLoaders)."""

    async def list_runs(
        self,
        flt: RunFilter,
        *,
        first: int,
        after: str | None = None,
        order: RunOrder | None = None,
        expired: bool = False,
    ) -> Page[RunRecord]:
        """In `order` (default: newest created first), keyset-paged. A cursor of another
        order is BadInputError. With `expired`, the runs of expired threads too."""

    async def count_runs(self, flt: RunFilter) -> int:
        """How many runs match the filter (owner included), counted in the database."""

    async def delete_run(self, run_id: str) -> bool:
        """Delete the run and its events."""

    async def run_stats(self, flt: RunFilter, bucket: TimeBucket | None = None) -> RunStats:
        """Counts, durations and token usage of the matching runs (owner included) and,
        with `bucket`, their series over the filter's created range: computed in SQL."""

    async def put_run(
        self,
        run: RunRecord,
        *,
        announce: bool = False,
        copied: bool = False,
        events: Sequence[EventRecord] = (),
    ) -> None:
        """Insert or replace a run as given (for migration). With `announce`, a finished
        run the registry did not have finished queues its webhook deliveries with it.
        With `copied`, an outage's copy as `copy_thread` makes it: marked with the status
        and lease written, and onto a row the registry has only while it is unfinished
        and as a copy left it (or no copy marked it). `events` (the run's) go in the same
        transaction, those stored already skipped; with `copied`, as
        `put_events(as_copy="late")` takes them."""

    # claiming (runs are taken from the table by whichever replica has a free slot)
    async def admit_run(
        self,
        run: RunRecord,
        *,
        reject_if_busy: bool,
        events: Sequence[EventRecord] = (),
        owner: str | None = None,
        new_thread: bool = False,
    ) -> tuple[RunRecord | None, str | None]:
        """Record a PENDING run and mark its thread BUSY, in one transaction.

        `new_thread` says the caller made the thread id up just now: no database
        holds it (during an outage such a run may start on the fallback).

        A new thread is owned by `run.user_id`; an existing owner never changes.
        Returns (the run, None), or (None, the busy run's id) when the thread
        has an unfinished run and `reject_if_busy` (then nothing is written).
        While an edit's claim holds the thread (`claim_edit`), every run on it is
        refused with ConflictError (retry_after), nothing written.
        With `owner`, a thread someone else owns raises NotFoundError (nothing
        written): the check and the write are one transaction.
        A run given with a lease (`lease_owner`, `lease_expires_at`: admitted claimed
        by its executor) keeps it only when it is the thread's one unfinished run;
        on a busy thread it is recorded unleased, for a claim once its turn comes.
        """

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
        """End a run and, unless its thread has other unfinished runs, set the thread's
        status: one transaction. Returns (the run, whether other runs are waiting).
        With `if_unfinished`, a run that has ended already is left as it is, and with
        `if_leased_by`, one that executor does not lease: (None, False). With
        `if_as_copied` (an outage's copy of the end), one whose row is no longer as a
        copy left it (`copy_thread`), or, unmarked, that `if_leased_by` does not lease;
        the end clears the lease and marks the row as this copy leaves it.
        `events` (the run's last, its end event among them) are stored in the same
        transaction, or not at all when the end is refused: a stale executor's end
        never reaches the log of a run another executor holds now. A (run, seq) stored
        already is skipped (an end replayed)."""

    async def unfinished_runs(self, thread_id: str) -> list[RunRecord]:
        """The thread's PENDING and RUNNING runs, oldest first."""

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
        """Lease up to `limit` claimable runs, oldest first: unfinished, unleased (or
        lapsed), not cancelled, the oldest unfinished run of their thread, and no other
        run of their thread held under a live lease (a later one admitted leased first)
        (only of the given graphs, only the given runs, when those are given)."""

    async def has_claimable(
        self,
        *,
        now: datetime,
        until: datetime,
        graphs: Sequence[str] | None = None,
        run_ids: Sequence[str] | None = None,
    ) -> bool:
        """Whether `claim_runs` would find a run to claim at `now` (read only; `until`,
        the lease a claim would give, is what a fallback judges an outage's leases by)."""

    async def renew_leases(
        self, owner: str, run_ids: Sequence[str], until: datetime
    ) -> list[RunRecord]:
        """Extend the leases `owner` still holds; returns those runs (with their cancel flag)."""

    async def release_runs(self, owner: str, run_ids: Sequence[str]) -> None:
        """Give up leases so another executor may claim the runs at once."""

    async def request_cancel(self, run_id: str) -> RunRecord | None:
        """Flag the run for cancellation; returns it."""

    async def claim_cancelled(
        self, owner: str, *, now: datetime, until: datetime
    ) -> list[RunRecord]:
        """Lease the unfinished runs flagged for cancellation that no live executor holds."""

    # human edits (`code_hero.runs.edits`)
    async def claim_edit(self, thread_id: str, until: datetime, *, seen: bool) -> str | None:
        """Claim the thread for an edit until `until`, in one transaction that locks its row
        (made when only the savers held the thread: `seen` False): None when claimed; the
        id of its unfinished run when it has one (nothing claimed). While the claim holds,
        `admit_run` refuses every run on the thread with ConflictError (retry_after) and
        `start_deletion` refuses to start; another edit's unexpired claim is that
        ConflictError here. A row the edit saw (`seen`) that is gone or expired since (a
        deletion started) is NotFoundError, nothing made."""

    async def start_deletion(self, thread_id: str) -> DeletionMark | None:
        """Expire the thread's row (ttl 0, the deletion's mark) before its runs are stopped
        and its checkpoints deleted, so no run is admitted (`admit_run`) and no edit claims
        it meanwhile; the mark (its token, for the deletion's last step: `delete_thread`),
        or None (nothing changed) while an edit's claim holds it. A row marked already keeps
        its token: this deletion joins that one (the runs a mark covers are those admitted
        before it, which either stops). One transaction that locks the row."""

    async def release_edit(self, thread_id: str, until: datetime) -> None:
        """End the claim `claim_edit(thread_id, until)` took, if it still holds it."""

    async def settle_edit(self, thread_id: str, status: ThreadStatus) -> str | None:
        """Record an edit of the thread's state: updated_at, and `status` unless a run is
        in flight (returns its id then; its end sets the status). One transaction."""

    async def latest_runs(
        self, thread_ids: Sequence[str], status: RunStatus | None
    ) -> dict[str, RunRecord]:
        """The newest run with `status` (None: any) of each thread that has one, in one
        query."""

    # events
    async def store_events(self, events: Sequence[EventRecord]) -> None:
        """Store events of any runs in one transaction (each carries its run and thread);
        a (run, seq) already stored conflicts, events of runs deleted meanwhile are dropped."""

    async def store_batch(
        self,
        events: Sequence[EventRecord],
        runs: Mapping[str, Mapping[str, Any]],
        *,
        held_by: Mapping[str, str] | None = None,
    ) -> set[str]:
        """`store_events(events)` and, in the same transaction, `update_run(run_id,
        **fields)` for each of `runs` (the event log's batch: a run's timeline and
        usage go with its events, no commit of their own); runs gone are skipped.
        `held_by` maps runs to the executor whose lease they are stored under: the
        events and fields of a run it does not hold (unfinished, under its lease) are
        left out, and its id returned."""

    async def put_events(
        self,
        events: Sequence[EventRecord],
        *,
        if_leased_by: str | None = None,
        as_copy: Literal["on_time", "late"] | None = None,
    ) -> None:
        """Store events, skipping any whose (run, seq) is stored already (for copies) and
        any of runs deleted meanwhile; with `if_leased_by`, any of runs that executor
        does not hold (unfinished, under its lease, lapsed or not) as they are stored.
        As an outage's copy (`copy_thread`'s mark), on time: any of runs no longer as a
        copy left them (taken over, released or ended by another executor: this replica's
        own write to the fallback until the switch back); late: any of runs another
        executor claimed or holds, and of a run ended there by other than a copy any
        past its last event (the end is the last, whoever wrote it; after the switch back
        a run ended or released there may be this replica's own doing, whose events from
        the fallback fill the gaps below its end). A row no copy marked takes them (an
        earlier version's)."""

    async def list_events(
        self,
        run_id: str,
        *,
        after_seq: int = 0,
        limit: int | None = None,
        types: Collection[str] | None = None,
    ) -> list[EventRecord]:
        """Events with seq > after_seq, in order (of the given types only, when given)."""

    async def last_seq(self, run_id: str) -> int:
        """The highest seq stored for the run (0 when none)."""

    async def thread_seqs(self, thread_id: str, *, since: datetime | None = None) -> dict[str, int]:
        """The highest seq stored for each run of the thread (0 for a run with none),
        oldest run first, in one query; empty when the thread has no runs or is gone.
        With `since`, of the runs not finished or created at or after it only."""
