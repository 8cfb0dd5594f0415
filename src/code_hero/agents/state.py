"""The state of the `code_hero` graph, and the reducers that merge updates into it.

Everything but `messages` is JSON-friendly. The record lists (`transitions`,
`tool_calls`, `human_feedback`, `errors`) merge by each record's `id`: a team
subgraph hands its whole final state back to the parent graph, which applies
it as one more update, and a plain list append would count every record twice.
For the same reason `timings` keeps the latest time per agent rather than a sum.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Annotated, Any

from langchain_core.messages import AnyMessage
from langgraph.graph.message import add_messages
from typing_extensions import TypedDict

__all__ = [
    "AgentState",
    "ErrorRecord",
    "FeedbackRecord",
    "ToolCallRecord",
    "TransitionRecord",
    "merge_records",
    "merge_timings",
    "new_record_id",
]


# A hand-off from one agent to another, and why ("from" is a keyword, hence this syntax).
TransitionRecord = TypedDict("TransitionRecord", {"id": str, "from": str, "to": str, "reason": str})


class ToolCallRecord(TypedDict):
    """One tool call made by an agent: its arguments and its result."""

    id: str
    agent: str
    tool: str
    args: dict[str, Any]
    result: Any


class FeedbackRecord(TypedDict):
    """A person's answer to an approval request."""

    id: str
    agent: str
    approved: bool
    feedback: str
    plan: dict[str, Any]


class ErrorRecord(TypedDict):
    """A failure an agent met and recovered from."""

    id: str
    agent: str
    error_type: str
    message: str


def new_record_id() -> str:
    """A fresh id for a record in one of the state's record lists."""
    return uuid.uuid4().hex


def merge_records(
    left: Sequence[Mapping[str, Any]] | None, right: Sequence[Mapping[str, Any]] | None
) -> list[Any]:
    """Append the records of `right` whose `id` is not in `left` yet, keeping order.

    TypeError for anything but a list of objects (an edit's values, say): LangGraph's
    update_state counts it as the caller's error, as add_messages' refusals."""
    if right is not None and not isinstance(right, list | tuple):
        raise TypeError(f"records must be a list of objects, got {type(right).__name__}")
    merged = list(left or [])
    seen = {record.get("id") for record in merged}
    for record in right or []:
        if not isinstance(record, Mapping):
            raise TypeError(f"a record must be an object, got {type(record).__name__}")
        key = record.get("id")
        if key is None or key not in seen:
            merged.append(record)
            seen.add(key)
    return merged


def merge_timings(
    left: Mapping[str, float] | None, right: Mapping[str, float] | None
) -> dict[str, float]:
    """Per-agent seconds: the latest measurement of each agent wins."""
    return {**(left or {}), **(right or {})}


class AgentState(TypedDict, total=False):
    """What the graph remembers between steps and turns of a thread."""

    messages: Annotated[list[AnyMessage], add_messages]
    route: dict[str, str]
    """The current team, lead and expert, with the reason (see `routing.Route`)."""
    transitions: Annotated[list[TransitionRecord], merge_records]
    tool_calls: Annotated[list[ToolCallRecord], merge_records]
    human_feedback: Annotated[list[FeedbackRecord], merge_records]
    timings: Annotated[dict[str, float], merge_timings]
    errors: Annotated[list[ErrorRecord], merge_records]
    require_approval: bool
    """Ask a person before handing the request to a team (also `configurable.require_approval`)."""
