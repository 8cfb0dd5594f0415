"""Threads: look-up, listing, their state, history and runs, deletion."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from graphql import FieldNode, GraphQLError, GraphQLObjectType, get_nullable_type
from graphql.execution.values import VariableValues, get_argument_values

from code_hero.errors import BadInputError
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

    from code_hero.limits import Limits
    from code_hero.persistence.checkpoints import CheckpointView
    from code_hero.persistence.records import Page
    from code_hero.resolvers.context import Context
    from code_hero.schema import checkpoints as c
    from code_hero.schema import enums as e
    from code_hero.schema import runs as r
    from code_hero.schema import threads as t
    from code_hero.schema.scalars import JSON

__all__ = [
    "History",
    "delete_thread",
    "latest_checkpoint",
    "thread",
    "thread_checkpoints",
    "thread_runs",
    "thread_values",
    "threads",
]


@dataclass(frozen=True)
class History:
    """A page of a thread's history read with the thread, for the arguments it was read
    for: the page, or the error reading it raised (raised at `checkpoints`)."""

    first: int
    after: str | None
    namespace: str
    page: Page[CheckpointView] | Exception


async def thread(info: Info[Context, Any], thread_id: str) -> t.Thread | None:
    """One thread, or null (the gateway checks the id); the history page selected
    under it, if any, is read at the same time (`Gateway.thread_with_history`)."""
    ctx = info.context
    asked = _history_asked(info, ctx.limits)
    history = None
    if asked is None:
        record = await ctx.gateway.get_thread(thread_id, caller=ctx.caller)
    else:
        first, after, namespace = asked
        record, page = await ctx.gateway.thread_with_history(
            thread_id, namespace=namespace, first=first, after=after, caller=ctx.caller
        )
        history = History(first, after, namespace, page)
    if record is None:
        return None
    ctx.loaders.prime_threads([record])  # later Run.thread look-ups of this operation hit it
    node = mapping.thread_of(record)
    node.history = history
    return node


def _history_asked(info: Info[Context, Any], limits: Limits) -> tuple[int, str | None, str] | None:
    """(first, after, namespace) of the `checkpoints` page selected on this thread, when
    it is selected once, directly in the field's selection and with no directive, and
    its arguments pass the check `thread_checkpoints` makes before reading; else None
    (`checkpoints` then reads its page itself, after the thread, as any other field)."""
    raw = info._raw_info
    thread_type = get_nullable_type(raw.return_type)
    if not isinstance(thread_type, GraphQLObjectType):
        return None
    field = thread_type.fields.get("checkpoints")
    found: FieldNode | None = None
    for node in raw.field_nodes:
        for selection in node.selection_set.selections if node.selection_set else ():
            if isinstance(selection, FieldNode) and selection.name.value == "checkpoints":
                if found is not None or selection.directives:
                    return None
                found = selection
    if found is None or field is None:
        return None
    variables = raw.variable_values  # Strawberry's executor gives the coerced dict itself
    if not isinstance(variables, VariableValues):
        variables = VariableValues(sources={}, coerced=variables)
    try:
        args = get_argument_values(field, found, variables)
        first = check_first(args.get("first"), limits)
    except (GraphQLError, BadInputError):
        return None
    return first, args.get("after"), args.get("namespace") or ""


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
    history: History | None = None,
) -> c.CheckpointConnection:
    """A page of a namespace's history, newest first; `record`: the thread's, if read;
    `history`: the page read with it, used when it was read for these arguments."""
    ctx = info.context
    first = check_first(first, ctx.limits)
    namespace = namespace or ""
    if history is not None and (history.first, history.after, history.namespace) == (
        first,
        after,
        namespace,
    ):
        if isinstance(history.page, Exception):
            raise history.page
        page = history.page
    else:
        page = await ctx.gateway.list_checkpoints(
            thread_id,
            namespace=namespace,
            first=first,
            after=after,
            caller=ctx.caller,
            thread=record,
        )

    async def count() -> int:
        return await ctx.gateway.checkpoints_count(
            thread_id, namespace=namespace, caller=ctx.caller
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
