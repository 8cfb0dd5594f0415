"""Threads: look-up, listing, their state, history and runs, deletion."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from code_hero.persistence.records import (
    RunFilter,
    RunOrder,
    SortDirection,
    ThreadOrder,
    ThreadRecord,
    ThreadSortField,
)
from code_hero.resolvers import filters, mapping
from code_hero.resolvers.paging import check_first

if TYPE_CHECKING:
    from strawberry import Info

    from code_hero.resolvers.context import Context
    from code_hero.schema import checkpoints as c
    from code_hero.schema import enums as e
    from code_hero.schema import runs as r
    from code_hero.schema import threads as t
    from code_hero.schema.scalars import JSON

__all__ = [
    "delete_thread",
    "latest_checkpoint",
    "thread",
    "thread_checkpoints",
    "thread_runs",
    "thread_values",
    "threads",
]


async def thread(info: Info[Context, Any], thread_id: str) -> t.Thread | None:
    """One thread, or null (the gateway checks the id)."""
    ctx = info.context
    record = await ctx.gateway.get_thread(thread_id, caller=ctx.caller)
    if record is not None:  # later Run.thread look-ups of this operation hit the cache
        ctx.loaders.prime_threads([record])
    return None if record is None else mapping.thread_of(record)


async def threads(
    info: Info[Context, Any],
    first: int | None,
    after: str | None,
    flt: t.ThreadFilter | None,
    order_by: t.ThreadSort | None = None,
) -> t.ThreadConnection:
    """A page of threads, most recently updated first unless `order_by` says otherwise."""
    ctx = info.context
    query = filters.thread_filter(flt, ctx.limits)
    order = ThreadOrder()
    if order_by is not None:
        order = ThreadOrder(ThreadSortField(order_by.field), SortDirection(order_by.direction))
    page = await ctx.gateway.threads_page(
        query, first=check_first(first, ctx.limits), after=after, order=order, caller=ctx.caller
    )
    # Later Run.thread look-ups of this operation hit the cache.
    ctx.loaders.prime_threads(page.items)

    async def count() -> int:
        return await ctx.gateway.threads_count(query, caller=ctx.caller)

    return mapping.thread_connection(page, order, count)


async def thread_values(
    info: Info[Context, Any], thread_id: str, keys: list[str] | None = None
) -> JSON | None:
    """The values of the latest root checkpoint (only the channels in `keys`), or null."""
    view = await info.context.loaders.latest_checkpoint.load(thread_id)
    return None if view is None else mapping.checkpoint_of(view).values(keys)


async def latest_checkpoint(info: Info[Context, Any], thread_id: str) -> c.Checkpoint | None:
    """The latest root checkpoint, or null."""
    view = await info.context.loaders.latest_checkpoint.load(thread_id)
    return None if view is None else mapping.checkpoint_of(view)


async def thread_checkpoints(
    info: Info[Context, Any],
    thread_id: str,
    first: int | None,
    after: str | None,
    namespace: str | None,
    record: ThreadRecord | None = None,
) -> c.CheckpointConnection:
    """A page of a namespace's history, newest first; `record`: the thread's, if read."""
    ctx = info.context
    page = await ctx.gateway.list_checkpoints(
        thread_id,
        namespace=namespace or "",
        first=check_first(first, ctx.limits),
        after=after,
        caller=ctx.caller,
        thread=record,
    )

    async def count() -> int:
        return await ctx.gateway.checkpoints_count(
            thread_id, namespace=namespace or "", caller=ctx.caller
        )

    return mapping.checkpoint_connection(page, count)


async def thread_runs(
    info: Info[Context, Any],
    thread_id: str,
    first: int | None,
    after: str | None,
    status: e.RunStatus | None,
) -> r.RunConnection:
    """A page of the thread's runs, newest first."""
    ctx = info.context
    flt = RunFilter(thread_id=thread_id, status=status)
    page = await ctx.gateway.runs_page(
        flt, first=check_first(first, ctx.limits), after=after, caller=ctx.caller
    )

    async def count() -> int:
        return await ctx.gateway.runs_count(flt, caller=ctx.caller)

    return mapping.run_connection(page, RunOrder(), count)


async def delete_thread(info: Info[Context, Any], thread_id: str) -> t.DeleteThreadPayload:
    """Cancel the thread's runs and delete it everywhere."""
    ctx = info.context
    return mapping.thread_deletion_of(await ctx.gateway.delete_thread(thread_id, caller=ctx.caller))
