"""A log that warns at most once a minute: for failures that repeat alike (a background
loop's at every poll, every request meeting one held lock), one WARNING says so and
counts the others, logged at DEBUG meanwhile."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

__all__ = ["BackgroundLog"]


class BackgroundLog:
    """How one background loop logs its failures: at the level `level_of` gives
    (`background_level` with the router's view), and a WARNING at most once per `every`
    seconds; those in between go to DEBUG, and the next WARNING counts them. A pool
    saturated for an hour warns once a minute, not at every poll or notification."""

    def __init__(
        self,
        logger: logging.Logger,
        level_of: Callable[[BaseException], int],
        every: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.level_of = level_of
        self.every = every
        self.clock = clock
        self._quiet_until = float("-inf")
        self._held = 0  # warnings logged at DEBUG since the last WARNING

    def failed(self, exc: BaseException, message: str, *args: object) -> None:
        """Log `message % args` at the level `exc` calls for."""
        level = self.level_of(exc)
        if level >= logging.WARNING:
            now = self.clock()
            if now < self._quiet_until:
                self._held += 1
                level = logging.DEBUG
            else:
                self._quiet_until = now + self.every
                if self._held:
                    message += f" ({self._held} more since the last warning, logged at DEBUG)"
                    self._held = 0
        self.logger.log(level, message, *args)
