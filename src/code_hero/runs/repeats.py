"""A background loop's failures, logged once per kind until it works again.

The claim loops poll every second or so; a store that refuses them for an hour
(a full disk, a read-only or locked file) would log a WARNING per poll. The
first failure of a kind is news; its repeats go to DEBUG; the loop working again
is one INFO line.
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

    def failed(self, exc: BaseException) -> None:
        """Log the failure: a WARNING when it is news, else DEBUG."""
        text = str(exc) or type(exc).__name__
        level = logging.DEBUG if text == self._last else logging.WARNING
        self._log.log(level, "%s failed: %s", self._what, text)
        self._last = text

    def succeeded(self) -> None:
        """The loop worked: say so once if it had been failing."""
        if self._last is not None:
            self._log.info("%s works again", self._what)
            self._last = None
