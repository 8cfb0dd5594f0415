"""A run's timeline and token usage: what a Gantt view of a run draws."""

from __future__ import annotations

from datetime import datetime

import strawberry

__all__ = ["RunStep", "TokenUsage"]


@strawberry.type(description="One node execution of a run (a bar of its timeline).")
class RunStep:
    node: str
    namespace: str = strawberry.field(
        description='The subgraph it ran in ("" for the root graph), as checkpoints name it.'
    )
    started_at: datetime
    finished_at: datetime | None = strawberry.field(description="Null while the node runs.")
    duration_ms: float | None
    error: str | None = strawberry.field(
        description="Why it failed, or what ended it (a cancel, a lost executor)."
    )


@strawberry.type(description="Tokens chat models reported in their usage metadata.")
class TokenUsage:
    input_tokens: int
    output_tokens: int
    total_tokens: int
