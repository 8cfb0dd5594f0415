"""Checks on paging arguments shared by every connection."""

from __future__ import annotations

from code_hero.errors import BadInputError
from code_hero.limits import Limits

__all__ = ["check_first"]


def check_first(first: int | None, limits: Limits, default: int = 20) -> int:
    """`first`, or the default for null; BadInputError above the configured page limit.

    The gateway and the manager check 1..100 as well (their own constants, not
    yet `limits.max_page`), so a configured limit can lower the ceiling but not
    raise it.
    """
    if first is None:
        return default
    if first > limits.max_page:
        raise BadInputError(f"first must be between 1 and {limits.max_page}, got {first}")
    return first
