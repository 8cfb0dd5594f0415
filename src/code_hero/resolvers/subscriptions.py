"""Subscriptions: consumers of the gateway's event streams.

Each subscription owns only its own stream. When the client completes or
disconnects, Strawberry cancels the operation and closes the generator; the
`finally` closes the gateway's stream (which unsubscribes from the bus) and
lets the cancellation go on. The run itself is untouched.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

from code_hero.errors import BadInputError
from code_hero.persistence.records import EventRecord
from code_hero.resolvers import mapping, runs, sharing

if TYPE_CHECKING:
    from strawberry import Info

    from code_hero.resolvers.context import Context
    from code_hero.schema import enums as en
    from code_hero.schema import events as ev
    from code_hero.schema import runs as r

__all__ = ["run_events", "run_stream", "thread_events"]


async def run_events(
    info: Info[Context, Any],
    run_id: str,
    after_seq: int | None,
    types: Sequence[en.RunEventType] | None = None,
) -> AsyncIterator[ev.RunEvent]:
    """Replay after `after_seq`, then live; ends after the run's final status.

    An unknown run raises NOT_FOUND here, before the stream starts. A shared
    stream's gate checks the same and only records what to follow; its
    producer follows from where the producer starts (see resolvers.sharing).
    """
    ctx = info.context
    mode = sharing.MODE.get()
    if mode is not None and not mode.gate:
        after_seq = mode.after_seq
    if mode is not None and mode.gate:

        async def check() -> None:
            await _close(
                await ctx.gateway.follow_run(
                    run_id, after_seq=after_seq or 0, types=_types(types), caller=ctx.caller
                )
            )

        key = (run_id, after_seq, None if types is None else tuple(types), ctx.caller)
        await sharing.checked(mode.checks, key, check)
        mode.found = sharing.Gate(
            run_id, after_seq or 0, sharing.after_variable(info._raw_info), ctx.caller
        )
        return _nothing()
    stream = await ctx.gateway.follow_run(
        run_id, after_seq=after_seq or 0, types=_types(types), caller=ctx.caller
    )
    return _events(stream, mode)


async def run_stream(
    info: Info[Context, Any], data: r.StartRunInput, types: Sequence[en.RunEventType] | None
) -> AsyncIterator[ev.RunEvent]:
    """Start a run as startRun does and follow it from seq 1; ends like runEvents.

    It starts a run, so it is refused over GET as a mutation is (a GET must not
    change anything: links, prefetchers and caches send them); every refusal
    comes here, before the stream starts and before the run does.
    """
    ctx = info.context
    if getattr(ctx.request, "method", None) == "GET":
        raise BadInputError("runStream starts a run: send it with POST or over a WebSocket")
    request = runs.start_request(data)
    stream = await ctx.gateway.stream_run(request, types=_types(types), caller=ctx.caller)
    return _events(stream)


def _types(types: Sequence[en.RunEventType] | None) -> list[str] | None:
    return None if types is None else [t.value for t in types]


async def thread_events(info: Info[Context, Any], thread_id: str) -> AsyncIterator[ev.RunEvent]:
    """Every event of every run on the thread from now on."""
    ctx = info.context
    stream = await ctx.gateway.follow_thread(thread_id, caller=ctx.caller)
    return _events(stream)


async def _events(
    stream: AsyncIterator[EventRecord], mode: sharing.Mode | None = None
) -> AsyncGenerator[ev.RunEvent, None]:
    try:
        async for record in stream:
            if mode is not None:  # the producer tags what it encodes with the seq
                mode.seq = record.seq
            yield mapping.event_of(record)
    finally:
        await _close(stream)


async def _close(stream: AsyncIterator[EventRecord]) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()


async def _nothing() -> AsyncGenerator[ev.RunEvent, None]:
    return
    yield  # an async generator that ends at once
