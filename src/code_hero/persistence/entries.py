"""The entries of the outage journal: one write the primary does not have yet, each.

Each entry knows its thread and how to replay itself into the primary
(idempotent: a recovery may replay it twice). Checkpoint entries carry the
write itself; registry entries copy the state the fallback holds when they
replay (`CopyThread`, `CopyEvents`), so one pending entry per key is enough.

    PutCheckpoint   a checkpoint with every channel's value
    PutWrites       a task's pending writes
    CopyThread      the registry rows of a thread born during the outage (a run whose
                    checkpoint the primary refused goes in ERROR: `refused_end`)
    CopyEvents      events of a run in flight when the outage began, while the lease
                    they were stored under holds it
    ChangeRun       fields of such a run, while the lease it was changed under holds it
    FinishRun       the end of such a run, with its thread's status and last events, on
                    the same terms (ERROR if the primary refused its checkpoint)
                    (ReleaseRun and FinishRun of a run gone with its thread purge
                    what it wrote, unless the thread has a row again)
    DeleteRun       a run of a thread born during the outage, deleted
    ReleaseEdit     the end of an edit's claim on a thread born during the outage (a
                    copy never clears a claim: the primary's may be another replica's)
    TouchThread     activity on a thread that is not local
    DeleteThread    a thread deleted during the outage
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import ChannelVersions, Checkpoint, CheckpointMetadata

from code_hero.errors import NotFoundError
from code_hero.persistence import clock
from code_hero.persistence.records import (
    THREAD_STATUS_AFTER,
    EventRecord,
    RunFilter,
    RunRecord,
    RunStatus,
    ThreadRecord,
)

if TYPE_CHECKING:
    from code_hero.persistence.backends import Backend

__all__ = [
    "ChangeRun",
    "CopyEvents",
    "CopyThread",
    "DeleteRun",
    "DeleteThread",
    "Entry",
    "FinishRun",
    "PutCheckpoint",
    "PutWrites",
    "Refusal",
    "ReleaseEdit",
    "ReleaseRun",
    "TouchThread",
    "refused_end",
]


class Entry(Protocol):
    """One write the primary does not have yet."""

    @property
    def thread_id(self) -> str:
        """The thread the entry belongs to (deleting the thread drops the entry)."""

    @property
    def key(self) -> Hashable | None:
        """Entries with the same key copy the same current state: one pending is enough."""

    async def replay(self, primary: Backend, fallback: Backend) -> None:
        """Write the entry into the primary, reading current state from the fallback
        where it copies state (idempotent: it may run twice)."""


_COPY_PAGE = 500
_IN_OUTAGE = "while the database was unreachable"  # where a copied-back end was

log = logging.getLogger(__name__)


class Leases(dict[str, str]):
    """Run id -> the executor whose lease a copy put the run in the primary under,
    unfinished (`CopyThread`): shared by the copies and kept in the journal's file
    (`save`, before the run goes in). Whether a run is still this fallback's to end is
    decided by the primary's row (`Registry.copy_thread`: the mark a copy leaves on
    it); these leases only judge a row no copy marked, one an earlier version copied
    (its file's leases read at start): a late copy ends such a run only while this
    lease still holds it there, as that version did."""

    save: Callable[[], None] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.thread_of: dict[str, str] = {}  # run id -> its thread (`drop_thread`)

    def record(self, run_id: str, owner: str, thread_id: str | None = None) -> None:
        """Keep a lease; a failure to save it raises (the run must not go in then)."""
        if thread_id is not None:
            self.thread_of[run_id] = thread_id
        before = self.get(run_id)
        if before != owner:
            self[run_id] = owner
            try:
                self._saved()
            except BaseException:  # not kept: the next try saves it again
                if before is None:
                    del self[run_id]
                else:
                    self[run_id] = before
                raise

    def forget(self, run_id: str) -> None:
        self.thread_of.pop(run_id, None)
        if self.pop(run_id, None) is not None:
            self._saved_or_logged()

    def forget_thread(self, thread_id: str) -> None:
        """Forget the leases of a deleted thread's runs."""
        gone = [run_id for run_id, thread in self.thread_of.items() if thread == thread_id]
        for run_id in gone:
            del self.thread_of[run_id]
            self.pop(run_id, None)
        if gone:
            self._saved_or_logged()

    def forget_all(self) -> None:
        if self or self.thread_of:
            self.clear()
            self.thread_of.clear()
            self._saved_or_logged()

    def _saved(self) -> None:
        if self.save is not None:
            self.save()

    def _saved_or_logged(self) -> None:
        """A lease dropped but not saved only leaves a stale one in the file: a late copy
        then ends nothing the lease's executor no longer holds."""
        try:
            self._saved()
        except Exception as exc:
            log.debug("forgetting leases in the journal's file failed: %s", exc)


@dataclass
class Refusal:
    """Why the primary refused a run's checkpoints or writes as values it cannot store
    (quarantined, never to go in), and where: per namespace, the newest checkpoint
    refused (for writes, the checkpoint they were written on)."""

    why: str
    newest: dict[str, str] = field(default_factory=dict)  # namespace -> checkpoint id

    def note(self, namespace: str, checkpoint_id: str) -> None:
        """Another checkpoint (or writes on it) refused."""
        if checkpoint_id > self.newest.get(namespace, ""):
            self.newest[namespace] = checkpoint_id


async def refused_end(
    primary: Backend,
    run_id: str,
    thread_id: str,
    status: RunStatus | str,
    refused: Mapping[str, Refusal],
    *,
    ended: str,
) -> str | None:
    """The error a run's end records instead of `status` when the primary refused one of
    the run's checkpoints or writes (`Journal.refused_runs`) and stores nothing newer in
    its namespace: the thread there lacks the state the run ended with, as a run on a
    healthy database whose checkpoint is refused fails with it. None when the end stands:
    not refused, an ERROR already, or superseded (a later checkpoint of the thread went
    in: the refused one is history, the state the run ended with is there). `ended`
    says where the run ended ("while the database was unreachable")."""
    refusal = refused.get(run_id)
    status = RunStatus(status)
    if refusal is None or status is RunStatus.ERROR:
        return None
    stored: dict[str, str] = {}
    for namespace, checkpoint_id in await primary.checkpoint_keys(thread_id):
        stored[namespace] = max(stored.get(namespace, ""), checkpoint_id)
    if all(stored.get(ns, "") > newest for ns, newest in refusal.newest.items()):
        return None
    return (
        f"the run ended {status.value} {ended}, but the database refused to store one of "
        "its checkpoints when the outage's writes were copied back (kept in quarantine) "
        f"and holds none newer, so the thread lacks the state the run ended with: "
        f"{refusal.why}"
    )[:2000]


@dataclass(frozen=True)
class PutCheckpoint:
    """A checkpoint with every channel's value (so the copy reads back whole)."""

    config: RunnableConfig
    checkpoint: Checkpoint
    metadata: CheckpointMetadata
    versions: ChannelVersions
    key = None

    @property
    def thread_id(self) -> str:
        return str(self.config["configurable"]["thread_id"])

    @property
    def written_by(self) -> str | None:
        """The run that wrote it (a registry run names itself in its config), if any."""
        return _run_of(self.config)

    @property
    def position(self) -> tuple[str, str]:
        """The checkpoint's namespace and id."""
        return self.config["configurable"].get("checkpoint_ns", ""), self.checkpoint["id"]

    @property
    def stored(self) -> RunnableConfig:
        """The config a saver's `aput` returns for this checkpoint."""
        return {
            "configurable": {
                "thread_id": self.thread_id,
                "checkpoint_ns": self.config["configurable"].get("checkpoint_ns", ""),
                "checkpoint_id": self.checkpoint["id"],
            }
        }

    async def replay(self, primary: Backend, fallback: Backend) -> None:
        await primary.saver.aput(self.config, self.checkpoint, self.metadata, self.versions)


@dataclass(frozen=True)
class PutWrites:
    """A task's pending writes."""

    config: RunnableConfig
    writes: tuple[tuple[str, Any], ...]
    task_id: str
    task_path: str
    key = None

    @property
    def thread_id(self) -> str:
        return str(self.config["configurable"]["thread_id"])

    @property
    def written_by(self) -> str | None:
        """The run that wrote them, if any (`PutCheckpoint.written_by`)."""
        return _run_of(self.config)

    @property
    def position(self) -> tuple[str, str]:
        """The namespace and id of the checkpoint they were written on."""
        configurable = self.config["configurable"]
        return configurable.get("checkpoint_ns", ""), str(configurable["checkpoint_id"])

    async def replay(self, primary: Backend, fallback: Backend) -> None:
        await primary.saver.aput_writes(self.config, self.writes, self.task_id, self.task_path)


def _run_of(config: RunnableConfig) -> str | None:
    run_id = config.get("configurable", {}).get("run_id")
    return None if run_id is None else str(run_id)


@dataclass(frozen=True)
class CopyThread:
    """The registry rows of a thread born during the outage, as the fallback has them now:
    the thread, its runs and the events not copied yet."""

    thread_id: str
    copied: dict[str, int]  # run id -> highest seq already in the primary (shared)
    # A late copy (a quarantined one retried while the primary serves) adds what
    # the primary lacks and never replaces a row it has: those may be newer. Of the
    # thread's row it takes only a deletion's mark (`put_thread(late=True)`): the
    # on-time copy of the mark may be the one refused, the row the first drain's. Of
    # a thread made anew under the id (created at another time) it copies nothing.
    only_missing: bool = False
    # False: the runs that have ended are left out (row and events). The journal replays
    # a copy so while its thread's checkpoints wait behind it, and puts the whole copy
    # at the tail again: a run ended in the primary has its checkpoints there, whatever
    # prefix of the copy-back went in (a stop's grace, a crash), as before the outage.
    finished: bool = True
    # run id -> what the primary refused of it (shared, `Journal.refused_runs`)
    refused: Mapping[str, Refusal] = field(default_factory=dict)
    # run id -> the lease a copy put the run in the primary under (shared, the
    # journal's `leased_runs`, kept in its file)
    leased: Leases = field(default_factory=Leases)

    @property
    def key(self) -> Hashable:
        return ("thread", self.thread_id)

    def late(self) -> CopyThread:
        """This copy, made after the primary serves again."""
        return replace(self, only_missing=True)

    def unfinished(self) -> CopyThread:
        """This copy without the runs that have ended."""
        return replace(self, finished=False)

    async def replay(self, primary: Backend, fallback: Backend) -> None:
        # Expired rows too: a deletion under way marks the row (`start_deletion`) and
        # may still fail; the primary gets the thread as marked, as a deletion that
        # failed there leaves it (checkpoints copied without their row otherwise).
        thread = await fallback.registry.get_thread(self.thread_id, expired=True)
        if thread is None:  # deleted meanwhile: its deletion is journalled after this
            return
        # A late copy onto a row the primary made since (another created_at) takes no
        # mark there (`put_thread`), but still adds the runs the primary lacks: that row
        # is a run's admission after the switch (this thread, whose outage runs would be
        # lost with the fallback's copies). A deletion of the id since this copy's
        # created_at (of this thread or of that row) left a tombstone: `put_thread`
        # refuses the copy, and nothing of it joins a row made anew after the deletion.
        # A thread a deletion marked here is going anyway: nothing of it joins a row
        # made since (its deletion's last step leaves that row alone).
        if self.only_missing and thread.deletion_token is not None:
            there = await primary.registry.get_thread(self.thread_id, expired=True)
            if there is not None and there.created_at != thread.created_at:
                return
        runs: list[RunRecord] = []
        after: str | None = None
        while True:
            page = await fallback.registry.list_runs(
                RunFilter(thread_id=self.thread_id), first=_COPY_PAGE, after=after, expired=True
            )
            runs += page.items
            if not page.has_next_page:
                break
            after = page.end_cursor
        thread, runs = await _refused_ends(primary, thread, runs, self.refused)
        # Oldest first; without `finished`, those that ended wait for the copy at the tail.
        copying = [run for run in reversed(runs) if self.finished or not run.status.finished]
        late = self.only_missing
        if not await (self._late if late else self._on_time)(primary, fallback, thread, copying):
            # A finished deletion of this thread (or of the row made for it since): the
            # deletion wins, nothing of it is copied.
            log.warning(
                "thread %s was deleted on the primary after this replica copied it: its "
                "copy-back (row, runs, events) is dropped",
                self.thread_id,
            )

    async def _on_time(
        self, primary: Backend, fallback: Backend, thread: ThreadRecord, runs: list[RunRecord]
    ) -> bool:
        """The row, the runs and their first events not copied yet (a page in all) in one
        transaction (`Registry.copy_thread`: two round trips on PostgreSQL, where one
        call each took seven a thread, issue 15); the rest of the events of runs in
        flight after it, a page at a time. A run that ended takes all its events into
        the transaction: a reader who sees its end finds them there (they would follow
        it otherwise, or never come should the copy be cut short). False: refused by a
        tombstone, nothing written."""
        for run in runs:
            if not run.status.finished and run.lease_owner is not None:
                # Kept before it goes in: a kill after that leaves it known whose.
                self.leased.record(run.run_id, run.lease_owner, run.thread_id)
        events: list[EventRecord] = []
        more: list[str] = []  # runs in flight whose events did not all fit in it
        for run in runs:
            after = self.copied.get(run.run_id, 0)
            if run.status.finished:
                events += await _events_after(fallback, run.run_id, after)
                continue
            room = max(0, _COPY_PAGE - len(events))
            page = (
                await fallback.registry.list_events(run.run_id, after_seq=after, limit=room)
                if room
                else []
            )
            events += page
            if len(page) == room:
                more.append(run.run_id)
        # A run that ended during the outage tells its webhooks now.
        if not await primary.registry.copy_thread(thread, runs, events):
            return False
        for event in events:  # in seq order, run by run
            self.copied[event.run_id] = event.seq
        for run in runs:
            if run.status.finished:
                self.leased.forget(run.run_id)
        for run_id in more:  # not a run another executor took over meanwhile
            await _copy_events(primary, fallback, run_id, self.copied, as_copy="on_time")
        return True

    async def _late(
        self, primary: Backend, fallback: Backend, thread: ThreadRecord, runs: list[RunRecord]
    ) -> bool:
        """A late copy: the row's mark (`put_thread(late=True)`), the runs the primary
        lacks, and of those it has only their ends (`_end_if_still_ours`); the events of
        each run still as a copy left it. Never an end before its events: a run the
        primary lacks goes in with them, in one transaction; one it has takes them with
        its end, in one transaction. False: refused by a tombstone, nothing written."""
        if not await primary.registry.put_thread(thread, late=True):
            return False
        present = await primary.registry.get_runs([r.run_id for r in runs])
        for run in runs:  # the thread's row came first
            if run.run_id not in present:
                if not run.status.finished and run.lease_owner is not None:
                    # Kept before it goes in: a kill after that leaves it known whose.
                    self.leased.record(run.run_id, run.lease_owner, run.thread_id)
                events = await _events_after(fallback, run.run_id, self.copied.get(run.run_id, 0))
                try:  # a run that ended during the outage tells its webhooks now
                    await primary.registry.put_run(run, announce=True, copied=True, events=events)
                except NotFoundError:  # the thread was deleted in the primary meanwhile
                    return True
                if events:
                    self.copied[run.run_id] = events[-1].seq
                if run.status.finished:
                    self.leased.forget(run.run_id)
            elif run.status.finished and not present[run.run_id].status.finished:
                # Its end with its events, in one transaction (`finish_run`'s): events
                # first, then the end, let an executor claim the run between the two
                # (the dead replica's lease lapsed) and go on numbering after the end
                # event already copied; the end refused, its events are refused too.
                events = await _events_after(fallback, run.run_id, self.copied.get(run.run_id, 0))
                if await _end_if_still_ours(
                    primary, run, present[run.run_id], self.leased, events=events
                ):
                    if events:
                        self.copied[run.run_id] = events[-1].seq
                    continue
                # Refused: the events the late rules still take go in alone, as before
                # (a run released there, the copy's mark on it, takes them).
                await _copy_events(primary, fallback, run.run_id, self.copied, as_copy="late")
                continue
            # Not those of a run another executor claimed or holds there: its events
            # would collide with that executor's; nor any past an end written there (the
            # end is the last event). (After the switch this replica's own executors
            # write the primary too: a run ended or released there since may be theirs,
            # and its events from the fallback belong before theirs.)
            await _copy_events(primary, fallback, run.run_id, self.copied, as_copy="late")
            if run.run_id in present:  # ended there already, or not ended here: no end
                await _end_if_still_ours(primary, run, present[run.run_id], self.leased)
        return True


async def _events_after(fallback: Backend, run_id: str, after: int) -> list[EventRecord]:
    """Every event of a run in the fallback past `after`, a page read at a time."""
    events: list[EventRecord] = []
    while True:
        page = await fallback.registry.list_events(run_id, after_seq=after, limit=_COPY_PAGE)
        events += page
        if len(page) < _COPY_PAGE:
            return events
        after = page[-1].seq


async def _end_if_still_ours(
    primary: Backend,
    run: RunRecord,
    there: RunRecord,
    leased: Leases,
    *,
    events: Sequence[EventRecord] = (),
) -> bool:
    """A late copy of a run the primary has: its end only, and only onto the run as an
    earlier copy left it (a copy-back cut short by a kill, replayed by the next
    process), as the on-time copy judges it: by the primary's row, read and ended in one
    statement (`finish_run(if_as_copied=True)`), not by what this replica remembers. A
    run another executor took over, or that ended there, is left as it is: nothing goes
    backwards. A row no copy marked (an earlier version's copy) is this fallback's while
    the lease that version recorded (`leased`), or the fallback's row's, holds it.
    `events` (the run's, from where the copy stands) go with the end, or not at all.
    True if it ended the run."""
    if there.status.finished:
        leased.forget(run.run_id)
        return False
    if not run.status.finished:
        return False
    final, _ = await primary.registry.finish_run(
        run.run_id,
        THREAD_STATUS_AFTER[run.status],
        if_unfinished=True,
        if_leased_by=leased.get(run.run_id) or run.lease_owner,
        if_as_copied=True,
        events=events,
        status=run.status,
        output=run.output,
        error=run.error,
        finished_at=run.finished_at,
        input_tokens=run.input_tokens,
        output_tokens=run.output_tokens,
        steps=run.steps,
    )
    leased.forget(run.run_id)
    return final is not None


async def _refused_ends(
    primary: Backend, thread: ThreadRecord, runs: list[RunRecord], refused: Mapping[str, Refusal]
) -> tuple[ThreadRecord, list[RunRecord]]:
    """The thread and its runs (newest first) as the primary gets them: a finished run
    whose checkpoint it refused ends ERROR (`refused_end`), and so does the thread's
    status when that run is its newest."""
    if not refused:
        return thread, runs
    amended: list[RunRecord] = []
    for index, run in enumerate(runs):
        why = (
            await refused_end(
                primary, run.run_id, thread.thread_id, run.status, refused, ended=_IN_OUTAGE
            )
            if run.status.finished and run.run_id in refused
            else None
        )
        if why is None:
            amended.append(run)
            continue
        if index == 0 and thread.status is THREAD_STATUS_AFTER[run.status]:
            thread = replace(thread, status=THREAD_STATUS_AFTER[RunStatus.ERROR])
        amended.append(replace(run, status=RunStatus.ERROR, error=why))
    return thread, amended


@dataclass(frozen=True)
class CopyEvents:
    """Events a run in flight at the outage's start emitted meanwhile: only while the
    run is unfinished in the primary and leased by `owner`, the executor that stored
    them (its lease may have lapsed: no one took the run over; its own end and release
    come after this entry). A replica that took the run over meanwhile numbers its
    events on from what the primary had: these would collide with them or follow its
    end; one that released it leaves the next claimer to number on from there."""

    run_id: str
    thread_id: str
    copied: dict[str, int]
    owner: str | None = None  # None: not known to be stored under a lease: copied as is

    @property
    def key(self) -> Hashable:
        return ("events", self.run_id)

    async def replay(self, primary: Backend, fallback: Backend) -> None:
        await _copy_events(primary, fallback, self.run_id, self.copied, self.owner)


async def _copy_events(
    primary: Backend,
    fallback: Backend,
    run_id: str,
    copied: dict[str, int],
    owner: str | None = None,
    *,
    as_copy: Literal["on_time", "late"] | None = None,
) -> None:
    while True:
        after = copied.get(run_id, 0)
        events = await fallback.registry.list_events(run_id, after_seq=after, limit=_COPY_PAGE)
        if not events:
            return
        # A run deleted meanwhile takes none, nor one `owner` holds no longer, nor (as a
        # copy) one another executor took over (`Registry.put_events`).
        await primary.registry.put_events(events, if_leased_by=owner, as_copy=as_copy)
        copied[run_id] = events[-1].seq
        if len(events) < _COPY_PAGE:
            # That was all: an event emitted from now on has a new entry behind
            # this one (the recovery took this entry's key when it started).
            return


@dataclass(frozen=True)
class ChangeRun:
    """Fields of a run in flight at the outage's start (its row is in the primary), set
    only while it is unfinished there and leased by `owner`, the executor it was changed
    under (its lease may have lapsed: no one took the run over). Meanwhile another
    replica may have taken it over, ended it, or released it: a released run is
    claimable, and a renewal replayed on it would hold its claims off."""

    run_id: str
    thread_id: str
    fields: Mapping[str, Any]
    owner: str | None = None  # None: whoever holds the run, if anyone (a cancel request)
    key = None

    async def replay(self, primary: Backend, fallback: Backend) -> None:
        await primary.registry.update_held_run(self.run_id, self.owner, **self.fields)


@dataclass(frozen=True)
class ReleaseRun:
    """A lease given up during the outage: released only if `owner` still holds it (in
    the meantime another replica may have taken the run over, whose lease stays)."""

    run_id: str
    thread_id: str
    owner: str
    key = None

    async def replay(self, primary: Backend, fallback: Backend) -> None:
        await primary.registry.release_runs(self.owner, [self.run_id])
        await _purge_if_gone(primary, self.run_id, self.thread_id)


@dataclass(frozen=True)
class FinishRun:
    """The end of a run in flight at the outage's start, with its thread's status: only
    while the run is unfinished in the primary and leased by `owner`, the executor that
    ended it (recorded once: a replay twice finds it ended). A replica that took the run
    over meanwhile executes it and records its end; one that released it leaves it
    claimable, and the executor that claims it next records the end. Its last events
    (the end event among them) are stored with it, or dropped with it."""

    run_id: str
    thread_id: str
    fields: Mapping[str, Any]
    owner: str | None = None  # None: whoever holds the run, if anyone
    events: tuple[EventRecord, ...] = ()
    # run id -> what the primary refused of it (shared, `Journal.refused_runs`)
    refused: Mapping[str, Refusal] = field(default_factory=dict)
    key = None

    async def replay(self, primary: Backend, fallback: Backend) -> None:
        fields = dict(self.fields)
        why = await refused_end(
            primary, self.run_id, self.thread_id, fields["status"], self.refused, ended=_IN_OUTAGE
        )
        if why is not None:
            fields.update(status=RunStatus.ERROR, error=why)
        status = RunStatus(fields["status"])
        ended, _ = await primary.registry.finish_run(
            self.run_id,
            THREAD_STATUS_AFTER[status],
            if_unfinished=True,
            if_leased_by=self.owner,
            events=self.events,
            **fields,
        )
        if ended is None:  # taken over, ended already, or gone with its thread
            await _purge_if_gone(primary, self.run_id, self.thread_id)


async def _purge_if_gone(primary: Backend, run_id: str, thread_id: str) -> None:
    """A run the primary no longer has outlived its thread's deletion, and its executor
    learnt its end only from the fallback, so it never purged what the run wrote after
    (`RunExecutor._purge_if_deleted`): those checkpoints go now, the ones replayed just
    before this entry included, unless the thread has a row (made anew under the id)."""
    if await primary.registry.get_run(run_id) is None:
        await primary.delete_orphan_checkpoints(thread_id)


@dataclass(frozen=True)
class DeleteRun:
    """A run of a thread born during the outage, deleted meanwhile."""

    run_id: str
    thread_id: str
    key = None

    async def replay(self, primary: Backend, fallback: Backend) -> None:
        await primary.registry.delete_run(self.run_id)


@dataclass(frozen=True)
class ReleaseEdit:
    """An edit's claim ended during the outage: ended in the primary only while it is
    this claim (`until`): a copy of the thread carried it there, and a copy adds or
    extends a claim but never clears one, which may be another replica's edit."""

    thread_id: str
    until: datetime
    key = None

    async def replay(self, primary: Backend, fallback: Backend) -> None:
        await primary.registry.release_edit(self.thread_id, self.until)


@dataclass(frozen=True)
class TouchThread:
    """Activity on a thread that is not local (its row, if any, is in the primary)."""

    thread_id: str
    user_id: str | None
    create: bool = True
    # When it was journalled (the first of the touches it stands for): a deletion of the
    # id since then wins over it, however late it finishes (`touch_threads`).
    at: datetime = field(default_factory=clock.now)

    @property
    def key(self) -> Hashable:
        return ("touch", self.thread_id, self.create)

    async def replay(self, primary: Backend, fallback: Backend) -> None:
        await primary.registry.touch_threads(
            {self.thread_id: self.user_id}, create=self.create, unless_deleted_since=self.at
        )


@dataclass(frozen=True)
class DeleteThread:
    """A thread deleted during the outage: whatever of it reached the primary goes."""

    thread_id: str
    key = None

    async def replay(self, primary: Backend, fallback: Backend) -> None:
        await primary.saver.adelete_thread(self.thread_id)
        await primary.registry.delete_thread(self.thread_id)
