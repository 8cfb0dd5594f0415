"""The outage journal: what a fallback accepted, in order, until the primary has it.

While the primary cannot be reached, every write the fallback takes leaves an
entry here: a checkpoint, a task's pending writes, a copy of the registry rows
of a thread born during the outage, a change to a run that was in flight, or a
deletion (`entries.py`). `FallbackRouter.recover` replays the entries into the primary from
the head and removes an entry only after it was replayed. It takes a batch
from the head at a time: entries of one thread one after the other in their
order, different threads side by side (nothing crosses threads), so the
sync back is not one round trip after another. Into PostgreSQL a thread's
consecutive checkpoints and writes in one step go as one transaction
(`bulk.py`); a batch the primary refuses is replayed entry by entry, so only
the entry it cannot take is quarantined.

Three rules make that lose nothing:
- only the recovery pops, and only a prefix of the head it replayed, under
  the step lock that a deletion takes too, so the entries it replayed are
  the ones it removes;
- writers pass the `WriteGate`; the recovery's last round closes it, waits
  until no write is in flight, drains what is left and switches to the
  primary before anyone can write again, so no entry can land after the
  last drain;
- a copy of a thread's registry rows (`CopyThread`) replayed with more entries
  of its thread behind it copies only its unfinished runs, and goes to the tail
  again for the finished ones: a run's end reaches the primary after its
  checkpoints (and with or after its events, `CopyThread`), so a copy cut short
  anywhere (a stop's grace, a crash) leaves no run ended there without them;
- an entry the primary refuses for a reason other than being unreachable (a
  value PostgreSQL cannot store) is moved to the quarantine: kept, counted,
  retried later, and it does not hold up the entries behind it. A checkpoint
  (or pending write) of a run refused as a value the primary cannot store
  (`is_refused_value`) will never go in: the run is named in `refused_runs`, and
  its end goes in ERROR (`refused_end`) unless a newer checkpoint of its thread went in
  (then the state it ended with is there). An entry whose
  thread or run the primary no longer has (deleted meanwhile) is done, not
  refused: a run, its events and a run's changes follow their thread out.
  Every entry of a thread another replica deleted meanwhile (its tombstone
  on the primary, `tombstones.py`) is dropped unreplayed: the deletion wins,
  also when it finishes as the batch replays (looked at again after it).

The journal has a limit: when it is full a new write fails (UNAVAILABLE)
instead of the process growing until the kernel kills it.

With a durable fallback (`outagefile.py`) every entry is also committed to the
journal's file as it is appended, before the write it records is acknowledged,
and removed from it when it leaves the journal: a process that dies leaves the
file as the journal was, for the next one to load (`attach`).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Hashable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from itertools import islice
from types import TracebackType
from typing import TYPE_CHECKING, Any, cast

from code_hero.errors import BackendUnavailableError, described
from code_hero.persistence.entries import (
    CopyThread,
    Entry,
    Leases,
    PutCheckpoint,
    PutWrites,
    Refusal,
)
from code_hero.persistence.tombstones import Judge, log_dropped
from code_hero.persistence.unreachable import is_refused_value

if TYPE_CHECKING:
    from code_hero.persistence.backends import Backend
    from code_hero.persistence.outagefile import Loaded, OutageFile

# Entry and the checkpoint entries are re-exported: the journal's callers name them.
__all__ = [
    "Entry",
    "Journal",
    "JournalFullError",
    "PutCheckpoint",
    "PutWrites",
    "Quarantined",
    "WriteGate",
]


log = logging.getLogger(__name__)


class JournalFullError(BackendUnavailableError):
    """The outage journal holds its limit: the fallback takes no more writes."""


@dataclass
class Quarantined:
    """An entry the primary refused; kept and retried."""

    entry: Entry
    failures: int
    last_error: str
    since: float = field(default_factory=time.monotonic)


# Entries taken from the head per step, per thread replaying at once. A thread's
# checkpoint entries in one step go to PostgreSQL as one transaction: the more
# of a thread a step holds, the fewer transactions (16 beat 4 by about a fifth
# of the CPU per entry in bench/outage.py; more lanes than 16 the pool lacks).
_BATCH_PER_LANE = 16


class Journal:
    """Entries in the order the fallback accepted them, plus the quarantine."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.entries: deque[Entry] = deque()
        self.quarantine: deque[Quarantined] = deque()
        self._keyed: dict[Hashable, Entry] = {}
        self._per_thread: Counter[str] = Counter()  # entries waiting, by thread
        # Runs with a checkpoint or write the primary refused as a value it cannot store,
        # why and where: their end goes in ERROR unless superseded (`entries.refused_end`,
        # also asked by the executor of a run ending after the switch back). Shared with the
        # entries that replay an end (`CopyThread`, `FinishRun`); as long as the
        # quarantine holds such an entry.
        self.refused_runs: dict[str, Refusal] = {}
        # Runs a copy put in the primary unfinished, by the lease they went in under
        # (shared with the copies, `CopyThread.leased`): kept in the file, so the next
        # process's late copy knows whose the run was after its end cleared the lease.
        self.leased_runs = Leases()
        # Serialises replaying the head with removing entries of a deleted thread.
        self.step_lock = asyncio.Lock()
        # The durable fallback's journal file, if any, and each entry's rows there (by
        # the entry object's id: an entry deferred to the tail gets a new row).
        self.store: OutageFile | None = None
        self._seqs: dict[int, list[int]] = {}
        self._store_failing = False
        # Entries loaded from the file this process cannot read yet, and the entries of
        # their threads behind them, by thread, in order (`attach`, `retry_held`).
        self.held: dict[str, list[_Held]] = {}
        self.held_error = ""
        self._copied: dict[str, int] = {}
        # Entries the file did not take (a full disk, a value pickle refuses), by
        # thread, in order: written first once the file works again (`_file`).
        self._unfiled: dict[str, deque[Entry]] = {}
        self._unpicklable: set[str] = set()  # threads whose backlog pickle refuses

    def attach(self, store: OutageFile, copied: dict[str, int]) -> Loaded:
        """Keep the journal in `store` from now on, after loading what it holds (a dead
        process's outage); `copied` is the router's map the copies share.

        An entry this process cannot read yet (a value of a graph's module not imported
        yet, an entry class of another version) stops nothing: it stays in the file,
        held with every later entry of its thread (`held`), and is tried again
        (`retry_held`: after the graphs load, at each probe). A copy of a thread's rows
        loaded from the file replays as a late copy (`CopyThread.late`): the dead
        process may have copied it back already, and the primary moved on since."""
        self._copied = copied
        loaded = store.load()
        self.refused_runs.update(loaded.state.get("refused") or {})
        self.leased_runs.update(loaded.state.get("leased") or {})
        self.leased_runs.thread_of.update(loaded.state.get("leased_threads") or {})
        rows = [(seq, body, False, 0, "") for seq, body in loaded.entries]
        rows += [(seq, body, True, n, error) for seq, body, n, error in loaded.quarantined]
        for seq, body, flagged, failures, error in sorted(rows, key=lambda r: r[0]):
            thread_id = loaded.thread_of[seq]
            if thread_id in self.held:
                self.held[thread_id].append(_Held(seq, body, None, flagged))
                continue
            try:
                entry = self._read(body)
            except Exception as exc:
                self.held[thread_id] = [_Held(seq, body, None, flagged)]
                self.held_error = _describe(exc)
                continue
            if flagged:
                self.quarantine.append(Quarantined(entry, failures, error))
            else:
                self._in_memory(entry)
            self._seqs.setdefault(id(entry), []).append(seq)
        self.store = store
        self.leased_runs.save = self._save_leases
        if self.held:
            log.error(
                "%d entries of %d threads in the outage journal file %s.entries cannot be "
                "read by this process (%s): kept in the file, and tried again after the "
                "graphs load and at each probe; the entries of their threads wait behind them",
                self.held_count,
                len(self.held),
                store.path,
                self.held_error,
            )
        return loaded

    def _read(self, body: bytes) -> Entry:
        """An entry of the file, sharing the journal's maps again; a copy of a thread's
        rows as a late copy (`_as_loaded`)."""
        from code_hero.persistence.outagefile import load_entry

        return _as_loaded(
            load_entry(
                body, copied=self._copied, refused=self.refused_runs, leased=self.leased_runs
            )
        )

    @property
    def held_count(self) -> int:
        """Entries loaded from the file this process could not read yet, and the entries
        of their threads behind them."""
        return sum(len(items) for items in self.held.values())

    def retry_held(self, *, serving: bool) -> int:
        """Read the held entries again, each thread's in order up to the first one still
        unreadable: those read join the journal (the primary serving: the quarantine,
        replayed as late copies); how many did."""
        moved = 0
        for thread_id in list(self.held):
            items = self.held[thread_id]
            while items:
                item = items[0]
                entry = item.entry
                if entry is None:
                    try:
                        assert item.body is not None
                        entry = self._read(item.body)
                    except Exception as exc:
                        self.held_error = _describe(exc)
                        break
                items.pop(0)
                moved += 1
                if serving or item.quarantined:
                    self.quarantine.append(Quarantined(entry, 0, "read late (held at start)"))
                else:
                    self._in_memory(entry)
                if item.seq is not None:
                    self._seqs.setdefault(id(entry), []).append(item.seq)
            if not items:
                del self.held[thread_id]
        if moved:
            log.warning(
                "%d entries held in the outage journal file could be read now: they go to "
                "the primary; %d still held",
                moved,
                self.held_count,
            )
        return moved

    def _stored(self, what: str, method: str, *args: Any, strict: bool = False) -> object:
        """A call on the journal's file; a failure (a full disk) is logged, once until
        one succeeds, and the journal goes on in memory: the emergency slot, on the
        same terms as the memory fallback, rather than no writes at all. `strict`: the
        failure is raised too, once logged."""
        if self.store is None:
            return None
        try:
            result = getattr(self.store, method)(*args)
        except Exception as exc:
            if strict:  # raised at every try (a copy retried each probe): logged once
                self._failing(
                    what,
                    exc,
                    "the fallback's journal file %s.entries could not be written (%s) %s",
                    self.store.path,
                    exc,
                    what,
                )
                raise
            self._failing(
                what,
                exc,
                "the fallback's journal file %s.entries could not be written (%s): "
                "outage writes are kept in memory only until it can",
                self.store.path,
                exc,
            )
            return None
        self._store_failing = False
        return result

    def _failing(self, what: str, exc: BaseException, message: str, *args: object) -> None:
        """Log the journal's file failing: `message` as an ERROR once, until a call on
        the file succeeds again; the failures in between at DEBUG."""
        if self._store_failing:
            log.debug("%s in the journal's file failed: %s", what, exc)
            return
        self._store_failing = True
        log.error(message, *args)

    @property
    def durable(self) -> bool:
        """True when every entry waiting is in the journal's file too."""
        return self.store is not None and all(
            id(e) in self._seqs for e in [*self.entries, *(q.entry for q in self.quarantine)]
        )

    def _unstore(self, entry: Entry) -> int | None:
        """The oldest row of an entry leaving the journal (None: not in the file)."""
        seqs = self._seqs.get(id(entry))
        if not seqs:
            return None
        seq = seqs.pop(0)
        if not seqs:
            del self._seqs[id(entry)]
        return seq

    def _save_refusals(self) -> None:
        refused = dict(self.refused_runs)
        self._stored("saving refusals", "set_state", "refused", refused)

    def _save_leases(self) -> None:
        """Raises when the file cannot keep them: a copy puts no unfinished run in the
        primary under a lease the file lost (a later late copy could not end it)."""
        what = "saving a lease: the copy waits"
        threads = dict(self.leased_runs.thread_of)
        self._stored(what, "set_state", "leased_threads", threads, strict=True)
        self._stored(what, "set_state", "leased", dict(self.leased_runs), strict=True)

    def forget_leases(self) -> None:
        """No copy can need a lease any more: nothing waits, quarantined or held."""
        if not self.entries and not self.quarantine and not self.held:
            self.leased_runs.forget_all()

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def full(self) -> bool:
        """True when a new entry would pass the limit (the entries held in the file
        behind an unreadable one count: they wait in memory too)."""
        return len(self.entries) + len(self.quarantine) + self.held_count >= self.limit

    def ensure_room(self, retry_after: int) -> None:
        """Raise JournalFullError when the journal is full (call before the write)."""
        if self.full:
            raise JournalFullError(
                f"the database is unreachable and the outage journal is full ({self.limit} "
                "writes wait for it, the limit CODE_HERO_MAX_PENDING_SYNC sets): no more "
                "writes are accepted until it is back",
                retry_after,
            )

    def append(self, entry: Entry, *, replacing: bool = False) -> None:
        """Add an entry at the tail; a keyed entry already waiting makes it redundant.
        `replacing`: in the file, it takes the place of every row of its thread in one
        commit (`_file`).

        Never refuses: the write it records has happened (`ensure_room` came first).
        """
        key = entry.key
        if key is not None and key in self._keyed:
            return
        if entry.thread_id in self.held:  # behind the held entries of its thread
            seq = self._file(entry)
            self.held[entry.thread_id].append(_Held(None, None, entry, False))
            if isinstance(seq, int):
                self.held[entry.thread_id][-1].seq = seq
            return
        seq = self._file(entry, replacing=replacing)
        self._in_memory(entry)
        if isinstance(seq, int):
            self._seqs.setdefault(id(entry), []).append(seq)

    def _file(self, entry: Entry, *, replacing: bool = False) -> int | None:
        """Commit an entry to the file, after the entries of its thread the file did not
        take yet (in order); None when it did not go in (it waits behind them).

        The file never holds an entry without the ones of its thread before it: a replay
        after a kill would apply it out of order (a run's end without its checkpoint).
        Each thread's backlog is written first once the file works again (at the next
        entry of any thread). An entry pickle refuses never goes in, so neither does any
        later one of its thread: those are kept in memory only (the emergency slot's
        terms, logged once), and after a kill the thread resumes from the file's last
        entry before it. `replacing`: the entry takes the place of every row of its
        thread in the file, in one commit (`OutageFile.replace_thread`)."""
        if self.store is None:
            return None
        for thread_id in [t for t in self._unfiled if t not in self._unpicklable]:
            self._flush(thread_id)
        backlog = self._unfiled.get(entry.thread_id)
        if backlog:
            backlog.append(entry)
            return None
        seq = self._add(entry, replacing=replacing)
        if seq is None:
            self._unfiled[entry.thread_id] = deque([entry])
        return seq

    def _flush(self, thread_id: str) -> None:
        """Write a thread's backlog in order, up to the first entry the file refuses."""
        backlog = self._unfiled[thread_id]
        while backlog:
            head = backlog[0]
            seq = self._add(head)
            if seq is None:
                return
            backlog.popleft()
            self._seqs.setdefault(id(head), []).append(seq)
            # Quarantined meanwhile (the drain refused it before it was filed): so in
            # the file too.
            for item in self.quarantine:
                if item.entry is head:
                    self._file_quarantined(item)
                    break
        del self._unfiled[thread_id]

    def _add(self, entry: Entry, *, replacing: bool = False) -> int | None:
        """`OutageFile.add` (`replace_thread` when `replacing`); None when it failed
        (logged as `_stored` does). A value pickle refuses marks its thread: its backlog
        is not tried again."""
        assert self.store is not None
        try:
            seq = self.store.replace_thread(entry) if replacing else self.store.add(entry)
        except Exception as exc:
            if not isinstance(exc, OSError | sqlite3.Error):
                self._unpicklable.add(entry.thread_id)
            self._failing(
                "an entry",
                exc,
                "the fallback's journal file %s.entries could not take a write of thread %s "
                "(%s): it and the later writes of its thread are kept in memory only until it "
                "can",
                self.store.path,
                entry.thread_id,
                _describe(exc),
            )
            return None
        self._store_failing = False
        return seq

    def _file_quarantined(self, item: Quarantined) -> None:
        """Mark a quarantined entry so in the file (its failures and last error), if the
        file holds it."""
        seqs = self._seqs.get(id(item.entry))
        if seqs:
            self._stored("a quarantine", "quarantine", seqs[0], item.failures, item.last_error)

    def _unfile(self, entry: Entry) -> None:
        """An entry leaving the journal (replayed, or dropped) is no longer owed to the
        file: out of its thread's backlog wherever it stands there (a quarantined one
        leaves out of its thread's order). One moving to the quarantine stays owed."""
        backlog = self._unfiled.get(entry.thread_id)
        if not backlog:
            return
        for index, waiting in enumerate(backlog):
            if waiting is entry:
                del backlog[index]
                break
        if not backlog:
            del self._unfiled[entry.thread_id]
            self._unpicklable.discard(entry.thread_id)

    def _in_memory(self, entry: Entry) -> None:
        key = entry.key
        self.entries.append(entry)
        self._per_thread[entry.thread_id] += 1
        if key is not None:
            self._keyed[key] = entry

    async def drain(
        self,
        *,
        primary: Backend,
        fallback: Backend,
        until: int = 0,
        concurrency: int = 1,
        is_unreachable: Callable[[BaseException], bool],
        on_synced: Callable[[], None],
        step_timeout: float = 30.0,
        judge: Judge | None = None,
    ) -> None:
        """Replay from the head until at most `until` entries remain.

        Up to `concurrency` threads replay at once, each thread's entries in
        order. An unreachable primary stops the drain (raised) once the batch
        in hand has settled; any other refusal quarantines the entry and the
        drain goes on.

        Each step is bounded with `asyncio.timeout`, not `wait_for`: on Python 3.11
        wait_for returns a result that arrives with a cancel and drops the cancel, so a
        recovery stopped (shutdown) as an entry went in replayed on.

        `judge` names the threads of a batch the primary deleted meanwhile
        (`tombstones.deleted_copies`): their entries are dropped unreplayed.
        """
        while len(self.entries) > until:
            async with self.step_lock:
                size = min(len(self.entries) - until, max(1, concurrency) * _BATCH_PER_LANE)
                batch = list(islice(self.entries, max(1, size)))
                if not batch:
                    return
                gone = await _judged(batch, judge, is_unreachable, step_timeout)
                replays = self._deferring(batch)
                outcomes = await self._replay(
                    replays, primary, fallback, concurrency, is_unreachable, step_timeout, gone
                )
                deferred = {
                    index
                    for index, entry in enumerate(batch)
                    if replays[index] is not entry and entry.thread_id not in gone
                }
                unreachable, removed = self._settle(batch, outcomes, on_synced, deferred)
                for index, entry in enumerate(batch):
                    if index in deferred and outcomes[index].done:
                        self.append(entry)  # the finished runs: behind their checkpoints
                # Only now, the copies deferred in the file again: a process that dies
                # in between leaves them twice there (replaying twice is harmless).
                if removed:
                    self._stored("removing entries", "remove", removed)
                if unreachable is None:
                    await _purge_deleted(primary, _replayed(batch, gone), judge, step_timeout)
            if unreachable is not None:
                raise unreachable

    async def _replay(
        self,
        batch: list[Entry],
        primary: Backend,
        fallback: Backend,
        concurrency: int,
        is_unreachable: Callable[[BaseException], bool],
        step_timeout: float,
        gone: Mapping[str, datetime],
    ) -> list[_Outcome]:
        """Replay a batch from the head: one lane per thread, its entries in order; the
        entries of `gone` threads (deleted in the primary) are done, unreplayed."""
        outcomes = [_Outcome() for _ in batch]
        lanes: dict[str, list[int]] = {}
        for index, entry in enumerate(batch):
            self._started(entry)
            if entry.thread_id in gone:
                outcomes[index].done = True
                continue
            lanes.setdefault(entry.thread_id, []).append(index)
        for thread_id, deleted_at in gone.items():
            log_dropped(thread_id, deleted_at, (e for e in batch if e.thread_id == thread_id))
        free = asyncio.Semaphore(max(1, concurrency))

        async def one(index: int) -> bool:
            """Replay one entry; False when the primary is unreachable."""
            outcome = outcomes[index]
            try:
                async with asyncio.timeout(step_timeout):  # not wait_for: see `drain`
                    await batch[index].replay(primary, fallback)
            except Exception as exc:
                outcome.error = exc
                outcome.unreachable = is_unreachable(exc)
                if not outcome.unreachable:
                    # Before the lane goes on: its run's end may be next in it.
                    self._note_refused(batch[index], exc)
                return not outcome.unreachable
            outcome.done = True
            return True

        async def together(indexes: list[int]) -> bool | None:
            """Replay a run of checkpoint entries as one batch; None: refused."""
            items = cast("list[PutCheckpoint | PutWrites]", [batch[i] for i in indexes])
            try:
                async with asyncio.timeout(step_timeout):
                    await primary.put_batch(items)
            except Exception as exc:
                if is_unreachable(exc) and not isinstance(exc, TimeoutError):
                    outcomes[indexes[0]].error = exc
                    outcomes[indexes[0]].unreachable = True
                    return False
                # Refused (or too slow as a whole): entry by entry finds the
                # one the primary will not take, and the others still go in.
                return None
            for i in indexes:
                outcomes[i].done = True
            return True

        async def lane(indexes: list[int]) -> None:
            async with free:
                for run in _runs(batch, indexes, batches=primary.batches):
                    went = await together(run) if len(run) > 1 else None
                    if went is None:
                        for index in run:
                            if not await one(index):
                                return  # the rest of this thread waits for the next recovery
                    elif not went:
                        return

        await asyncio.gather(*(lane(indexes) for indexes in lanes.values()))
        return outcomes

    def _deferring(self, batch: list[Entry]) -> list[Entry]:
        """What each entry of a batch from the head replays: a copy with more entries of
        its thread behind it, its unfinished runs only (`CopyThread.unfinished`). The
        entries of its thread held in the file (unread yet) are behind it too: its
        finished runs wait until they replay."""
        seen: Counter[str] = Counter()
        replays: list[Entry] = []
        for entry in batch:
            seen[entry.thread_id] += 1
            unfinished = getattr(entry, "unfinished", None)
            behind = self._per_thread[entry.thread_id] - seen[entry.thread_id]
            if entry.thread_id in self.held:
                behind += len(self.held[entry.thread_id])
            if callable(unfinished) and behind > 0:
                self._started(entry)  # its key is free: the whole copy goes to the tail
                replays.append(unfinished())
            else:
                replays.append(entry)
        return replays

    def _settle(
        self,
        batch: list[Entry],
        outcomes: list[_Outcome],
        on_synced: Callable[[], None],
        deferred: set[int],
    ) -> tuple[BaseException | None, list[int]]:
        """Pop the batch's settled prefix; the rest stays (replaying twice is harmless).
        A `deferred` entry's copy goes to the tail: counted synced there, once.

        Returns the first error that said the primary is unreachable, if any, and the
        rows of the journal's file the popped entries leave (for the caller to remove).
        """
        prefix = True
        removed: list[int] = []
        for index, (entry, outcome) in enumerate(zip(batch, outcomes, strict=True)):
            if prefix and outcome.done:
                self._pop()
                if (seq := self._unstore(entry)) is not None:
                    removed.append(seq)
                if index not in deferred:
                    on_synced()
            elif prefix and outcome.error is not None and not outcome.unreachable:
                self._pop(unfile=False)  # quarantined: still owed to the file
                item = Quarantined(entry, 1, _describe(outcome.error))
                self.quarantine.append(item)
                self._file_quarantined(item)
            else:
                prefix = False
                self._restart(entry)
        return next((o.error for o in outcomes if o.unreachable), None), removed

    def _pop(self, *, unfile: bool = True) -> None:
        entry = self.entries.popleft()
        if unfile:
            self._unfile(entry)
        thread_id = entry.thread_id
        self._per_thread[thread_id] -= 1
        if not self._per_thread[thread_id]:
            del self._per_thread[thread_id]

    async def retry_quarantined(
        self,
        *,
        primary: Backend,
        fallback: Backend,
        is_unreachable: Callable[[BaseException], bool],
        step_timeout: float = 30.0,
        judge: Judge | None = None,
    ) -> tuple[list[Entry], BaseException | None]:
        """Replay each quarantined entry once; returns those that went through, and the
        error that stopped the retry when one said the primary is unreachable (the
        caller judges it: a pool timeout may be a saturated pool only).

        The primary serves meanwhile: an entry that copies state is replayed as
        a late copy (`late()`), which adds what is missing and never replaces a
        newer row. An entry of a thread `judge` finds deleted in the primary is done,
        unreplayed.
        """
        done: list[Entry] = []
        for _ in range(len(self.quarantine)):
            async with self.step_lock:
                if not self.quarantine:
                    break
                # The entry stays in the quarantine while it is replayed: counted in
                # health and /metrics, and its thread's fallback copies kept.
                item = self.quarantine[0]
                late = getattr(item.entry, "late", None)
                entry: Entry = late() if callable(late) else item.entry
                try:
                    # Bounded like the drain: a hung primary must not hold the step lock.
                    async with asyncio.timeout(step_timeout):
                        gone = {} if judge is None else await judge({entry.thread_id})
                        if entry.thread_id in gone:
                            log_dropped(entry.thread_id, gone[entry.thread_id], [item.entry])
                        else:
                            await entry.replay(primary, fallback)
                    if entry.thread_id not in gone:
                        await _purge_deleted(primary, {entry.thread_id}, judge, step_timeout)
                except Exception as exc:
                    self.quarantine.rotate(-1)  # to the back: the others get their turn
                    if is_unreachable(exc):
                        return done, exc
                    self._note_refused(item.entry, exc)
                    item.failures += 1
                    item.last_error = _describe(exc)
                    self._file_quarantined(item)
                    continue
                self.quarantine.popleft()
                self._unfile(item.entry)
                if (seq := self._unstore(item.entry)) is not None:
                    self._stored("removing an entry", "remove", [seq])
                # Replayed, or dropped because another replica deleted its thread:
                # either way the refusal no longer holds of its run.
                self._forget_refusals()
                done.append(item.entry)
        return done, None

    def _note_refused(self, entry: Entry, exc: BaseException) -> None:
        """A run's checkpoint or write refused as a value: its end will go in ERROR."""
        run_id = getattr(entry, "written_by", None)
        if run_id is not None and is_refused_value(exc):
            refusal = self.refused_runs.setdefault(run_id, Refusal(_describe(exc)))
            if isinstance(entry, PutCheckpoint | PutWrites):
                refusal.note(*entry.position)
            self._save_refusals()

    def _forget_refusals(self) -> None:
        """Keep the refused runs whose refused entry the quarantine still holds."""
        if self.refused_runs:  # in place: the entries share the map
            held = {getattr(q.entry, "written_by", None) for q in self.quarantine}
            for run_id in [r for r in self.refused_runs if r not in held]:
                del self.refused_runs[run_id]
            self._save_refusals()

    async def drop_thread(self, thread_id: str) -> int:
        """Forget every entry of a deleted thread (never the one being replayed)."""
        async with self.step_lock:
            return self.drop_thread_locked(thread_id)

    def drop_thread_locked(self, thread_id: str, *, then: Entry | None = None) -> int:
        """`drop_thread` for a caller that holds the step lock; with `then` (the thread's
        deletion), that entry takes their place at the tail, in the same commit of the
        journal's file: a process killed at any point leaves the thread's entries there or
        its deletion, never neither (its entries gone, what of it reached the primary
        left there)."""
        before = len(self.entries) + len(self.quarantine)
        for gone in [*self.entries, *(q.entry for q in self.quarantine)]:
            if gone.thread_id == thread_id:
                self._seqs.pop(id(gone), None)
        if then is None:
            self._stored("dropping a thread", "remove_thread", thread_id)
        held = len(self.held.pop(thread_id, []))
        self._unfiled.pop(thread_id, None)
        self._unpicklable.discard(thread_id)
        self.entries = deque(e for e in self.entries if e.thread_id != thread_id)
        self.quarantine = deque(q for q in self.quarantine if q.entry.thread_id != thread_id)
        self._keyed = {k: e for k, e in self._keyed.items() if e.thread_id != thread_id}
        self._per_thread.pop(thread_id, None)
        if then is not None:  # nothing of its thread is held or keyed any more
            assert then.thread_id == thread_id and then.key is None
            self.append(then, replacing=True)
        self._forget_refusals()
        self.leased_runs.forget_thread(thread_id)
        return before + held - len(self.entries) - len(self.quarantine) + (then is not None)

    def quarantined_threads(self) -> set[str]:
        """Threads with an entry in the quarantine, or held unread in the file (their
        fallback copies stay)."""
        return {q.entry.thread_id for q in self.quarantine} | set(self.held)

    def quarantined_runs(self) -> set[str]:
        """Runs with an entry of their own in the quarantine (a run's change, end, events
        or deletion): the primary may lack what the fallback's copy of such a run holds."""
        return {run_id for q in self.quarantine if (run_id := getattr(q.entry, "run_id", None))}

    def quarantined_copies(self) -> set[str]:
        """Threads born in an outage whose copy (their runs with them) is quarantined."""
        return {q.entry.thread_id for q in self.quarantine if isinstance(q.entry, CopyThread)}

    def threads(self) -> set[str]:
        """Threads with an entry waiting or quarantined."""
        return {e.thread_id for e in self.entries} | self.quarantined_threads()

    def _started(self, entry: Entry) -> None:
        # From now on a change to the same state needs a new entry: this one has
        # begun reading the state and may miss it.
        key = entry.key
        if key is not None and self._keyed.get(key) is entry:
            del self._keyed[key]

    def _restart(self, entry: Entry) -> None:
        key = entry.key
        if key is not None:
            self._keyed.setdefault(key, entry)


async def _judged(
    batch: list[Entry],
    judge: Judge | None,
    is_unreachable: Callable[[BaseException], bool],
    step_timeout: float,
) -> Mapping[str, datetime]:
    """The threads of the batch the primary deleted meanwhile (`judge`'s answer). An
    unreachable primary stops the drain (raised, nothing replayed); any other error
    drops nothing (logged): a thread row's copy still checks on its own (`put_thread`)."""
    if judge is None:
        return {}
    try:
        async with asyncio.timeout(step_timeout):
            return await judge({e.thread_id for e in batch})
    except Exception as exc:
        if is_unreachable(exc):
            raise
        log.warning("reading the primary's deletions failed; the batch is replayed", exc_info=True)
        return {}


def _replayed(batch: list[Entry], gone: Mapping[str, datetime]) -> set[str]:
    """The threads of the batch whose entries were replayed (not judged deleted)."""
    return {e.thread_id for e in batch if e.thread_id not in gone}


async def _purge_deleted(
    primary: Backend, thread_ids: set[str], judge: Judge | None, step_timeout: float
) -> None:
    """After a replay, the threads `judge` finds deleted now: a deletion that finished
    after the look before the replay, or a thread row's copy `put_thread` refused while
    the thread's checkpoints went in. Their checkpoints and writes replayed go, unless
    the thread has a row (made anew under the id since: it keeps them; a creating touch
    replayed makes none, `TouchThread`). An error only logs: the orphans stay."""
    if judge is None or not thread_ids:
        return
    try:
        async with asyncio.timeout(step_timeout):
            late = await judge(thread_ids)
            for thread_id in sorted(late):
                purged = await primary.delete_orphan_checkpoints(thread_id)
                if purged:  # none after this replica's own deletion, replayed
                    log.warning(
                        "thread %s was deleted on the primary at %s, as this replica's "
                        "copy-back of it was replayed: its %d checkpoints copied are deleted",
                        thread_id,
                        late[thread_id].isoformat(),
                        purged,
                    )
    except Exception:
        log.warning("purging the checkpoints of threads deleted meanwhile failed", exc_info=True)


def _runs(batch: list[Entry], indexes: list[int], *, batches: bool) -> list[list[int]]:
    """A lane's entries cut into runs: consecutive checkpoint entries together
    when the primary takes batches, everything else on its own."""
    runs: list[list[int]] = []
    for index in indexes:
        if batches and isinstance(batch[index], PutCheckpoint | PutWrites) and runs:
            last = runs[-1]
            if isinstance(batch[last[-1]], PutCheckpoint | PutWrites):
                last.append(index)
                continue
        runs.append([index])
    return runs


@dataclass
class _Held:
    """An entry of the file held: unread (`body`) or appended behind one (`entry`)."""

    seq: int | None
    body: bytes | None
    entry: Entry | None
    quarantined: bool


def _as_loaded(entry: Entry) -> Entry:
    """An entry loaded from a previous process's file: a copy of a thread's rows replays
    as a late copy (adds what the primary lacks, never replaces a newer row): the dead
    process may have copied it back already, and other replicas moved on since."""
    late = getattr(entry, "late", None)
    return cast("Entry", late()) if callable(late) else entry


@dataclass
class _Outcome:
    """What replaying one entry of a batch came to (neither done nor error: not tried)."""

    done: bool = False
    error: Exception | None = None
    unreachable: bool = False


def _describe(exc: BaseException) -> str:
    return described(exc, 300)


class WriteGate:
    """Writers pass while it is open; `closed()` holds new writers and waits out the rest."""

    def __init__(self) -> None:
        self._open = asyncio.Event()
        self._open.set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._inflight = 0

    def write(self) -> _GateWrite:
        """Hold the gate open for one write."""
        return _GateWrite(self)

    @asynccontextmanager
    async def closed(self) -> AsyncIterator[None]:
        """No write in flight and none starting, for the body's duration."""
        self._open.clear()
        try:
            await self._idle.wait()
            yield
        finally:
            self._open.set()


class _GateWrite:
    """One write through a `WriteGate`: a class, not a generator context: every registry
    and checkpoint write passes the gate, and a generator's context cost about 3 us more
    of this process's CPU each, about 30 a run (issue 15)."""

    __slots__ = ("_gate",)

    def __init__(self, gate: WriteGate) -> None:
        self._gate = gate

    async def __aenter__(self) -> None:
        gate = self._gate
        while not gate._open.is_set():
            await gate._open.wait()
        gate._inflight += 1
        gate._idle.clear()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        gate = self._gate
        gate._inflight -= 1
        if not gate._inflight:
            gate._idle.set()
