"""Runs: one execution of a graph on a thread, and what starts, lists and deletes them."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated

import strawberry

from code_hero.resolvers import runs as resolve
from code_hero.resolvers.context import Context
from code_hero.schema import fields
from code_hero.schema.enums import MultitaskStrategy, RunSortField, RunStatus, SortDirection
from code_hero.schema.events import RunEvent
from code_hero.schema.paging import Counter, LazyCursorEdge, PageInfo
from code_hero.schema.scalars import JSON
from code_hero.schema.timeline import RunStep, TokenUsage

if TYPE_CHECKING:
    from code_hero.schema.threads import Thread

__all__ = [
    "DeleteRunPayload",
    "Run",
    "RunConnection",
    "RunEdge",
    "RunFilter",
    "RunSort",
    "StartRunInput",
]

Info = strawberry.Info[Context, None]


@strawberry.type(description="One execution of a graph on a thread.")
class Run:
    id: strawberry.ID
    thread_id: strawberry.ID
    graph: str = strawberry.field(description="Name of the graph that runs.")
    status: RunStatus
    input: JSON | None
    output: JSON | None = strawberry.field(description="Final state values, when SUCCESS.")
    error: str | None = strawberry.field(description="What went wrong, when ERROR.")
    metadata: JSON
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    user_id: str | None = None
    multitask: MultitaskStrategy = MultitaskStrategy.REJECT
    duration_ms: float | None = strawberry.field(
        default=None, description="finishedAt - startedAt; null while unfinished."
    )
    usage: TokenUsage = strawberry.field(
        default_factory=lambda: TokenUsage(input_tokens=0, output_tokens=0, total_tokens=0),
        description="Tokens the run's chat models reported (zeros when none did).",
    )
    steps: list[RunStep] = strawberry.field(
        default_factory=list,
        description="Every node execution, in start order (a timeline).",
    )

    @fields.field("The thread the run belongs to (null once it is deleted).")
    async def thread(
        self, info: Info
    ) -> Annotated[Thread, strawberry.lazy("code_hero.schema.threads")] | None:
        return await resolve.run_thread(info, self.thread_id)

    @fields.field("The recorded event history, in order, after `afterSeq`.")
    async def events(
        self, info: Info, after_seq: int | None = 0, first: int | None = 100
    ) -> list[RunEvent]:
        return await resolve.run_events(info, self.id, after_seq, first)


@strawberry.type
class RunEdge(LazyCursorEdge):
    node: Run


@strawberry.type(description="A page of runs, newest first.")
class RunConnection:
    edges: list[RunEdge]
    page_info: PageInfo
    count: strawberry.Private[Counter]

    @fields.field("How many runs match in all (counted only when asked for).")
    async def total_count(self) -> int:
        return await self.count()


@strawberry.input(description="Which runs to list; every given field must match.")
class RunFilter:
    thread_id: strawberry.ID | None = None
    status: RunStatus | None = None
    graph: str | None = None
    user_id: str | None = None
    statuses: list[RunStatus] | None = strawberry.field(
        default=None, description="One of these statuses."
    )
    metadata: JSON | None = strawberry.field(
        default=None,
        description="A JSON object; a run matches when its metadata contains it.",
    )
    created_after: datetime | None = None
    created_before: datetime | None = None


@strawberry.input(description="The order of a listing of runs (default: CREATED_AT DESC).")
class RunSort:
    field: RunSortField = RunSortField.CREATED_AT
    direction: SortDirection = SortDirection.DESC


@strawberry.input(
    description=(
        "What to run: give exactly one of message, input and resume; or, with threadId, "
        "none, to go on from the thread's checkpoint (fromCheckpointId's, else its latest)."
    )
)
class StartRunInput:
    thread_id: strawberry.ID | None = strawberry.field(
        default=None, description="An existing thread; null creates one."
    )
    message: str | None = strawberry.field(
        default=None, description="A user message for the graph (the common case)."
    )
    input: JSON | None = strawberry.field(
        default=strawberry.UNSET, description="Or the raw graph input, a JSON object."
    )
    resume: JSON | None = strawberry.field(
        default=strawberry.UNSET,
        description="The answer to an interrupt (human feedback) on an INTERRUPTED thread.",
    )
    from_checkpoint_id: strawberry.ID | None = strawberry.field(
        default=None, description="Run from this past checkpoint of the thread (a fork)."
    )
    graph: str | None = strawberry.field(
        default=None, description="Default: the server's default graph."
    )
    user_id: str | None = None
    metadata: JSON | None = None
    config: JSON | None = strawberry.field(
        default=None, description="Extra `configurable` values for the graph (a JSON object)."
    )
    multitask: MultitaskStrategy | None = MultitaskStrategy.REJECT
    wait: bool | None = strawberry.field(
        default=False, description="True: answer only when the run has ended."
    )
    webhook: str | None = strawberry.field(
        default=None, description="A URL told (POST, signed) when this run ends."
    )


@strawberry.type(description="What deleting a run removed.")
class DeleteRunPayload:
    run_id: strawberry.ID
    deleted: bool = strawberry.field(description="False when no such run existed.")
