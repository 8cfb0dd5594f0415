"""Subscriptions: consumers of the gateway's event streams.

Each subscription owns only its own stream. When the client completes or
disconnects, Strawberry cancels the operation and closes the generator; the
`finally` closes the gateway's stream (which unsubscribes from the bus) and
lets the cancellation go on. The run itself is untouched.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import TYPE_CHECKING, Any

from code_hero.persistence.records import EventRecord
from code_hero.resolvers import mapping

if TYPE_CHECKING:
    from strawberry import Info

    from code_hero.resolvers.context import Context
    from code_hero.schema import events as ev

__all__ = ["run_events", "thread_events"]


async def run_events(
    info: Info[Context, Any], run_id: str, after_seq: int | None
) -> AsyncIterator[ev.RunEvent]:
    """Replay after `after_seq`, then live; ends after the run's final status.

    An unknown run raises NOT_FOUND here, before the stream starts.
    """
    ctx = info.context
    stream = await ctx.gateway.follow_run(run_id, after_seq=after_seq or 0, caller=ctx.caller)
    return _events(stream)


async def thread_events(info: Info[Context, Any], thread_id: str) -> AsyncIterator[ev.RunEvent]:
    """Every event of every run on the thread from now on."""
    ctx = info.context
    stream = await ctx.gateway.follow_thread(thread_id, caller=ctx.caller)
    return _events(stream)


async def _events(stream: AsyncIterator[EventRecord]) -> AsyncGenerator[ev.RunEvent, None]:
    try:
        async for record in stream:
            yield mapping.event_of(record)
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()
