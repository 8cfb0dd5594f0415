"""The event bus: live run events to subscribers, never slowing the run.

Each subscription has a bounded queue. A subscriber that falls behind is
marked `overflowed` and its further events are dropped; it catches up from
the stored events (the event log is the source of truth, the bus only a
wake-up with the data attached).
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from code_hero.persistence.records import EventRecord

__all__ = ["POKE", "ControlHandler", "EventBus", "InProcessBus", "Subscription"]

log = logging.getLogger(__name__)
DEFAULT_QUEUE = 1024
ControlHandler = Callable[[str], None]
# Control message: every subscriber re-reads the stored events (sent after an
# outage's writes were copied into the database, which notified no one).
POKE = "poke"


@dataclass(eq=False)
class Subscription:
    """One subscriber's queue of live events, for one run or one thread."""

    run_id: str | None
    thread_id: str | None
    queue: asyncio.Queue[EventRecord] = field(default_factory=lambda: asyncio.Queue(DEFAULT_QUEUE))
    overflowed: bool = False
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)

    def offer(self, event: EventRecord) -> None:
        """Queue an event without waiting; on a full queue mark the overflow instead."""
        if self.overflowed:
            self.wakeup.set()
            return
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.overflowed = True
        self.wakeup.set()

    def poke(self) -> None:
        """Make the subscriber catch up from the stored events."""
        self.overflowed = True
        self.wakeup.set()


class EventBus(Protocol):
    """Where event writers publish and subscribers listen."""

    # Whether ends executed elsewhere come by notification (`end_of`): a follower that
    # finds its run deleted waits for one once before it says so.
    relays_ends: bool

    def subscribe(self, *, run_id: str | None = None, thread_id: str | None = None) -> Subscription:
        """A new subscription to one run's or one thread's events."""

    def unsubscribe(self, subscription: Subscription) -> None:
        """Stop delivering to a subscription."""

    def publish(self, event: EventRecord) -> None:
        """Deliver an event to its run's and thread's subscribers, without waiting."""

    async def stored(self, events: Sequence[EventRecord], control: str | None = None) -> None:
        """Events were committed: tell other processes (a no-op within one process),
        with a control message in the same round trip when given. Never raises: what
        cannot be sent is logged, and the other processes catch up from the log."""

    def on_control(self, handler: ControlHandler) -> None:
        """Call `handler` with every control message ("runs", "cancel RUN_ID")."""

    def end_of(self, run_id: str) -> EventRecord | None:
        """The final event of a run executing elsewhere, heard of and maybe not yet
        delivered: its rows may be gone already (its thread deleted) when it is read."""

    async def send_control(self, message: str) -> None:
        """Send a control message to every executor sharing the database (this one too)."""


class InProcessBus:
    """The bus of one process: subscribers keyed by run and by thread."""

    relays_ends = False  # every end is published here as it is recorded

    def __init__(self, queue_size: int = DEFAULT_QUEUE) -> None:
        self.queue_size = queue_size
        self._by_run: dict[str, set[Subscription]] = defaultdict(set)
        self._by_thread: dict[str, set[Subscription]] = defaultdict(set)
        self._control_handlers: list[ControlHandler] = []

    def subscribe(self, *, run_id: str | None = None, thread_id: str | None = None) -> Subscription:
        if (run_id is None) == (thread_id is None):
            raise ValueError("subscribe to exactly one of run_id or thread_id")
        sub = Subscription(run_id, thread_id, asyncio.Queue(self.queue_size))
        if run_id is not None:
            self._by_run[run_id].add(sub)
        else:
            assert thread_id is not None
            self._by_thread[thread_id].add(sub)
        return sub

    def unsubscribe(self, subscription: Subscription) -> None:
        for table, key in (
            (self._by_run, subscription.run_id),
            (self._by_thread, subscription.thread_id),
        ):
            if key is not None and key in table:
                table[key].discard(subscription)
                if not table[key]:
                    del table[key]

    def publish(self, event: EventRecord) -> None:
        for sub in tuple(self._by_run.get(event.run_id, ())):
            sub.offer(event)
        for sub in tuple(self._by_thread.get(event.thread_id, ())):
            sub.offer(event)

    async def stored(self, events: Sequence[EventRecord], control: str | None = None) -> None:
        if control is not None:
            self._dispatch_control(control)

    def on_control(self, handler: ControlHandler) -> None:
        self._control_handlers.append(handler)

    async def send_control(self, message: str) -> None:
        self._dispatch_control(message)

    def end_of(self, run_id: str) -> EventRecord | None:
        return None  # within one process every end is published as it is recorded

    def _dispatch_control(self, message: str) -> None:
        if message == POKE:  # stored events arrived without their notifications
            self.poke_all()
        for handler in list(self._control_handlers):
            try:
                handler(message)
            except Exception:  # one bad handler must not stop the others
                log.exception("control handler failed on %r", message)

    def has_subscribers(self, run_id: str, thread_id: str) -> bool:
        """True when some local subscription wants this run's events."""
        return run_id in self._by_run or thread_id in self._by_thread

    def poke_all(self) -> None:
        """Make every subscriber catch up from the stored events."""
        for table in (self._by_run, self._by_thread):
            for subs in table.values():
                for sub in subs:
                    sub.poke()

    async def start(self) -> None:
        """Begin delivering (nothing to connect within one process)."""

    async def close(self) -> None:
        """Stop delivering."""

    def internal_sizes(self) -> dict[str, int]:
        """Keys of each subscriber table (back to 0 once every subscriber has left)."""
        return {"bus.runs": len(self._by_run), "bus.threads": len(self._by_thread)}

    @property
    def subscriber_count(self) -> int:
        """How many subscriptions are open."""
        return sum(len(s) for s in self._by_run.values()) + sum(
            len(s) for s in self._by_thread.values()
        )
