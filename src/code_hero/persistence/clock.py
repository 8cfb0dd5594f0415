"""The time this process stores and compares: its wall clock, set to the database's.

Replicas on one PostgreSQL database compare times each of them wrote: a run's lease
(`lease_expires_at` against the claimer's now), a thread's TTL, a webhook's next try,
a tombstone against an outage's start. Each replica's own wall clock would make a
replica whose clock runs ahead take over the runs others are executing (their leases
look lapsed to it) and a replica behind it hold a lease past its end. So the
PostgreSQL backend measures, at open and at every probe, how far the database's
clock (`clock_timestamp()`) is from this process's, and `now()` is this process's
clock moved by that offset: every replica reads the database's time, whatever its
own clock says. The offset stays until the next measurement (an outage keeps the
last one: the times written to the fallback are still the database's).

SQLite and memory are one process: nothing is measured, the offset stays 0.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

__all__ = ["SKEW_WARNING", "STEADY", "measured", "now", "offset", "reset", "wall"]

log = logging.getLogger(__name__)

# An offset past this is logged once as a WARNING (the clocks ought to be in sync:
# logs, event times shown to users and the database's own now() still differ).
SKEW_WARNING = timedelta(seconds=1)
# A measurement moves the offset only when it differs from it by more than this and
# the measurement's own uncertainty (half its round trip): a round trip's jitter
# would otherwise move every time written by a fraction of a millisecond at each
# probe, and two writes either side of a probe could be stored out of order. Clocks
# in sync (one machine, NTP) keep the offset 0; a lease is 15 s.
STEADY = timedelta(milliseconds=50)

_offset = timedelta(0)
_warned = False


def wall() -> datetime:
    """This process's own wall clock, aware UTC (the seam tests move)."""
    return datetime.now(UTC)


def now() -> datetime:
    """The database's time as this process knows it, aware UTC."""
    return wall() + _offset


def offset() -> timedelta:
    """How far the database's clock is ahead of this process's (negative: behind)."""
    return _offset


def measured(before: datetime, database: datetime, after: datetime) -> None:
    """The database answered `database` between this process's `before` and `after`
    (its `wall()` times): the offset becomes the database's time less the midpoint,
    unless it is within `STEADY` and the round trip's half of the offset it has."""
    global _offset, _warned
    half = (after - before) / 2
    found = database - (before + half)
    if abs(found - _offset) <= STEADY + half:
        return
    _offset = found
    skewed = abs(_offset) > SKEW_WARNING
    if skewed and not _warned:
        log.warning(
            "this process's clock is %.3f s %s the database's: leases, TTLs and webhook "
            "schedules use the database's time; keep the clocks in sync (NTP)",
            abs(_offset.total_seconds()),
            "behind" if _offset > timedelta(0) else "ahead of",
        )
    _warned = skewed


def reset() -> None:
    """Back to this process's own clock (tests)."""
    global _offset, _warned
    _offset, _warned = timedelta(0), False
