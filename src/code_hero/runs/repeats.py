"""A background loop's failures, logged once per kind until it works again.

The claim loops poll every second or so; a store that refuses them for an hour
(a full disk, a read-only or locked file) would log a WARNING per poll. The
first failure of a kind is news; its repeats go to DEBUG; the loop working again
is one INFO line. A failure its caller rates lower (an outage the router
reports once itself: `background_level`) stays at that level, news or not.
"""

from __future__ import annotations

import logging

__all__ = ["Repeats"]


class Repeats:
    """What one loop (`what`, e.g. "claiming runs") last failed with."""

    def __init__(self, log: logging.Logger, what: str) -> None:
        self._log = log
        self._what = what
        self._last: str | None = None
        self._warned = False  # a failure since the loop last worked was logged above DEBUG

    def failed(self, exc: BaseException, level: int = logging.WARNING) -> None:
        """Log the failure: at `level` when it is news, else DEBUG."""
        text = str(exc) or type(exc).__name__
        if text == self._last:
            level = logging.DEBUG
        self._log.log(level, "%s failed: %s", self._what, text)
        self._last = text
        self._warned = self._warned or level > logging.DEBUG

    def succeeded(self) -> None:
        """The loop worked: say so once if its failing was said."""
        if self._last is not None and self._warned:
            self._log.info("%s works again", self._what)
        self._last, self._warned = None, False
