"""Thread editing and retention: createThread, updateThread, copyThread, deleteThreads,
pruneThreads (thin: the gateway checks and acts)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import strawberry

from code_hero.resolvers import mapping

# The listing's parser: a filter field added there applies to deletion and pruning too.
from code_hero.resolvers.filters import thread_filter
from code_hero.schema.thread_admin import DeleteThreadsPayload, PruneThreadsPayload

if TYPE_CHECKING:
    from strawberry import Info

    from code_hero.resolvers.context import Context
    from code_hero.schema import thread_admin as ta
    from code_hero.schema import threads as t

__all__ = ["copy_thread", "create_thread", "delete_threads", "prune_threads", "update_thread"]


async def create_thread(info: Info[Context, Any], data: ta.CreateThreadInput) -> t.Thread:
    """A new thread, or the existing one (ifExists: DO_NOTHING)."""
    ctx = info.context
    record = await ctx.gateway.create_thread(
        thread_id=data.thread_id,
        metadata=data.metadata,
        user_id=data.user_id,
        if_exists_raise=data.if_exists is None or data.if_exists.value == "RAISE",
        ttl_seconds=data.ttl_seconds,
        caller=ctx.caller,
    )
    return mapping.thread_of(record)


async def update_thread(info: Info[Context, Any], data: ta.UpdateThreadInput) -> t.Thread:
    """The thread with its metadata merged and its ttl set."""
    ctx = info.context
    record = await ctx.gateway.update_thread(
        data.id, metadata=data.metadata, ttl_seconds=data.ttl_seconds, caller=ctx.caller
    )
    return mapping.thread_of(record)


async def copy_thread(info: Info[Context, Any], thread_id: str) -> t.Thread:
    """A new thread with the same checkpoints and metadata, no runs."""
    ctx = info.context
    return mapping.thread_of(await ctx.gateway.copy_thread(thread_id, caller=ctx.caller))


async def delete_threads(
    info: Info[Context, Any], flt: t.ThreadFilter, limit: int | None
) -> ta.DeleteThreadsPayload:
    """Up to `limit` matching threads deleted, their runs cancelled."""
    ctx = info.context
    gone = await ctx.gateway.delete_threads(
        thread_filter(flt, ctx.limits), limit=100 if limit is None else limit, caller=ctx.caller
    )
    return DeleteThreadsPayload(
        deleted=len(gone.thread_ids),
        thread_ids=[strawberry.ID(t) for t in gone.thread_ids],
        has_more=gone.has_more,
    )


async def prune_threads(
    info: Info[Context, Any], data: ta.PruneThreadsInput
) -> ta.PruneThreadsPayload:
    """Old threads deleted and/or old checkpoints dropped."""
    ctx = info.context
    report = await ctx.gateway.prune_threads(
        thread_filter(data.filter, ctx.limits),
        older_than=data.older_than,
        keep_latest=data.keep_latest,
        caller=ctx.caller,
    )
    return PruneThreadsPayload(
        threads_deleted=report.threads_deleted, checkpoints_deleted=report.checkpoints_deleted
    )
