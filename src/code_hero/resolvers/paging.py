"""Checks on paging arguments shared by every connection."""

from __future__ import annotations

from code_hero.errors import BadInputError
from code_hero.settings import Limits

__all__ = ["check_first"]


def check_first(first: int | None, limits: Limits, default: int = 20) -> int:
    """`first`, or the default for null; BadInputError above the configured page limit.

    The gateway checks 1..100 as well; this adds a lower limit when one is set.
    """
    if first is None:
        return default
    if first > limits.max_page:
        raise BadInputError(f"first must be between 1 and {limits.max_page}, got {first}")
    return first
