"""Runs: look-up, listing, start, cancel, delete, and their recorded events."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import strawberry

from code_hero.errors import BadInputError
from code_hero.persistence.records import MultitaskStrategy, RunOrder, SortDirection
from code_hero.resolvers import filters, mapping
from code_hero.resolvers.paging import check_first
from code_hero.runs.requests import UNSET, StartRun

if TYPE_CHECKING:
    from strawberry import Info

    from code_hero.resolvers.context import Context
    from code_hero.schema import events as ev
    from code_hero.schema import runs as r
    from code_hero.schema import threads as t

__all__ = [
    "cancel_run",
    "delete_run",
    "run",
    "run_events",
    "run_thread",
    "runs",
    "start_run",
]


async def run(info: Info[Context, Any], run_id: str) -> r.Run | None:
    """One run, or null (the gateway checks the id)."""
    ctx = info.context
    record = await ctx.gateway.get_run(run_id, caller=ctx.caller)
    return None if record is None else mapping.run_of(record)


async def runs(
    info: Info[Context, Any],
    first: int | None,
    after: str | None,
    flt: r.RunFilter | None,
    order_by: r.RunSort | None = None,
) -> r.RunConnection:
    """A page of runs, newest first unless `order_by` says otherwise."""
    ctx = info.context
    query = filters.run_filter(flt)
    order = RunOrder() if order_by is None else RunOrder(SortDirection(order_by.direction))
    page = await ctx.gateway.runs_page(
        query, first=check_first(first, ctx.limits), after=after, order=order, caller=ctx.caller
    )

    async def count() -> int:
        return await ctx.gateway.runs_count(query, caller=ctx.caller)

    return mapping.run_connection(page, order, count)


async def run_thread(info: Info[Context, Any], thread_id: str) -> t.Thread | None:
    """The run's thread, through the operation's loader (one query per page of runs)."""
    record = await info.context.loaders.thread.load(thread_id)
    return None if record is None else mapping.thread_of(record)


async def run_events(
    info: Info[Context, Any], run_id: str, after_seq: int | None, first: int | None
) -> list[ev.RunEvent]:
    """The recorded events after `after_seq`, in order."""
    ctx = info.context
    records = await ctx.gateway.run_events(
        run_id, after_seq=after_seq or 0, first=100 if first is None else first, caller=ctx.caller
    )
    return [mapping.event_of(x) for x in records]


def _object(value: Any, name: str) -> dict[str, Any]:
    if value is None or value is strawberry.UNSET:
        return {}
    if not isinstance(value, Mapping):
        raise BadInputError(f"{name} must be a JSON object")
    return dict(value)


def start_request(data: r.StartRunInput) -> StartRun:
    """The executor's request for the mutation's input."""
    return StartRun(
        thread_id=data.thread_id,
        message=data.message,
        input=UNSET if data.input is strawberry.UNSET else data.input,
        resume=UNSET if data.resume is strawberry.UNSET else data.resume,
        from_checkpoint_id=data.from_checkpoint_id,
        graph=data.graph,
        user_id=data.user_id,
        metadata=_object(data.metadata, "metadata"),
        config=_object(data.config, "config"),
        multitask=data.multitask or MultitaskStrategy.REJECT,
        wait=bool(data.wait),
        webhook=data.webhook,
    )


async def start_run(info: Info[Context, Any], data: r.StartRunInput) -> r.Run:
    """Start (or queue) a run; with `wait`, answer once it has ended."""
    ctx = info.context
    record = await ctx.gateway.start_run(start_request(data), caller=ctx.caller, waits=ctx.waits)
    return mapping.run_of(record)


async def cancel_run(info: Info[Context, Any], run_id: str) -> r.Run:
    """Cancel a run; a finished run is returned as it is."""
    ctx = info.context
    return mapping.run_of(await ctx.gateway.cancel_run(run_id, caller=ctx.caller))


async def delete_run(info: Info[Context, Any], run_id: str) -> r.DeleteRunPayload:
    """Cancel the run if it is going, then delete it and its events."""
    ctx = info.context
    deleted = await ctx.gateway.delete_run(run_id, caller=ctx.caller)
    return mapping.run_deletion_of(run_id, deleted)
