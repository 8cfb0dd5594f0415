"""Human edits: the `updateState` input and what an interrupted thread waits for."""

from __future__ import annotations

import strawberry

from code_hero.schema.scalars import JSON

__all__ = ["PendingInterrupt", "UpdateStateInput"]


@strawberry.type(description="A question an INTERRUPTED thread waits to have answered.")
class PendingInterrupt:
    id: strawberry.ID = strawberry.field(description="LangGraph's interrupt id.")
    node: str = strawberry.field(description="The node that asked.")
    namespace: str = strawberry.field(
        description="Empty for the root graph, otherwise the subgraph's checkpoint namespace."
    )
    value: JSON | None = strawberry.field(description="What the graph asked.")
    run_id: strawberry.ID | None = strawberry.field(description="The run that stopped there.")


@strawberry.input(description="A human edit of a thread's state, saved as a checkpoint.")
class UpdateStateInput:
    thread_id: strawberry.ID
    values: JSON = strawberry.field(
        description="Applied as a node's update would be (reducers apply)."
    )
    as_node: str | None = strawberry.field(
        default=None, description="The node the update counts as; null: LangGraph's own choice."
    )
    checkpoint_id: strawberry.ID | None = strawberry.field(
        default=None, description="Edit from this past checkpoint (a fork); null: the latest."
    )
    namespace: str | None = ""
