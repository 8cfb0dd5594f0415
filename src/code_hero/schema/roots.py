"""The root types: Query, Mutation and Subscription."""

from __future__ import annotations

from collections.abc import AsyncIterator

import strawberry

from code_hero.resolvers import checkpoints as checkpoint_resolvers
from code_hero.resolvers import runs as run_resolvers
from code_hero.resolvers import subscriptions as subscription_resolvers
from code_hero.resolvers import system as system_resolvers
from code_hero.resolvers import threads as thread_resolvers
from code_hero.resolvers.context import Context
from code_hero.schema import fields
from code_hero.schema.checkpoints import Checkpoint
from code_hero.schema.enums import RunEventType
from code_hero.schema.events import RunEvent
from code_hero.schema.graphs import Graph
from code_hero.schema.health import Health
from code_hero.schema.runs import (
    DeleteRunPayload,
    Run,
    RunConnection,
    RunFilter,
    RunSort,
    StartRunInput,
)
from code_hero.schema.threads import (
    DeleteThreadPayload,
    Thread,
    ThreadConnection,
    ThreadFilter,
    ThreadSort,
)

__all__ = ["Mutation", "Query", "Subscription"]

Info = strawberry.Info[Context, None]


@strawberry.type
class Query:
    @fields.field("Whether checkpoints are stored, probed now.")
    async def health(self, info: Info) -> Health:
        return await system_resolvers.health(info)

    @fields.field("One thread, or null.")
    async def thread(self, info: Info, id: strawberry.ID) -> Thread | None:
        return await thread_resolvers.thread(info, id)

    @fields.field("Threads, most recently updated first. `first` is at most 100.")
    async def threads(
        self,
        info: Info,
        first: int | None = 20,
        after: str | None = None,
        filter: ThreadFilter | None = None,
        order_by: ThreadSort | None = None,
    ) -> ThreadConnection:
        return await thread_resolvers.threads(info, first, after, filter, order_by)

    @fields.field("A checkpoint by id, or the namespace's latest when id is null.")
    async def checkpoint(
        self,
        info: Info,
        thread_id: strawberry.ID,
        id: strawberry.ID | None = None,
        namespace: str | None = "",
    ) -> Checkpoint | None:
        return await checkpoint_resolvers.checkpoint(info, thread_id, id, namespace)

    @fields.field("One run, or null.")
    async def run(self, info: Info, id: strawberry.ID) -> Run | None:
        return await run_resolvers.run(info, id)

    @fields.field("Runs, newest first. `first` is at most 100.")
    async def runs(
        self,
        info: Info,
        first: int | None = 20,
        after: str | None = None,
        filter: RunFilter | None = None,
        order_by: RunSort | None = None,
    ) -> RunConnection:
        return await run_resolvers.runs(info, first, after, filter, order_by)

    @fields.field("The graphs runs can name, the default first.")
    def graphs(self, info: Info) -> list[Graph]:
        return system_resolvers.graphs(info)


@strawberry.type
class Mutation:
    @fields.mutation(
        "Start a run (or queue it, per `multitask`); with `wait`, answer when it ends."
    )
    async def start_run(self, info: Info, input: StartRunInput) -> Run:
        return await run_resolvers.start_run(info, input)

    @fields.mutation("Cancel a run; a finished run is returned unchanged.")
    async def cancel_run(self, info: Info, id: strawberry.ID) -> Run:
        return await run_resolvers.cancel_run(info, id)

    @fields.mutation("Cancel the run if it is going, then delete it and its events.")
    async def delete_run(self, info: Info, id: strawberry.ID) -> DeleteRunPayload:
        return await run_resolvers.delete_run(info, id)

    @fields.mutation("Cancel the thread's runs, then delete it everywhere.")
    async def delete_thread(self, info: Info, id: strawberry.ID) -> DeleteThreadPayload:
        return await thread_resolvers.delete_thread(info, id)


@strawberry.type
class Subscription:
    @fields.subscription(
        "Replays the recorded events after afterSeq, then follows the run live; "
        "completes after the event that ends the run (SUCCESS, ERROR, INTERRUPTED or "
        "CANCELLED). Works on any replica that shares the database. With `types`, only "
        "events of these types (seq keeps its run-wide numbers; the run's end still "
        "completes the stream)."
    )
    async def run_events(
        self,
        info: Info,
        run_id: strawberry.ID,
        after_seq: int | None = 0,
        types: list[RunEventType] | None = None,
    ) -> AsyncIterator[RunEvent]:
        return await subscription_resolvers.run_events(info, run_id, after_seq, types)

    @fields.subscription("Every event of every run on the thread from now on; never completes.")
    async def thread_events(self, info: Info, thread_id: strawberry.ID) -> AsyncIterator[RunEvent]:
        return await subscription_resolvers.thread_events(info, thread_id)

    @fields.subscription(
        "Starts a run (as startRun; `wait` is ignored) and follows it in the same "
        "operation, from its first event; ends like runEvents. A client that loses the "
        "connection continues with runEvents(runId, afterSeq)."
    )
    async def run_stream(
        self, info: Info, input: StartRunInput, types: list[RunEventType] | None = None
    ) -> AsyncIterator[RunEvent]:
        return await subscription_resolvers.run_stream(info, input, types)
