"""The root types: Query, Mutation and Subscription."""

from __future__ import annotations

from collections.abc import AsyncIterator

import strawberry

from code_hero.resolvers import checkpoints as checkpoint_resolvers
from code_hero.resolvers import edits as edit_resolvers
from code_hero.resolvers import runs as run_resolvers
from code_hero.resolvers import stats as stats_resolvers
from code_hero.resolvers import subscriptions as subscription_resolvers
from code_hero.resolvers import system as system_resolvers
from code_hero.resolvers import thread_admin as thread_admin_resolvers
from code_hero.resolvers import threads as thread_resolvers
from code_hero.resolvers import webhooks as webhook_resolvers
from code_hero.resolvers.context import Context
from code_hero.schema import fields
from code_hero.schema.checkpoints import Checkpoint
from code_hero.schema.edits import UpdateStateInput
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
from code_hero.schema.stats import RunStats, TimeBucket
from code_hero.schema.thread_admin import (
    CreateThreadInput,
    DeleteThreadsPayload,
    PruneThreadsInput,
    PruneThreadsPayload,
    UpdateThreadInput,
)
from code_hero.schema.threads import (
    DeleteThreadPayload,
    Thread,
    ThreadConnection,
    ThreadFilter,
    ThreadSort,
)
from code_hero.schema.webhooks import (
    CreateWebhookInput,
    CreateWebhookPayload,
    DeliveryStatus,
    Webhook,
    WebhookDeliveryConnection,
)

__all__ = ["Mutation", "Query", "Subscription"]

Info = strawberry.Info[Context, None]


@strawberry.type
class Query:
    @fields.field("Whether checkpoints are stored: the last probe's answer (every few seconds).")
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

    @fields.field(
        "Statistics of the runs the filter matches (a user's: on its own threads), with a "
        "time series when `bucket` is given."
    )
    async def run_stats(
        self, info: Info, filter: RunFilter | None = None, bucket: TimeBucket | None = None
    ) -> RunStats:
        return await stats_resolvers.run_stats(info, filter, bucket)

    @fields.field("The graphs runs can name, the default first.")
    def graphs(self, info: Info) -> list[Graph]:
        return system_resolvers.graphs(info)

    @fields.field("The caller's webhooks (an administrator: everyone's), oldest first.")
    async def webhooks(self, info: Info) -> list[Webhook]:
        return await webhook_resolvers.webhooks(info)

    @fields.field("The caller's webhook deliveries, newest first. `first` is at most 100.")
    async def webhook_deliveries(
        self,
        info: Info,
        first: int | None = 20,
        after: str | None = None,
        webhook_id: strawberry.ID | None = None,
        run_id: strawberry.ID | None = None,
        status: DeliveryStatus | None = None,
    ) -> WebhookDeliveryConnection:
        return await webhook_resolvers.webhook_deliveries(
            info, first, after, webhook_id, run_id, status
        )


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

    @fields.mutation(
        "A human edit, saved as a checkpoint (source UPDATE): applied as a node's update "
        "(reducers apply), to the latest checkpoint or, a fork, to a past one."
    )
    async def update_state(self, info: Info, input: UpdateStateInput) -> Checkpoint:
        return await edit_resolvers.update_state(info, input)

    @fields.mutation("Register a webhook; the answer holds its signing secret, shown only here.")
    async def create_webhook(self, info: Info, input: CreateWebhookInput) -> CreateWebhookPayload:
        return await webhook_resolvers.create_webhook(info, input)

    @fields.mutation("Delete one of the caller's webhooks and its deliveries.")
    async def delete_webhook(self, info: Info, id: strawberry.ID) -> bool:
        return await webhook_resolvers.delete_webhook(info, id)

    @fields.mutation("A new thread: its own id or a new UUID, metadata, owner and ttl.")
    async def create_thread(self, info: Info, input: CreateThreadInput) -> Thread:
        return await thread_admin_resolvers.create_thread(info, input)

    @fields.mutation("Merge metadata into a thread (a key set to null is removed); set its ttl.")
    async def update_thread(self, info: Info, input: UpdateThreadInput) -> Thread:
        return await thread_admin_resolvers.update_thread(info, input)

    @fields.mutation("A new thread with the same checkpoints and metadata, no runs.")
    async def copy_thread(self, info: Info, id: strawberry.ID) -> Thread:
        return await thread_admin_resolvers.copy_thread(info, id)

    @fields.mutation("Cancel the runs of up to `limit` matching threads and delete them.")
    async def delete_threads(
        self, info: Info, filter: ThreadFilter, limit: int | None = 100
    ) -> DeleteThreadsPayload:
        return await thread_admin_resolvers.delete_threads(info, filter, limit)

    @fields.mutation("Delete threads not updated since olderThan; keep the latest N checkpoints.")
    async def prune_threads(self, info: Info, input: PruneThreadsInput) -> PruneThreadsPayload:
        return await thread_admin_resolvers.prune_threads(info, input)


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
