"""How a `runEvents` resolver takes part in a shared stream (see code_hero.fanout).

A WebSocket operation whose one root field is `runEvents` runs twice over:
once per subscriber as a *gate* (parse, validate, cost and read rate limit,
ownership: everything a subscription checks before it starts), whose resolver
only records what to follow; and once per distinct document, variables and
caller as a *producer*, whose events are executed and encoded once for all
its subscribers. The mode travels in a context variable: each operation runs
in its own task, so the mode of one never leaks into another.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from graphql import ArgumentNode, GraphQLResolveInfo, Node, VariableNode, visit
from graphql.language import Visitor

from code_hero.auth import Caller

__all__ = ["MODE", "Gate", "Mode", "after_variable", "checked", "producing"]


@dataclass(eq=False)
class Gate:
    """What a subscriber's gate found: the run to follow, from where, for whom."""

    run_id: str
    after_seq: int
    after_var: str | None  # the variable carrying afterSeq (not part of the share key)
    caller: Caller


@dataclass(eq=False)
class Mode:
    """The part this operation's task plays: a subscriber's gate, or a producer."""

    gate: bool
    after_seq: int = 0  # a producer follows the run after this seq
    found: Gate | None = None  # set by the resolver of a gate
    seq: int = 0  # a producer: the seq of the event being executed
    # Gates' checks under way, shared by the gates of one app (see `checked`).
    checks: dict[Hashable, asyncio.Future[None]] = field(default_factory=dict)


MODE: ContextVar[Mode | None] = ContextVar("code_hero_share_mode", default=None)


def producing() -> bool:
    """True while a producer executes: its subscribers' gates already paid the cost."""
    mode = MODE.get()
    return mode is not None and not mode.gate


class _Uses(Visitor):
    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.count = 0

    def enter_variable(self, node: VariableNode, *_: Any) -> None:
        if node.name.value == self.name:
            self.count += 1


def after_variable(info: GraphQLResolveInfo[Any]) -> str | None:
    """The variable that gives this field's `afterSeq`, if it is used nowhere else.

    Subscribers that differ only in where they start share one stream; a
    variable used elsewhere too (a directive) keeps its value in the key.
    """
    argument = next(
        (a for a in info.field_nodes[0].arguments or () if a.name.value == "afterSeq"), None
    )
    if not isinstance(argument, ArgumentNode) or not isinstance(argument.value, VariableNode):
        return None
    name = argument.value.name.value
    uses = _Uses(name)
    nodes: list[Node] = [info.operation, *info.fragments.values()]
    for node in nodes:
        visit(node, uses)
    return name if uses.count == 2 else None  # its definition and the argument


async def checked(
    checks: dict[Hashable, asyncio.Future[None]],
    key: Hashable,
    check: Callable[[], Awaitable[None]],
) -> None:
    """Run `check`, or wait for the same check (same run, start, types and caller) under way.

    A crowd subscribing at once to one run asks the database once instead of
    once each: a thousand lookups at once starved the pool into timeouts.
    Each gate still waits for the answer and fails with it.
    """
    pending = checks.get(key)
    if pending is None:
        pending = asyncio.ensure_future(check())
        checks[key] = pending

        def done(future: asyncio.Future[None]) -> None:
            checks.pop(key, None)
            if not future.cancelled():
                future.exception()  # retrieved: every waiter raises it

        pending.add_done_callback(done)
    await asyncio.shield(pending)
