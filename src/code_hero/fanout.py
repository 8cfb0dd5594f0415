"""Shared `runEvents` streams: execute and encode each event once, fan out the text.

Subscribers of one run with the same document, operation, variables (all
but the one giving `afterSeq`) and caller see the same payloads, so one
*producer* per such key runs the subscription through Strawberry, as any
subscriber would, and keeps each encoded `next` payload in a window of the
last `window` entries. Each subscriber (a *member*) has passed its own gate
first (validation, cost, read rate limit, ownership: resolvers.sharing) and
then reads the window from where it starts, in its own task: a slow socket
holds up no one, and one that falls out of the window catches up from the
log by itself (as every subscriber did before), then rejoins the window. A
member that starts before the window does the same. The producer stops
when its stream ends or when its last member leaves.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import AsyncGenerator, Callable, Hashable, Mapping
from contextlib import aclosing
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

from graphql import FieldNode, GraphQLError, OperationDefinitionNode, OperationType, parse
from strawberry.schema import BaseSchema
from strawberry.types.execution import PreExecutionError

from code_hero.limits import MAX_CACHED_TEXT
from code_hero.resolvers.context import Context
from code_hero.resolvers.sharing import MODE, Gate, Mode

__all__ = ["Encoded", "Entry", "Fanout", "Request", "shareable"]

log = logging.getLogger(__name__)
WINDOW = 1024  # payloads a producer keeps for late joiners and slow members


class Encoded(dict[str, Any]):
    """A protocol message already encoded as JSON text: sent as it is."""

    def __init__(self, type: str, text: str) -> None:
        super().__init__(type=type)
        self.text = text


@dataclass(frozen=True, slots=True)
class Entry:
    """One result of a shared stream: a `next` payload's JSON text, or initial errors."""

    seq: int  # the event's seq (the last one's, for a result that is no event)
    fresh: bool  # a new event; else errors after the last one, for every member
    payload: str | None = None
    errors: list[Any] | None = None  # the operation failed before it started


@dataclass(frozen=True, slots=True)
class Request:
    """A subscription as a subscriber sent it, and how its results are encoded."""

    schema: BaseSchema
    query: str
    variables: Mapping[str, Any] | None
    operation_name: str | None
    context: Context
    encode: Callable[[object], str | bytes]


def shareable(query: str, operation_name: str | None) -> bool:
    """True for a subscription whose only root field is `runEvents` (no directive)."""
    # Cached for texts of a normal size only: a cache of huge texts is a memory sink.
    return len(query) <= MAX_CACHED_TEXT and _shareable(query, operation_name)


@lru_cache(maxsize=256)
def _shareable(query: str, operation_name: str | None) -> bool:
    try:
        document = parse(query)
    except GraphQLError:
        return False
    operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    if operation_name is not None:
        operations = [o for o in operations if o.name and o.name.value == operation_name]
    if len(operations) != 1 or operations[0].operation is not OperationType.SUBSCRIPTION:
        return False
    roots = operations[0].selection_set.selections
    return (
        len(roots) == 1
        and isinstance(roots[0], FieldNode)
        and roots[0].name.value == "runEvents"
        and not roots[0].directives
    )


async def results(request: Request, after_seq: int) -> AsyncGenerator[Entry, None]:
    """Run the subscription as a producer after `after_seq`, each result encoded once."""
    mode = Mode(gate=False, after_seq=after_seq)
    MODE.set(mode)  # this task runs nothing else of the operation's afterwards
    source = await request.schema.subscribe(
        request.query,
        variable_values=dict(request.variables or {}),
        context_value=request.context,
        operation_name=request.operation_name,
    )
    last = after_seq
    async with aclosing(source):
        async for result in source:
            if isinstance(result, PreExecutionError):
                yield Entry(last, False, errors=[e.formatted for e in result.errors or ()])
                return
            fresh, last = mode.seq > last, max(last, mode.seq)
            payload: dict[str, Any] = {"data": result.data}
            if result.errors:
                payload["errors"] = [e.formatted for e in result.errors]
            if result.extensions:
                payload["extensions"] = result.extensions
            text = request.encode(payload)
            yield Entry(last, fresh, payload=text if isinstance(text, str) else text.decode())


class Producer:
    """One shared stream: its task encodes every result once into a bounded window."""

    def __init__(self, fanout: Fanout, key: tuple[Any, ...], request: Request, after: int) -> None:
        self.fanout = fanout
        self.key = key
        self.request = request
        self.entries: deque[Entry] = deque()
        self.base = 0  # the index of entries[0] among every entry produced
        self.floor = after  # every event after this seq is in the window or yet to come
        self.done = False
        self.members = 0
        self.changed = asyncio.Event()
        self.task = asyncio.create_task(self._run())

    @property
    def end(self) -> int:
        """The index the next entry will have."""
        return self.base + len(self.entries)

    async def _run(self) -> None:
        try:
            async for entry in results(self.request, self.floor):
                self.entries.append(entry)
                if len(self.entries) > self.fanout.window:
                    self.floor = max(self.floor, self.entries.popleft().seq)
                    self.base += 1
                self.changed.set()  # wakes every waiting member, then re-arms
                self.changed.clear()
        except Exception:
            log.exception("shared run event stream failed")
            self.entries.append(
                Entry(
                    self.floor,
                    False,
                    errors=[{"message": "internal error", "extensions": {"code": "INTERNAL"}}],
                )
            )
        finally:
            self.done = True
            self.fanout._forget(self)
            self.changed.set()


class Fanout:
    """The shared streams of one app, by (document, operation, variables, caller)."""

    def __init__(self, window: int = WINDOW) -> None:
        self.window = window
        self.checks: dict[Hashable, asyncio.Future[None]] = {}  # gates' checks under way
        self._producers: dict[tuple[Any, ...], Producer] = {}

    def internal_sizes(self) -> dict[str, int]:
        """Open shared streams and their members."""
        return {
            "fanout.streams": len(self._producers),
            "fanout.members": sum(p.members for p in self._producers.values()),
        }

    def _forget(self, producer: Producer) -> None:
        if self._producers.get(producer.key) is producer:
            del self._producers[producer.key]

    async def follow(self, request: Request, gate: Gate) -> AsyncGenerator[Entry, None]:
        """The entries after the gate's `afterSeq`, in order, until the stream ends."""
        variables = {k: v for k, v in (request.variables or {}).items() if k != gate.after_var}
        caller = gate.caller
        key = (
            request.query,
            request.operation_name,
            json.dumps(variables, sort_keys=True, default=str),
            caller.user_id,
            caller.is_admin,
            caller.anonymous,
        )
        producer = self._producers.get(key)
        if producer is None:
            # No connection of its own: the first member's may close before the stream ends.
            context = replace(
                request.context,
                request=None,
                response=None,
                connection_params=None,
                observe_operation=None,
            )
            producer = Producer(self, key, replace(request, context=context), gate.after_seq)
            self._producers[key] = producer
        producer.members += 1
        try:
            async for entry in self._member(producer, request, gate.after_seq):
                yield entry
        finally:
            producer.members -= 1
            if producer.members == 0 and not producer.done:
                self._forget(producer)
                producer.task.cancel()

    async def _member(
        self, producer: Producer, request: Request, after: int
    ) -> AsyncGenerator[Entry, None]:
        while True:
            if after < producer.floor:  # before the window: from the log, until it reaches it
                async with aclosing(results(request, after)) as own:
                    async for entry in own:
                        if entry.fresh and entry.seq > producer.floor:
                            after = entry.seq - 1  # none wanted in between: rejoin here
                            break
                        yield entry
                        if not entry.fresh:
                            return
                        after = entry.seq
                    else:
                        return
                continue  # the window may have moved on while the replay closed
            index = producer.base
            while index >= producer.base:
                if index < producer.end:
                    entry = producer.entries[index - producer.base]
                    index += 1
                    if not entry.fresh or entry.seq > after:
                        yield entry
                        if not entry.fresh:
                            return
                        after = entry.seq
                elif producer.done:
                    return
                else:
                    await producer.changed.wait()
            # Fell out of the window (a slow socket): catch up from the log.
