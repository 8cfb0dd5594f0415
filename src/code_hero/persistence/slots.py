"""A backend in the fallback order: its slot, opened and probed within a time bound.

A `BackendSlot` remembers what the last open or probe saw. Both are bounded
(`open_timeout`, `probe_timeout`): a server that accepts connections and never
answers makes them fail, not hang. `BoundedCalls` gives up on a call at its
deadline and lets it end in the background.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from code_hero.config import CheckpointerConfig
from code_hero.errors import described
from code_hero.persistence import clock
from code_hero.persistence.backends import Backend, open_backend
from code_hero.persistence.metrics import Metrics
from code_hero.persistence.unreachable import is_disk_full

__all__ = ["BackendSlot", "BoundedCalls", "close_quietly", "open_timeout", "probe_timeout"]

log = logging.getLogger(__name__)
R = TypeVar("R")


def probe_timeout(config: CheckpointerConfig) -> float:
    """How long one probe of a backend may take before it counts as failed."""
    return config.pool_timeout


def open_timeout(config: CheckpointerConfig) -> float:
    """How long opening a backend may take: a connection, the pool's, then set-up."""
    # Three waits, each about pool_timeout on a server that does not answer.
    return 3 * config.pool_timeout


# A wait woken this many seconds past its deadline was held up by this process, not
# by the backend (a timer fires within milliseconds of its time on a free loop).
_STALL = 0.5
# How many such stalls one call is given its time again for: a loop held again and
# again is beyond anything a backend's deadline can judge.
_STALLS_FORGIVEN = 3


class BoundedCalls:
    """Backend calls awaited for a bounded time; those given up on end in the background.

    With `forgive_stalls` (a probe, an open: the calls that judge a backend's health),
    the time is the event loop's: a call the process itself kept from running (the
    loop held past the deadline by CPU-bound work, as a request's huge input once
    held it 25 s) is given its time again, up to `_STALLS_FORGIVEN` times, rather
    than failing a healthy database over to the fallback (an outside audit). Other
    bounded calls (the copy-back's gated steps, the shutdown's grace) keep their
    bound as promised.
    """

    def __init__(self) -> None:
        self._abandoned: set[asyncio.Task[Any]] = set()

    async def run(
        self,
        call: Coroutine[Any, Any, R],
        seconds: float,
        what: str,
        *,
        forgive_stalls: bool = False,
    ) -> R:
        """Await `call` for at most `seconds`; past that, give up on it with TimeoutError.

        The call runs as a task that is cancelled but not awaited when the time
        is up: psycopg answers a cancellation by sending the server a cancel
        request and waiting for the reply, up to 10 s more from a server that
        stopped answering. The task ends in the background; close() ends it.
        """
        task = asyncio.ensure_future(call)
        loop = asyncio.get_running_loop()
        try:
            for _ in range(1 + (_STALLS_FORGIVEN if forgive_stalls else 0)):
                deadline = loop.time() + seconds
                done, _ = await asyncio.wait({task}, timeout=seconds)
                if done or loop.time() - deadline < _STALL:
                    break
                # Woken well past the deadline: this process held the event loop (a
                # request's CPU-bound work), so the call may not have had its turn.
                # The backend is not to blame for that: it gets its time again.
                log.warning(
                    "%s: the event loop was held %.1f s past its deadline; waiting again",
                    what,
                    loop.time() - deadline,
                )
        except BaseException:
            self._abandon(task)
            raise
        if not done:
            self._abandon(task)
            raise TimeoutError(f"{what} timed out after {seconds:g} s")
        return task.result()

    def _abandon(self, task: asyncio.Task[Any]) -> None:
        task.cancel()
        self._abandoned.add(task)
        task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[Any]) -> None:
        self._abandoned.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.debug("a backend call given up on ended with %r", task.exception())

    async def close(self) -> None:
        """End every call given up on."""
        # A second cancellation stops psycopg waiting for a server that may
        # never answer: it drops the connection instead.
        abandoned = list(self._abandoned)
        for task in abandoned:
            task.cancel()
        await asyncio.gather(*abandoned, return_exceptions=True)


@dataclass
class BackendSlot:
    """One backend in the fallback order, with what the last probe saw."""

    role: str
    config: CheckpointerConfig
    backend: Backend | None = None
    healthy: bool = False
    last_error: str | None = None
    # The outage under way is a full disk: the probe, a read, would pass while no write
    # goes in, so it also checks for room (`Backend.probe(room=True)`). Kept until the
    # primary serves again (`switch_to_primary`) or fails for another reason: a probe
    # that found room does not prove the copy-back will (it may stop on the disk).
    disk_full: bool = False
    latency_ms: float | None = None
    checked_at: datetime | None = None
    # The last time it answered (an open or a probe that succeeded).
    answered_at: datetime | None = None
    # Held while the backend opens: concurrent probes share one open, one pool.
    opening: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False, compare=False)
    # What the failed opens of this outage failed with, each warned once (`_failure_class`).
    _open_failures: set[str] = field(default_factory=set, repr=False, compare=False)
    # What the copy-backs of this outage stopped on (a full disk, a read-only file: the
    # probe, a read, succeeds, the copy's writes fail), each told once (`sync_stopped`).
    _sync_failures: set[str] = field(default_factory=set, repr=False, compare=False)

    @property
    def kind(self) -> str:
        """memory, sqlite or postgres."""
        return self.config.kind

    @property
    def label(self) -> str:
        """How metrics name this slot, e.g. "primary:postgres"."""
        return f"{self.role}:{self.kind}"

    def record_failure(self, exc: BaseException) -> None:
        """Mark unhealthy with the reason."""
        self.healthy = False
        self.last_error = described(exc)
        self.disk_full = is_disk_full(exc)
        self.checked_at = clock.now()

    def outage_began(self) -> None:
        """A new outage: its failures are news again."""
        self._open_failures.clear()
        self._sync_failures.clear()

    def sync_stopped(self, exc: BaseException) -> bool:
        """Record that a copy-back into this slot stopped on `exc`; True when that is
        news in this outage (else the probe answering and the copy stopping again are
        two lines per probe for as long as the disk stays full)."""
        failure = _failure_class(exc)
        news = failure not in self._sync_failures
        self._sync_failures.add(failure)
        return news

    def answered(self) -> None:
        """A call on this slot's database succeeded: it answered now (the moment an
        outage is counted from: `FallbackRouter.outage_began`), not only at the last
        probe, up to a health interval older."""
        self.answered_at = clock.now()

    def _record_answer(self, started: float) -> None:
        self.latency_ms = (time.perf_counter() - started) * 1000
        self.checked_at = self.answered_at = clock.now()
        self.healthy = True
        self.last_error = None
        self._open_failures.clear()

    async def open(self, calls: BoundedCalls, *, enforce_references: bool) -> None:
        """Open the backend unless it is open; concurrent callers share one attempt.

        A failure is recorded on the slot (and logged), not raised.
        """
        if self.opening.locked():
            # An open is under way (the health loop's, a caller's probe, a retried
            # initialize()): take its outcome rather than open a second pool.
            async with self.opening:
                return
        async with self.opening:
            if self.backend is None:
                await self._open_now(calls, enforce_references)

    async def _open_now(self, calls: BoundedCalls, enforce_references: bool) -> None:
        backend = open_backend(self.config)
        backend.enforce_references = enforce_references
        started = time.perf_counter()
        try:
            await calls.run(
                _open_or_close(backend),
                open_timeout(self.config),
                f"opening the {self.kind} backend",
                forgive_stalls=True,
            )
        except Exception as exc:
            # Tried again at every probe while it stays down: only the first failure
            # is news (an outage logs one WARNING when it starts, not one per probe),
            # and a failure of a kind not seen yet in this outage (refused, then a
            # password, a migration): one alternating between two kinds warns twice.
            failure = _failure_class(exc)
            if self.last_error is None:
                self._open_failures.clear()
            seen = self._open_failures
            news = failure not in seen and (self.last_error is None or bool(seen))
            seen.add(failure)
            self.record_failure(exc)
            log.log(
                logging.WARNING if news else logging.DEBUG,
                "could not open %s backend %s: %s",
                self.role,
                backend.description,
                exc,
            )
            return
        self.backend = backend
        self._record_answer(started)

    async def probe(self, calls: BoundedCalls, metrics: Metrics) -> None:
        """One bounded round trip to the open backend; raises what the backend raised."""
        assert self.backend is not None
        started = time.perf_counter()
        seconds = probe_timeout(self.config)
        with metrics.timed(self.label, "probe"):
            await calls.run(
                self.backend.probe(room=self.disk_full),
                seconds,
                f"{self.kind} probe",
                forgive_stalls=True,
            )
        was_healthy = self.healthy
        self._record_answer(started)
        if not was_healthy:
            # After a copy-back stopped on a write error, the probe (a read) answering
            # is no news: the recovery's own line says when the slot serves again.
            log.log(
                logging.DEBUG if self._sync_failures else logging.INFO,
                "%s backend answers again (%.1f ms)",
                self.label,
                self.latency_ms,
            )


def _failure_class(exc: BaseException) -> str:
    """An error's type and message, numbers left out (ports, pids, seconds): two
    failures of one class are the same news."""
    return f"{type(exc).__name__}: {re.sub(r'[0-9]+', '#', str(exc))}"


async def _open_or_close(backend: Backend) -> None:
    """Open `backend`; close it again when the open fails or is cancelled."""
    try:
        await backend.open()
    except BaseException:
        await close_quietly(backend)
        raise


async def close_quietly(backend: Backend) -> None:
    """Close `backend`; a failure is logged, not raised."""
    try:
        await backend.close()
    except Exception as exc:  # closing a dead connection must not mask the real error
        log.debug("closing %s failed: %s", backend.description, exc)
