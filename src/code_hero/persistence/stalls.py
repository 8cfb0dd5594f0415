"""The moments this process did not run: its event loop stopped (SIGSTOP, a long
collection, a swapped-out page, a VM paused), seen from the loop's own clock.

A lease that lapsed in such a stall may have been taken over by another replica
while this process could not tell; one that lapsed while the loop ran was lapsing
because its renewals failed (an outage). `RoutedRegistry._lapsed_before_outage`
tells the two apart with `StallWatch.covers`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from datetime import datetime, timedelta

from code_hero.persistence import clock

__all__ = ["StallWatch"]


class StallWatch:
    """Ticks every `tick` seconds on the event loop; a tick more than `tolerance` late
    records the gap since the last one as a stall (wall-clock start and end, as leases
    are kept). The last `keep` stalls are kept: leases last seconds, so older ones
    judge nothing."""

    def __init__(self, tick: float = 0.25, tolerance: float = 0.5, keep: int = 64) -> None:
        self.tick = tick
        self.tolerance = tolerance
        self.stalls: deque[tuple[datetime, datetime]] = deque(maxlen=keep)
        self._last = time.monotonic()
        self._last_wall = clock.wall()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._last, self._last_wall = time.monotonic(), clock.wall()
            self._task = asyncio.create_task(self._watch(), name="stall-watch")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.tick)
            if (gap := self._gap()) is not None:
                self.stalls.append(gap)
            self._last, self._last_wall = time.monotonic(), clock.wall()

    def _gap(self) -> tuple[datetime, datetime] | None:
        """The gap since the last tick, if it is a stall (the loop ran late by more
        than `tolerance`): also the one under way, before the watch has ticked again.
        Seen on both clocks: the monotonic one stops while the machine is suspended
        (and a paused VM may resume with it so), the wall clock does not."""
        wall = clock.wall()
        since = max(time.monotonic() - self._last, (wall - self._last_wall).total_seconds())
        if since - self.tick <= self.tolerance:
            return None
        now = wall + clock.offset()
        return now - timedelta(seconds=since), now  # the longer of the two gaps

    def covers(self, moment: datetime, began_before: datetime) -> bool:
        """Whether `moment` fell in a stall that began before `began_before`."""
        gaps = [*self.stalls]
        if self._task is not None and (gap := self._gap()) is not None:
            gaps.append(gap)
        return any(start <= moment <= end and start < began_before for start, end in gaps)
