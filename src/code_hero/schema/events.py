"""Run events: the ordered stream each run records, one type per kind of event.

`seq` starts at 1 and has no gaps within a run, so a client that lost its
connection resumes with `afterSeq`.
"""

from __future__ import annotations

from datetime import datetime

import strawberry

from code_hero.schema.enums import RunStatus
from code_hero.schema.scalars import JSON

__all__ = [
    "AgentTransition",
    "CheckpointSaved",
    "CustomEvent",
    "Interrupted",
    "MessageDelta",
    "NodeUpdate",
    "RunEvent",
    "RunStatusChanged",
    "ToolCall",
]


@strawberry.interface(description="One event of a run's ordered stream.")
class RunEvent:
    seq: int = strawberry.field(description="1, 2, 3, ... within the run, with no gaps.")
    run_id: strawberry.ID
    thread_id: strawberry.ID
    at: datetime


@strawberry.type(description="The run changed status; the last one ends the stream.")
class RunStatusChanged(RunEvent):
    status: RunStatus
    error: str | None


@strawberry.type(description="The supervisor or a team lead hands the work on.")
class AgentTransition(RunEvent):
    from_agent: str | None
    to_agent: str
    reason: str | None


@strawberry.type(description="A node finished and wrote this update.")
class NodeUpdate(RunEvent):
    node: str
    namespace: str
    update: JSON | None


@strawberry.type(description="A piece of an agent's message as it is produced.")
class MessageDelta(RunEvent):
    node: str
    message_id: str | None
    delta: str
    namespace: str = ""


@strawberry.type(description="A checkpoint was saved.")
class CheckpointSaved(RunEvent):
    checkpoint_id: strawberry.ID
    namespace: str
    step: int


@strawberry.type(description="The graph waits for human feedback: resume with startRun.")
class Interrupted(RunEvent):
    node: str
    value: JSON | None
    namespace: str = ""


@strawberry.type(description="An agent called a tool.")
class ToolCall(RunEvent):
    agent: str
    tool: str
    args: JSON | None
    result: JSON | None


@strawberry.type(description="A value the graph streamed itself (LangGraph's custom stream).")
class CustomEvent(RunEvent):
    namespace: str
    data: JSON | None


EVENT_TYPES: tuple[type[RunEvent], ...] = (
    RunStatusChanged,
    AgentTransition,
    NodeUpdate,
    MessageDelta,
    CheckpointSaved,
    Interrupted,
    ToolCall,
    CustomEvent,
)
