"""Relay-style paging: `PageInfo`. Cursors are the registry's opaque keyset cursors."""

from __future__ import annotations

import strawberry

__all__ = ["PageInfo"]


@strawberry.type(description="Where a page ends and whether another follows.")
class PageInfo:
    has_next_page: bool
    end_cursor: str | None = strawberry.field(
        description="Pass as `after` to get the next page; null on an empty page."
    )
