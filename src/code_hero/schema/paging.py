"""Relay-style paging: `PageInfo`, how a connection counts its items and how an edge
makes its cursor, both when asked. Cursors are the registry's opaque keyset cursors."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import strawberry

__all__ = ["Counter", "Cursor", "LazyCursorEdge", "PageInfo"]

# What a connection calls for `totalCount`: one count query, made only when selected.
Counter = Callable[[], Awaitable[int]]
# What an edge calls for its `cursor`: encoded only when selected (pages mostly ask
# for `pageInfo.endCursor` alone; a thread's cursor was a twentieth of a list's CPU).
Cursor = Callable[[], str]


@strawberry.type(description="Where a page ends and whether another follows.")
class PageInfo:
    has_next_page: bool
    end_cursor: str | None = strawberry.field(
        description="Pass as `after` to get the next page; null on an empty page."
    )


@strawberry.type
class LazyCursorEdge:
    """The base of an edge whose `cursor` is encoded only when selected (`Cursor`)."""

    make_cursor: strawberry.Private[Cursor]

    @strawberry.field
    def cursor(self) -> str:
        return self.make_cursor()
