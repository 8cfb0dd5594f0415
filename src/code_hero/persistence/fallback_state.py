"""The fallback router's state: its slots, which one serves, what an outage leaves.

`RouterState` is the base of `FallbackRouter`: the backend slots in order and the
active one, the outage journal and its write gate, the threads a fallback holds
during an outage, the times an outage is judged by (`outage_began`,
`lease_clock`), and the errors for a call that needs the unreachable primary
(`unavailable`) or finds its pool busy (`busy`). Failing over is in
`fallback_failover.py`, deleting threads in `fallback_deletes.py`; writes, reads
and the switch back in `fallback.py`.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Literal

from code_hero.errors import BackendUnavailableError
from code_hero.persistence.coalesce import Coalescer
from code_hero.persistence.journal import Journal, WriteGate
from code_hero.persistence.metrics import Metrics
from code_hero.persistence.records import Registry
from code_hero.persistence.slots import BackendSlot, BoundedCalls
from code_hero.persistence.stalls import StallWatch
from code_hero.persistence.unreachable import is_backend_error

if TYPE_CHECKING:
    from code_hero.persistence.outagefile import OutageFile

__all__ = ["PoolBusyError", "PrimaryUnreachableError", "RouterState", "Tables"]

# What a check for the primary's tables found (`RouterFailover._lacks_tables`).
Tables = Literal["there", "missing", "unreachable"]

# The router's lines, wherever its code lives, come from one logger (`fallback`'s),
# the outage's two among them: one when it begins (`RouterFailover.fail`), one when
# it ends (`FallbackRouter.switch_to_primary`).
log = logging.getLogger("code_hero.persistence.fallback")
BUSY_RETRY_AFTER = 1  # seconds: a pool frees a connection as soon as a call ends
_KIND_NAMES = {"postgres": "PostgreSQL", "sqlite": "SQLite", "memory": "in-memory"}


class PoolBusyError(BackendUnavailableError):
    """Every connection of the pool is in use while the database answers: busy, not down."""


class PrimaryUnreachableError(BackendUnavailableError):
    """The call needs data only the primary holds, and the primary cannot be reached."""


class RouterState:
    """The slots, which one serves, the threads an outage leaves to a fallback, and the
    errors that refuse a call (part of `FallbackRouter`, which tells the threads apart)."""

    def __init__(
        self,
        slots: Sequence[BackendSlot],
        metrics: Metrics,
        *,
        journal_limit: int = 100_000,
        probe_interval: float = 5.0,
        store: OutageFile | None = None,
        adopted: bool = False,
    ) -> None:
        self.slots = list(slots)
        # A dead replica's file this router copies into the primary (`adoption.py`): it
        # serves nobody, so its lines say what it adopts, not what it serves from.
        self.adopted = adopted
        # The durable fallback's journal file (`outagefile.py`), attached at `open`.
        self.store = store
        # Giving an emptied fallback file's disk back after a switch back (`give_back_space`).
        self.giving_back: asyncio.Task[None] | None = None
        # The fallback file's error that paused the last copy-back, logged once.
        self.fallback_fault: str | None = None
        # The fallback's files not emptied after the last switch back (`tidy_fallback`).
        self.untidy = False
        self.probe_interval = probe_interval
        self.metrics = metrics
        self.active: int | None = None
        self.journal = Journal(journal_limit)
        self.gate = WriteGate()
        self.fallback_threads: set[str] = set()
        self.local_threads: set[str] = set()
        # Kept threads a deletion marked in the outage whose mark the primary refused at
        # the switch back: its row there reads unmarked (`mark_waits`).
        self.uncarried_marks: set[str] = set()
        self.copied_seqs: dict[str, int] = {}  # run id -> last event seq in the primary
        self.degraded_since: datetime | None = None
        # The last outage this process saw: the primary's last answer before it, and
        # when the primary served again (see `lease_clock`).
        self.last_outage: tuple[datetime, datetime] | None = None
        self._outage_began: datetime | None = None
        self.on_recovered: list[Callable[[], None]] = []
        self._touched_at: OrderedDict[str, float] = OrderedDict()
        # Touches of one registry and kind (create or not) go together.
        self._touches: Coalescer[tuple[Registry, bool], tuple[str, str | None]] = Coalescer(
            _touch_threads, shared=is_backend_error
        )
        self._recover_lock = asyncio.Lock()
        self._confirming: dict[str, asyncio.Future[bool]] = {}  # role -> its probe in flight
        # role -> its check for missing tables in flight (`RouterFailover._lacks_tables`)
        self._checking_tables: dict[str, asyncio.Future[Tables]] = {}
        # Opens and probes given up on at their deadline end in the background here.
        self.calls = BoundedCalls()
        self.stalls = StallWatch()

    @property
    def file_name(self) -> str:
        """The journal file's path, for log lines ("?" before one is attached)."""
        return "?" if self.store is None else str(self.store.path)

    @property
    def primary(self) -> BackendSlot:
        """The configured backend."""
        return self.slots[0]

    @property
    def active_slot(self) -> BackendSlot | None:
        """The slot serving reads and writes now (None: no checkpointing)."""
        return None if self.active is None else self.slots[self.active]

    @property
    def serving(self) -> bool:
        """True while the primary serves reads and writes."""
        return self.active == 0 and self.primary.backend is not None

    @property
    def pending_sync(self) -> int:
        """Writes held by a fallback, not yet copied to the primary."""
        return len(self.journal)

    @property
    def quarantined(self) -> int:
        """Writes the primary refused when they were copied, and entries of the journal's
        file this process cannot read (yet); kept and retried."""
        return len(self.journal.quarantine) + self.journal.held_count

    @property
    def retry_after(self) -> int:
        """Seconds a client should wait before asking again: the next probe."""
        return max(1, math.ceil(self.probe_interval))

    @property
    def outage_state(self) -> str:
        """What clients are told the primary is while it does not serve."""
        # A full disk is no unreachable server: the administrator who reads the message
        # frees space rather than looking for a network fault or a stopped server.
        return "out of disk space" if self.primary.disk_full else "unreachable"

    def unavailable(self, what: str = "this request") -> PrimaryUnreachableError:
        """The error for a call that needs the unreachable primary."""
        return PrimaryUnreachableError(
            f"the {_KIND_NAMES.get(self.primary.kind, self.primary.kind)} database is "
            f"{self.outage_state} and {what} needs data only it holds; "
            f"retry in {self.retry_after} s",
            self.retry_after,
        )

    @property
    def outage_began(self) -> datetime | None:
        """When the outage under way began, as `lease_clock` counts it (the primary's
        last answer before it); None while the primary serves."""
        return None if self.serving else self._outage_began

    def stalled_at(self, moment: datetime) -> bool:
        """Whether this process was stalled (its loop did not run: SIGSTOP, a long
        collection) at `moment`, in a stall that began before it found the primary
        unreachable in the outage under way (`StallWatch`)."""
        detected = None if self.serving else self.degraded_since
        return detected is not None and self.stalls.covers(moment, began_before=detected)

    def lease_clock(self, now: datetime, lease: timedelta) -> datetime:
        """The time to judge leases lapsed by: for one lease after an outage, its start.

        A lease that lapsed while the primary was unreachable may be held by
        another replica that ran on through the outage on its own fallback and
        has not copied its runs back yet: taking the run over would run it twice.
        Such leases count as lapsed only once that replica has had time to come
        back and sync: the outage's length again (psycopg's pool retries with a
        doubling delay, so a replica may see the database back up to that late)
        and a lease. Those that lapsed before the outage count at once.
        """
        if self.last_outage is None:
            return now
        began, ended = self.last_outage
        return min(now, began) if now < ended + (ended - began) + lease else now

    def note_local(self, thread_id: str) -> None:
        """The thread was born in the outage: the fallback holds all of it."""
        if thread_id not in self.local_threads:
            self.local_threads.add(thread_id)
            if self.store is not None:
                self.journal._stored("a thread", "note_thread", thread_id, "local")

    def note_fallback(self, thread_id: str) -> None:
        """A run went on writing the thread's checkpoints to the fallback."""
        if thread_id not in self.fallback_threads:
            self.fallback_threads.add(thread_id)
            if self.store is not None:
                self.journal._stored("a thread", "note_thread", thread_id, "fallback")

    def drop_noted(self, thread_id: str) -> None:
        """The fallback holds the thread no longer (deleted, or its copies forgotten)."""
        self.fallback_threads.discard(thread_id)
        self.local_threads.discard(thread_id)
        if self.store is not None:
            self.journal._stored("a thread", "forget_thread", thread_id)

    def save_outage(self) -> None:
        """Keep when the outage under way began (None: none) in the journal's file, and
        only the threads it holds now: what a restarted process resumes it with."""
        if self.store is None:
            return
        outage = None if self.serving else (self.degraded_since, self._outage_began)
        kept = self.local_threads | self.fallback_threads

        self.journal._stored("the outage's state", "save_outage", outage, kept)

    def is_local(self, thread_id: str) -> bool:
        """True when the fallback holds all of the thread (it was born during the outage)."""
        return thread_id in self.local_threads

    def busy(self, what: str = "this request") -> PoolBusyError:
        """The error for a call that waited for a connection while the database answers."""
        kind = _KIND_NAMES.get(self.primary.kind, self.primary.kind)
        return PoolBusyError(
            f"the server is busy: every {kind} connection is in use, so {what} could not "
            f"get one in time; retry in {BUSY_RETRY_AFTER} s",
            BUSY_RETRY_AFTER,
        )


async def _touch_threads(key: tuple[Registry, bool], touches: list[tuple[str, str | None]]) -> None:
    registry, create = key
    await registry.touch_threads(dict(touches), create=create)
