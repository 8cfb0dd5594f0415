"""Relay-style paging: `PageInfo`, and how a connection counts its items when asked.
Cursors are the registry's opaque keyset cursors."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import strawberry

__all__ = ["Counter", "PageInfo"]

# What a connection calls for `totalCount`: one count query, made only when selected.
Counter = Callable[[], Awaitable[int]]


@strawberry.type(description="Where a page ends and whether another follows.")
class PageInfo:
    has_next_page: bool
    end_cursor: str | None = strawberry.field(
        description="Pass as `after` to get the next page; null on an empty page."
    )
