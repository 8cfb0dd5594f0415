"""A background loop's failures: one WARNING per kind until it works again."""

from __future__ import annotations

import logging

import pytest

from code_hero.runs.repeats import Repeats

log = logging.getLogger("tests.repeats")


def test_a_failure_warns_once_then_debug_then_one_line_when_it_works(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="tests.repeats")
    repeats = Repeats(log, "claiming runs")
    for _ in range(5):
        repeats.failed(OSError("database or disk is full"))
    repeats.failed(OSError("database is locked"))  # another kind: news
    repeats.succeeded()
    repeats.succeeded()  # nothing to say
    repeats.failed(OSError("database is locked"))  # after a success: news again
    told = [(r.levelname, r.getMessage()) for r in caplog.records if r.levelno > logging.DEBUG]
    assert told == [
        ("WARNING", "claiming runs failed: database or disk is full"),
        ("WARNING", "claiming runs failed: database is locked"),
        ("INFO", "claiming runs works again"),
        ("WARNING", "claiming runs failed: database is locked"),
    ]
