"""The bus across replicas: PostgreSQL LISTEN/NOTIFY as the wake-up.

After a batch of events is committed, one NOTIFY per run names the run, its
thread and the batch's first and last seq. Every replica listens on one
dedicated connection; one that has subscribers for that run or thread (and
does not execute the run itself) reads the new rows once and publishes them
to its in-process subscribers. The rows stay the source of truth: a lost
notification costs latency (the subscriber's gap check reads the log),
never an event. Control messages (a run to claim, a run to cancel) travel
on a second channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from code_hero.persistence.records import EventRecord, Registry
from code_hero.runs.bus import InProcessBus

__all__ = ["CONTROL_CHANNEL", "EVENTS_CHANNEL", "PostgresBus"]

log = logging.getLogger(__name__)
EVENTS_CHANNEL = "code_hero_events"
CONTROL_CHANNEL = "code_hero_control"


class PostgresBus(InProcessBus):
    """In-process delivery plus LISTEN/NOTIFY between replicas."""

    def __init__(
        self,
        dsn: str,
        pool: Callable[[], AsyncConnectionPool[Any]],
        registry: Callable[[], Registry],
        is_local: Callable[[str], bool],
        queue_size: int = 1024,
        available: Callable[[], bool] = lambda: True,
    ) -> None:
        super().__init__(queue_size)
        # False during a database outage: wake-ups stay in this process (no other
        # replica could read the rows anyway) instead of waiting on a dead pool.
        self.available = available
        self.dsn = dsn
        self.pool = pool
        self.registry = registry
        self.is_local = is_local  # the run executes in this process: its events are here already
        self._relayed: dict[str, int] = {}
        self._listener: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._relay_lock = asyncio.Lock()

    async def start(self) -> None:
        self._listener = asyncio.create_task(self._listen(), name="pg-bus-listener")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), 5)

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener

    async def stored(self, events: Sequence[EventRecord], control: str | None = None) -> None:
        batches: dict[str, list[EventRecord]] = {}
        for event in events:
            batches.setdefault(event.run_id, []).append(event)
        notes = [
            (EVENTS_CHANNEL, f"{run_id} {batch[0].thread_id} {batch[0].seq} {batch[-1].seq}")
            for run_id, batch in batches.items()
        ]
        if control is not None:
            notes.append((CONTROL_CHANNEL, control))
        if not self.available():
            if control is not None:
                self._dispatch_control(control)
            return
        await self._notify(notes)

    async def send_control(self, message: str) -> None:
        if not self.available():
            self._dispatch_control(message)
            return
        try:
            await self._notify([(CONTROL_CHANNEL, message)])
        except Exception as exc:  # the lease/poll paths still deliver, later
            log.warning("control message %r not sent: %s", message, exc)
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
                conn = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True)
                async with conn:
                    await conn.execute(f"LISTEN {EVENTS_CHANNEL}")
                    await conn.execute(f"LISTEN {CONTROL_CHANNEL}")
                    if self._ready.is_set():  # a reconnect: whatever was missed is in the log
                        self.poke_all()
                        self._dispatch_control("runs")
                    self._ready.set()
                    delay = 0.2
                    async for note in conn.notifies():
                        if note.channel == CONTROL_CHANNEL:
                            self._dispatch_control(note.payload)
                        else:
                            self._on_events(note.payload)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Info, once per loss: a database outage logs its own warning lines.
                (log.info if delay == 0.2 else log.debug)(
                    "event listener lost its connection (%s); reconnecting", exc
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

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
        asyncio.get_running_loop().create_task(self._relay(run_id, first_seq, last_seq))

    async def _relay(self, run_id: str, first: int, last: int) -> None:
        async with self._relay_lock:
            after = self._relayed.get(run_id, first - 1)
            if after >= last:
                return
            try:
                events = await self.registry().list_events(run_id, after_seq=after)
            except Exception as exc:
                log.warning("relaying events of run %s failed: %s", run_id, exc)
                return
            for event in events:
                self.publish(event)
                self._relayed[run_id] = event.seq
            if (
                events
                and events[-1].type == "status"
                and str(events[-1].payload.get("status"))
                in ("SUCCESS", "ERROR", "INTERRUPTED", "CANCELLED")
            ):
                self._relayed.pop(run_id, None)
