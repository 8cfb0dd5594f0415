"""The bus across replicas: PostgreSQL LISTEN/NOTIFY as the wake-up.

After a batch of events is committed, one NOTIFY per run names the run, its
thread and the batch's first and last seq. Every replica listens on one
dedicated connection; one that has subscribers for that run or thread (and
does not execute the run itself) reads the new rows once and publishes them
to its in-process subscribers. The rows stay the source of truth: a lost
notification costs latency (the subscriber's gap check reads the log),
never an event. Control messages (a run to claim, a run to cancel) travel
on a second channel.

A batch that holds a run's final event also sends that event, whole, on a third
channel, in the same statement: the deletion of the run's thread may take its rows
before another replica's relay reads them (the deletion waits for the end to be
recorded, not relayed). A relay whose read finds the rows gone publishes the end as
notified, and a follower that finds the run gone asks the bus for it (`end_of`):
it sees CANCELLED, not NOT_FOUND. An end too large for a notification (a long error)
goes with its error cut short.

Each run has at most one relay task at a time, which reads on until it has
published the highest seq notified meanwhile: a run's batches go out in
order, and runs do not wait for each other (at most `max_relay_reads` read
at once: the reads share the pool with the runs). What the bus remembers of a run
is dropped when its final event was relayed or when no subscriber wants it
any more. The listener connection has TCP keepalives (a half-open connection
fails within about `keepalives_idle + keepalives_interval * keepalives_count`
seconds) and is named `code-hero-listener` in `pg_stat_activity`; after a
reconnect every subscriber re-reads the log.

A replica that no other replica listens to sends no notifications: nobody but
itself would hear them, and its own subscribers and claimers have its events and
control messages in-process already. Each NOTIFY was a transaction of its own
with a commit to flush, about three a run, and a wake-up of its own listener
(issue 15). Whether others listen is looked up every `presence_interval` seconds
(their LISTEN connections, by name, in `pg_stat_activity`), and a replica whose
listener (re)connects says "hello" on the control channel, which tells the others
at once. Until a look has found our own listener and nobody else's, whenever a
look fails, and from the moment the listener is lost until the next look after its
reconnect (a hello may have gone unheard meanwhile), it notifies. A replica that
turns its notifications back on (a hello heard, another seen, its listener lost)
sends a poke: the newcomer's subscribers missed what it stored between the hello's
commit and then.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from code_hero.persistence.records import EventRecord, Registry
from code_hero.persistence.unreachable import BackgroundLog
from code_hero.runs.bus import POKE, InProcessBus, Subscription
from code_hero.runs.events import terminal_status

__all__ = ["CONTROL_CHANNEL", "ENDS_CHANNEL", "EVENTS_CHANNEL", "LISTENER_NAME", "PostgresBus"]

log = logging.getLogger(__name__)
EVENTS_CHANNEL = "code_hero_events"
CONTROL_CHANNEL = "code_hero_control"
ENDS_CHANNEL = "code_hero_ends"  # a run's final event, whole (JSON)
# PostgreSQL refuses a notification payload of 8000 bytes or more.
_MAX_END_NOTE = 7000
LISTENER_NAME = "code-hero-listener"  # application_name of the LISTEN connection
HELLO = "hello"  # control message of a replica whose listener (re)connected: "hello ID"
# Listeners on this database (by name): how many are other replicas', and whether ours
# is seen. Ours unseen (a proxy that renames connections or hides them) makes the
# look blind: it cannot tell that nobody else listens.
_LISTENERS = (
    "SELECT count(*) FILTER (WHERE pid <> %s) AS n, coalesce(bool_or(pid = %s), false) AS ours "
    "FROM pg_stat_activity WHERE datname = current_database() AND application_name = %s"
)
# libpq TCP keepalives of the LISTEN connection: silent for 10 s, probed every
# 5 s, given up after 3 unanswered probes (about 25 s for a half-open link).
LISTENER_KEEPALIVES: dict[str, Any] = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
}


@dataclass(eq=False)
class _Relay:
    """What this process relays of one run executing elsewhere."""

    thread_id: str
    relayed: int  # the last seq published here
    wanted: int  # the highest seq a notification named
    task: asyncio.Task[None] | None = None
    ended: bool = False  # the final event was published
    end: EventRecord | None = None  # the final event as notified, rows or not


class PostgresBus(InProcessBus):
    """In-process delivery plus LISTEN/NOTIFY between replicas."""

    relays_ends = True  # another replica's end comes on code_hero_ends

    def __init__(
        self,
        dsn: str,
        pool: Callable[[], AsyncConnectionPool[Any]],
        registry: Callable[[], Registry],
        is_local: Callable[[str], bool],
        queue_size: int = 1024,
        available: Callable[[], bool] = lambda: True,
        max_relay_reads: int = 4,
        presence_interval: float = 2.0,
        level_of: Callable[[BaseException], int] = lambda exc: logging.WARNING,
    ) -> None:
        super().__init__(queue_size)
        # A failed notification, poke or relay: DEBUG in an outage, WARNING (once a
        # minute) otherwise, a busy pool included (the router's `background_level`).
        self._failures = BackgroundLog(log, level_of)
        self.presence_interval = presence_interval
        # False once a look found no other replica listening (and none said hello since).
        self.others_listen = True
        self._hellos = 0  # hellos heard from other replicas
        self.looks = 0  # looks for other replicas' listeners done (tests)
        self._listener_pid: int | None = None  # our LISTEN connection's backend
        self._name = uuid.uuid4().hex  # in our hello: our listener hears it too
        self._presence: asyncio.Task[None] | None = None
        self._pokes: set[asyncio.Task[None]] = set()  # kept: a task is only weakly held
        self._closing = False
        # False during a database outage: wake-ups stay in this process (no other
        # replica could read the rows anyway) instead of waiting on a dead pool.
        self.available = available
        self.dsn = dsn
        self.pool = pool
        self.registry = registry
        self.is_local = is_local  # the run executes in this process: its events are here already
        self._relays: dict[str, _Relay] = {}
        self._relay_tasks: set[asyncio.Task[None]] = set()  # kept: a task is only weakly held
        self._relay_reads = asyncio.Semaphore(max_relay_reads)
        self._listener: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        # Set at the listener's first connection, or its first failure: `start` waits
        # for one of the two (never for an outage to end: a start-up in one waited 5 s).
        self._settled = asyncio.Event()
        self._started = False  # `start` went on: a later first connection pokes
        self.listener_failures = 0  # connections lost or refused (tests)

    async def start(self) -> None:
        self._listener = asyncio.create_task(self._listen(), name="pg-bus-listener")
        self._presence = asyncio.create_task(self._watch_presence(), name="pg-bus-presence")
        try:
            with contextlib.suppress(TimeoutError):
                # Not wait_for: on Python 3.11 it drops a cancel (a start-up stopped)
                # that comes as the listener is ready, and start-up went on. Until it
                # listens, or its first try failed (a database down: the gateway serves
                # from its fallback meanwhile), or 5 s (a database that does not answer).
                async with asyncio.timeout(5):
                    await self._settled.wait()
        finally:
            self._started = True

    async def close(self) -> None:
        # Marked first: the presence loop ends at its next turn even if an await drops
        # the cancel (Python 3.11's wait_for, in psycopg_pool's getconn, returns the
        # connection it was handed and drops a cancel that came with it), and no poke
        # starts after the pokes below were gathered.
        self._closing = True
        tasks = [
            *self._relay_tasks,
            *self._pokes,
            *(t for t in (self._listener, self._presence) if t),
        ]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def unsubscribe(self, subscription: Subscription) -> None:
        super().unsubscribe(subscription)
        if subscription.run_id is not None:
            self._forget(subscription.run_id)
        else:
            for run_id in [
                r for r, x in self._relays.items() if x.thread_id == subscription.thread_id
            ]:
                self._forget(run_id)

    def internal_sizes(self) -> dict[str, int]:
        return {
            **super().internal_sizes(),
            "pgbus.relays": len(self._relays),
            "pgbus.relay_tasks": len(self._relay_tasks),
        }

    async def stored(self, events: Sequence[EventRecord], control: str | None = None) -> None:
        batches: dict[str, list[EventRecord]] = {}
        for event in events:
            batches.setdefault(event.run_id, []).append(event)
        notes = [
            (EVENTS_CHANNEL, f"{run_id} {batch[0].thread_id} {batch[0].seq} {batch[-1].seq}")
            for run_id, batch in batches.items()
        ]
        for event in events:
            if terminal_status(event) is not None and (end := _end_note(event)) is not None:
                notes.append((ENDS_CHANNEL, end))
        if control is not None:
            notes.append((CONTROL_CHANNEL, control))
        if not (self.available() and self.others_listen):
            if control is not None:
                self._dispatch_control(control)
            return
        try:
            await self._notify(notes)
        except Exception as exc:  # committed already: other replicas catch up from the log
            self._failures.failed(exc, "event notification failed: %s", exc)
            if control is not None:
                self._dispatch_control(control)

    async def send_control(self, message: str) -> None:
        if not (self.available() and self.others_listen):
            self._dispatch_control(message)
            return
        try:
            await self._notify([(CONTROL_CHANNEL, message)])
        except Exception as exc:  # the lease/poll paths still deliver, later
            self._failures.failed(exc, "control message %r not sent: %s", message, exc)
            self._dispatch_control(message)

    async def _notify(self, notes: Sequence[tuple[str, str]]) -> None:
        """Every (channel, payload) in one statement: one round trip."""
        if not notes:
            return
        sql = "SELECT " + ", ".join("pg_notify(%s, %s)" for _ in notes)
        params: list[str] = []
        for channel, payload in notes:
            params += [channel, payload]
        async with self.pool().connection() as conn:
            await conn.execute(sql, params)

    async def _listen(self) -> None:
        delay = 0.2
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self.dsn,
                    autocommit=True,
                    application_name=LISTENER_NAME,
                    **LISTENER_KEEPALIVES,
                )
                async with conn:
                    await conn.execute(f"LISTEN {EVENTS_CHANNEL}")
                    await conn.execute(f"LISTEN {CONTROL_CHANNEL}")
                    await conn.execute(f"LISTEN {ENDS_CHANNEL}")
                    self._listener_pid = conn.info.backend_pid
                    # A hello sent while we were not listening went unheard: notify
                    # until a look with this connection finds nobody else.
                    self._notify_again()
                    # Listening now: the replicas that skip notifications for want of
                    # listeners send them again from this hello on.
                    await conn.execute(
                        "SELECT pg_notify(%s, %s)", (CONTROL_CHANNEL, f"{HELLO} {self._name}")
                    )
                    if self._ready.is_set() or self._started:
                        # A reconnect, or a first connection `start` did not wait for:
                        # whatever was missed is in the log. Subscribers re-read;
                        # claimers claim, and finish runs whose cancel (or an outage's
                        # copied-back cancel) they may have missed.
                        self._dispatch_control(POKE)
                    self._ready.set()
                    self._settled.set()
                    delay = 0.2
                    async for note in conn.notifies():
                        if note.channel == CONTROL_CHANNEL and note.payload.startswith(HELLO):
                            if note.payload != f"{HELLO} {self._name}":
                                self._hellos += 1
                                self._notify_again()
                        elif note.channel == CONTROL_CHANNEL:
                            self._dispatch_control(note.payload)
                        elif note.channel == ENDS_CHANNEL:
                            self._on_end(note.payload)
                        else:
                            self._on_events(note.payload)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._listener_pid = None
                self.listener_failures += 1
                self._settled.set()  # `start` goes on: the first connection will poke
                self._notify_again()  # see the reconnect above
                # Info, once per loss: a database outage logs its own warning lines.
                (log.info if delay == 0.2 else log.debug)(
                    "event listener lost its connection (%s); reconnecting", exc
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _watch_presence(self) -> None:
        """Look every `presence_interval` seconds whether another replica listens."""
        while not self._closing:
            hellos, pid = self._hellos, self._listener_pid
            alone = False
            if pid is not None and self.available():
                try:
                    async with self.pool().connection() as conn:
                        cur = await conn.execute(_LISTENERS, (pid, pid, LISTENER_NAME))
                        row = await cur.fetchone()
                    alone = row is not None and _alone(row)
                except Exception as exc:  # not known: notify, as without the look
                    log.debug("looking for other replicas' listeners failed: %s", exc)
            # A hello heard during the look came from a replica it may have missed; a
            # listener that reconnected during it may have missed a hello.
            if alone and self._hellos == hellos and self._listener_pid == pid:
                self.others_listen = False
            else:  # one whose hello we missed (a half-open listener): a poke for it
                self._notify_again()
            self.looks += 1
            await asyncio.sleep(self.presence_interval)

    def _notify_again(self) -> None:
        """Notify from now on; when we did not, send a poke. Another replica listens, or
        may: what we stored unnotified since its hello's commit (the poke it sent its
        own subscribers on reconnecting came before) is missing from its subscribers'
        queues. They re-read the log, ours too (a poke names nobody); it happens once
        per replica started or listener reconnected. Through the pool: the listener
        connection is busy waiting for notifications."""
        if self.others_listen:
            return
        self.others_listen = True
        if not self.available() or self._closing:  # an outage: nobody could read the rows
            return

        async def send() -> None:
            try:
                await self._notify([(CONTROL_CHANNEL, POKE)])
            except Exception as exc:  # its run subscribers re-read at their recheck
                self._failures.failed(
                    exc, "poke for the replicas we did not notify not sent: %s", exc
                )

        task = asyncio.get_running_loop().create_task(send(), name="pg-bus-poke")
        self._pokes.add(task)
        task.add_done_callback(self._pokes.discard)

    def _on_events(self, payload: str) -> None:
        try:  # "RUN THREAD FIRST LAST": the thread id between the two ends, spaces and all
            run_id, rest = payload.split(" ", 1)
            thread_id, first, last = rest.rsplit(" ", 2)
            first_seq, last_seq = int(first), int(last)
        except ValueError:
            log.warning("ignoring a malformed event notification %r", payload)
            return
        if self.is_local(run_id) or not self.has_subscribers(run_id, thread_id):
            return
        self._relay_later(run_id, thread_id, first_seq, last_seq)

    def _on_end(self, payload: str) -> None:
        try:
            end = _end_of(payload)
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring a malformed end notification %r", payload[:200])
            return
        if self.is_local(end.run_id) or not self.has_subscribers(end.run_id, end.thread_id):
            return
        self._relay_later(end.run_id, end.thread_id, end.seq, end.seq, end=end)

    def end_of(self, run_id: str) -> EventRecord | None:
        relay = self._relays.get(run_id)
        return None if relay is None else relay.end

    def _relay_later(
        self, run_id: str, thread_id: str, first: int, last: int, end: EventRecord | None = None
    ) -> None:
        """Relay a notified batch: by the run's relay task, started unless it runs."""
        relay = self._relays.get(run_id)
        if relay is None:
            relay = self._relays[run_id] = _Relay(thread_id, relayed=first - 1, wanted=last)
        relay.wanted = max(relay.wanted, last)
        relay.end = relay.end or end
        if relay.task is None:
            task = asyncio.get_running_loop().create_task(
                self._relay(run_id, relay), name=f"pg-bus-relay-{run_id}"
            )
            relay.task = task
            self._relay_tasks.add(task)
            task.add_done_callback(self._relay_tasks.discard)

    async def _relay(self, run_id: str, relay: _Relay) -> None:
        """Publish the run's stored events up to the highest seq notified, in order."""
        try:
            while (
                relay.relayed < relay.wanted
                and not relay.ended
                and self.has_subscribers(run_id, relay.thread_id)
            ):
                try:
                    async with self._relay_reads:
                        events = await self.registry().list_events(run_id, after_seq=relay.relayed)
                except Exception as exc:  # subscribers catch up from the log
                    self._failures.failed(exc, "relaying events of run %s failed: %s", run_id, exc)
                    return
                if not events:
                    if relay.end is not None and relay.end.seq > relay.relayed:
                        # Its rows went (its thread deleted) before this read: the end
                        # as notified, after a gap a follower cannot fill any more.
                        self.publish(relay.end)
                        relay.relayed, relay.ended = relay.end.seq, True
                    return
                for event in events:
                    self.publish(event)
                    relay.relayed = event.seq
                    relay.ended = relay.ended or terminal_status(event) is not None
        finally:
            relay.task = None
            self._forget(run_id)

    def _forget(self, run_id: str) -> None:
        """Drop what is kept of a run that ended or that no subscriber wants any more."""
        relay = self._relays.get(run_id)
        if (
            relay is not None
            and relay.task is None
            and (relay.ended or not self.has_subscribers(run_id, relay.thread_id))
        ):
            del self._relays[run_id]


def _end_note(event: EventRecord) -> str | None:
    """A final event as an `ENDS_CHANNEL` payload, its error cut short to fit one (None:
    it fits none: other replicas' followers of a deleted run may end NOT_FOUND)."""
    payload = dict(event.payload)
    while True:
        text = json.dumps(
            {
                "run_id": event.run_id,
                "thread_id": event.thread_id,
                "seq": event.seq,
                "type": event.type,
                "payload": payload,
                "at": event.at.isoformat(),
            },
            separators=(",", ":"),
        )
        if len(text.encode()) < _MAX_END_NOTE:
            return text
        error = payload.get("error")
        if not isinstance(error, str) or len(error) < 2:
            return None
        payload["error"] = error[: len(error) // 2 - 1] + "…"


def _end_of(payload: str) -> EventRecord:
    """The final event an `ENDS_CHANNEL` payload carries."""
    note = json.loads(payload)
    return EventRecord(
        str(note["run_id"]),
        str(note["thread_id"]),
        int(note["seq"]),
        str(note["type"]),
        dict(note["payload"]),
        datetime.fromisoformat(str(note["at"])),
    )


def _alone(row: dict[str, Any]) -> bool:
    """Our listener seen and no other (a row read with the pool's `dict_row`)."""
    return bool(row["ours"]) and not row["n"]
