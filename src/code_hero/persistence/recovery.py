"""Sync back: what a fallback accepted during an outage, copied into the primary.

`sync_back` drains the outage journal into the primary while writes go on,
until little is left; then, with the write gate closed and no write in
flight, drains the rest and has the router serve from the primary again: no
write can land in the fallback after the last drain. `retry_quarantined`
replays, once the primary serves, the entries it refused before. The router
calls both (`FallbackRouter.recover`, `FallbackRouter.check`).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from datetime import datetime
from typing import TYPE_CHECKING

from code_hero.config import CheckpointerConfig
from code_hero.persistence.backends import Backend
from code_hero.persistence.tombstones import deleted_copies, judge_for
from code_hero.persistence.unreachable import is_backend_error

if TYPE_CHECKING:
    from code_hero.persistence.fallback import FallbackRouter

__all__ = [
    "SMALL_REMAINDER",
    "forget_before_read",
    "forget_if_deleted",
    "retry_quarantined",
    "step_timeout",
    "sync_back",
    "sync_concurrency",
]

log = logging.getLogger(__name__)

# The recovery holds writers only for the last few entries.
SMALL_REMAINDER = 64
# How often a recovery drains a saturated pool (busy, not down) before the next check.
_BUSY_TRIES = 3
# How often a check tries the gated part on a slow primary, and the most step bounds
# it holds writers at the gate in one go: the next check tries again (review).
_GATED_TRIES = 2


def sync_concurrency(config: CheckpointerConfig) -> int:
    """How many threads the recovery replays into the primary at once."""
    # One lane per saver instance and pooled connection: until the switch the
    # recovery is nearly alone on the primary's pool, and each replay holds a
    # connection for one round trip, so no lane waits anywhere near pool_timeout.
    return max(1, min(config.saver_instances, config.pool_max_size))


def step_timeout(config: CheckpointerConfig) -> float:
    """The bound of one step of the recovery on the primary: a primary that hangs
    mid-sync must not hold the write gate shut, nor the journal's step lock."""
    return max(2 * config.pool_timeout, 1.0)


def _sync_source(router: FallbackRouter) -> Backend | None:
    return next((s.backend for s in router.slots[1:] if s.backend is not None), None)


async def _drain(
    router: FallbackRouter,
    primary: Backend,
    source: Backend | None,
    *,
    until: int,
    step: float | None = None,
) -> None:
    """Drain the journal into `primary` until `until` entries remain, each step bounded
    by `step` (`step_timeout` unless given)."""
    if source is None:
        return
    config = router.primary.config

    def synced() -> None:
        router.metrics.synced()

    await router.journal.drain(
        primary=primary,
        fallback=source,
        until=until,
        concurrency=sync_concurrency(config),
        is_unreachable=is_backend_error,
        on_synced=synced,
        step_timeout=step_timeout(config) if step is None else step,
        judge=judge_for(primary, source, router.outage_began),
    )


async def sync_back(router: FallbackRouter) -> bool:
    """Copy what the fallback holds into the primary, then serve from the primary.

    True when the primary serves; False when it is not healthy or failed
    during the sync (the journal keeps what was not copied yet).
    """
    primary = router.primary
    source = _sync_source(router)
    if primary.backend is None or not primary.healthy:
        return False
    if router.active == 0:
        return True
    gated_tries = 0
    for attempt in range(_BUSY_TRIES):
        gated = False
        try:
            if attempt == 0:
                await primary.backend.reconnect()
            await _drain(router, primary.backend, source, until=SMALL_REMAINDER)
            gated = True
            gated_tries += 1
            # The bound grows on the second try, for the whole and for each step (a
            # single slow statement, a lock or a load, gets it too), and no further:
            # writers wait at the gate at most two steps' bounds in one go.
            bound = min(gated_tries, _GATED_TRIES) * step_timeout(primary.config)
            async with router.gate.closed():
                # The gate holds every writer: its drain is one call as a whole, given
                # up on (not awaited) when past its bound. A primary silent now left
                # writers waiting out each step's bound in turn, and then psycopg's
                # own wait on each cancelled query (~40 s with the defaults). Given up
                # on, the drain ends in the background with the gate open, as the
                # drain before it ran; the switch is not made.
                await router.calls.run(
                    _drain(router, primary.backend, source, until=0, step=bound),
                    bound,
                    "the copy-back's last part",
                )
                if not primary.healthy:
                    # Found unreachable since the reconnect (a probe beside this
                    # copy-back): its pool refuses checkouts until a probe answers
                    # (`LendingPool.unreachable`), so it would serve nobody. The next
                    # check probes, and copies what is left, and switches.
                    log.info("sync back waits: the primary failed a probe meanwhile")
                    return False
                await router.switch_to_primary()
            router.fallback_fault = None
            return True
        except Exception as exc:
            # Past the gated part's bound, a probe on a connection of its own tells a
            # primary gone silent (down, below) from one that answers slowly (a lock,
            # a load): that one is not an outage; the drain goes on with the gate
            # open and the gated part is tried again, with more time.
            if gated and isinstance(exc, TimeoutError) and await router.answers(primary):
                if gated_tries >= _GATED_TRIES:
                    log.info("sync back's last part was slow (%s); the next check tries again", exc)
                    return False
                log.info("sync back's last part was slow (%s); tried again", exc)
                continue
            # A pool timeout may be a saturated pool only: the router's probe confirms
            # it first (`outage`), as for `retry_quarantined`. Busy, the drain starts
            # again (the gate open meanwhile; the pool's own wait for a connection is
            # the pause); still busy after the last try, the next check recovers.
            if _fallback_side(router, exc):
                # The fallback's file failed (its disk full), not the healthy primary:
                # no failover; the journal keeps the rest and the next check retries.
                level = logging.DEBUG if router.fallback_fault == str(exc) else logging.WARNING
                router.fallback_fault = str(exc)
                log.log(
                    level,
                    "copy-back paused: the fallback file %s failed (%s: %s; a full disk?), "
                    "not the primary; the next check retries",
                    "?" if router.store is None else router.store.path.resolve(),
                    type(exc).__name__,
                    exc,
                )
                return False
            verdict = await router.outage(primary, exc)
            if verdict is None:
                raise
            if verdict == "down":
                router.fail(primary, exc)
                log.log(
                    logging.INFO if primary.sync_stopped(exc) else logging.DEBUG,
                    "sync back to the primary stopped: %s",
                    primary.last_error,
                )
                return False
            log.info("sync back to the primary waits: its pool is saturated (%s)", exc)
    return False


def _fallback_side(router: FallbackRouter, exc: BaseException) -> bool:
    """True when a copy-back's error is the fallback's own: a SQLite error while the
    primary is no SQLite database (reading the fallback's file, or removing the
    copied entries from the journal's)."""
    return isinstance(exc, sqlite3.Error) and router.primary.config.kind != "sqlite"


async def retry_quarantined(router: FallbackRouter) -> None:
    """Replay each quarantined entry once; forget the fallback's copies of settled threads."""
    primary, source = router.primary.backend, _sync_source(router)
    if primary is None or source is None:
        return
    last = router.last_outage
    done, stopped = await router.journal.retry_quarantined(
        primary=primary,
        fallback=source,
        is_unreachable=is_backend_error,
        step_timeout=step_timeout(router.primary.config),
        # The primary serves: judged by the last outage's start (an entry kept from an
        # earlier outage, of a thread with no row here, misses a deletion made between).
        judge=judge_for(primary, source, None if last is None else last[0]),
    )
    # A pool timeout may be a saturated pool only: the router's probe confirms it first
    # (`outage`), and a busy pool fails nothing over; the entry waits for the next retry.
    if stopped is not None and await router.outage(router.primary, stopped) == "down":
        # The router serves from the fallback now: the loop below skips the threads of
        # the entries that went through. Their fallback copies stay (not lost, and read
        # as the primary's in this outage: `FallbackRouter.fail`) until the next switch
        # back forgets them with the rest (`switch_to_primary`).
        router.fail_primary(stopped)
    if done:
        router.metrics.synced(len(done))
        # Under the gate and the step lock: no write can reach the fallback for a
        # thread between the check that it is settled and forgetting its copies.
        async with router.gate.write(), router.journal.step_lock:
            for thread_id in {e.thread_id for e in done}:
                if not router.serving or thread_id in router.journal.threads():
                    continue
                await _forget_copies(router, thread_id)


async def forget_if_deleted(router: FallbackRouter, thread_id: str) -> bool:
    """Before a run's admission on a thread kept across a recovery (a quarantined
    entry), the primary serving: if another replica deleted the thread since (its
    tombstone, `tombstones.deleted_copies`), forget its entries and fallback copies;
    True when it did. A kept thread's reads fall back to the fallback's copies where
    the primary has none, so a run on the id made anew would start from the deleted
    thread's state (and a read of it answer that state: `forget_before_read`).

    The look is outside the journal's step lock (bounded by `step_timeout`): an
    admission on a kept thread no deletion ended does not wait behind a quarantine
    retry's replay. Only a thread found deleted takes the lock, and is looked at again
    under it: still kept, its copies unchanged since by a replay."""
    if not _kept(router, thread_id):
        return False
    if not await _looked(router, thread_id):
        return False
    async with router.journal.step_lock:
        if not _kept(router, thread_id):  # settled, forgotten or failed over meanwhile
            return False
        gone = await _looked(router, thread_id)
        if gone is None:
            return False
        dropped = router.journal.drop_thread_locked(thread_id)
        await _forget_copies(router, thread_id)
    log.warning(
        "thread %s was deleted on the primary at %s, after this replica's outage: its "
        "copies here and %d quarantined entries are dropped",
        thread_id,
        gone.isoformat(),
        dropped,
    )
    return True


async def forget_before_read(router: FallbackRouter, thread_id: str) -> bool:
    """`forget_if_deleted` before a read of a kept thread goes on to the fallback's
    copies (the primary had nothing of it): a client that deleted the thread through
    another replica and made it anew would read the deleted thread's state. True when
    its copies were forgotten: nothing of it to read. An unreachable primary fails
    over, as the read itself would (`FallbackRouter._failing_over`)."""
    if not _kept(router, thread_id):
        return False
    async with router._failing_over(router.primary, "reading this thread"):
        return await forget_if_deleted(router, thread_id)


def _kept(router: FallbackRouter, thread_id: str) -> bool:
    """Whether the thread is kept across a recovery, the primary serving."""
    kept = thread_id in router.local_threads or thread_id in router.fallback_threads
    return kept and router.serving and router.primary.backend is not None


async def _looked(router: FallbackRouter, thread_id: str) -> datetime | None:
    """`_deleted_since`, bounded by `step_timeout`. A look that takes longer (a slow
    primary that answers: a lock, a load) reads as "not known deleted": a timeout is
    not a verdict on the primary, and failing the gateway over for it would be an
    outage of its own making (review). An unreachable primary still raises."""
    timeout = step_timeout(router.primary.config)
    try:
        async with asyncio.timeout(timeout):
            return await _deleted_since(router, thread_id)
    except TimeoutError:
        log.warning(
            "looking for a deletion of kept thread %s took over %s s; its copies here stay",
            thread_id,
            timeout,
        )
        return None


async def _deleted_since(router: FallbackRouter, thread_id: str) -> datetime | None:
    """When the primary deleted the thread the fallback's copies are of; None if not."""
    primary, source = router.primary.backend, _sync_source(router)
    if primary is None or source is None:
        return None
    last = router.last_outage
    gone = await deleted_copies(primary, source, [thread_id], None if last is None else last[0])
    return gone.get(thread_id)


async def _forget_copies(router: FallbackRouter, thread_id: str) -> None:
    """The fallbacks forget a thread kept across a recovery (its entries settled)."""
    router.drop_noted(thread_id)
    router.uncarried_marks.discard(thread_id)
    for slot in router.slots[1:]:
        if slot.backend is not None:
            await slot.backend.forget_thread(thread_id)
