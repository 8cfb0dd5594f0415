"""A run's timeline and token usage, recorded from its stream as it goes.

LangGraph's `tasks` stream mode announces each node execution when it starts
(`id`, `name`, `input`, `triggers`) and again with its result (`id`, `name`,
`error`, `result`, `interrupts`), in subgraphs too (`subgraphs=True`). A step
is opened at the first and closed at the second, keyed by namespace and task
id, so parallel tasks and subgraphs nest correctly; steps stay in start order.

Usage is summed from the `messages` stream: LangGraph sends each streamed
chunk once and a message that was not streamed once (a final message whose id
its chunks already carried is dropped), so adding every `usage_metadata` it
sends counts each model call once, chunks and final message never both.

What happens to a step in flight when the run ends:
- cancelled, or failed elsewhere: closed at the moment the end is recorded,
  with the run's error ("cancelled" for a cancel);
- the executor is lost (a crash, a lapsed lease, a drain): the step stays
  open; the executor that resumes the run marks it "abandoned" (its end is not
  known) and runs the node again as a new step;
- a run resumed from its checkpoint replays the starts of tasks whose writes
  were already saved, without results: such a start opens nothing lasting (at
  a normal end, a step that never got its result is dropped: it did not run here).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from langchain_core.messages import AIMessage, AIMessageChunk

from code_hero.persistence.records import RunRecord, RunStatus, StepRecord
from code_hero.runs.events import namespace_of

__all__ = ["ABANDONED", "CANCELLED", "Timeline"]

ABANDONED = "abandoned: the executor running it stopped; the run went on elsewhere"
CANCELLED = "cancelled"


class Timeline:
    """The steps and token usage of one run, carried over from its record when resumed."""

    def __init__(self, record: RunRecord) -> None:
        self.steps: list[StepRecord] = [
            s if s.finished_at is not None or s.error else replace(s, error=ABANDONED)
            for s in record.steps
        ]
        self.input_tokens = record.input_tokens
        self.output_tokens = record.output_tokens
        self._open: dict[tuple[str, str], int] = {}  # (namespace, task id) -> index in steps

    def observe(self, ns: Sequence[str], mode: str, data: Any) -> bool:
        """Take one stream part; True when a step started or ended (worth storing: the
        event log stores it with its next batch, one update per run per batch)."""
        if mode == "tasks" and isinstance(data, Mapping):
            key = (namespace_of(ns), str(data.get("id")))
            if "input" in data:  # a start
                self._open[key] = len(self.steps)
                self.steps.append(StepRecord(str(data.get("name")), key[0], _now()))
                return True
            index = self._open.pop(key, None)
            if index is None:
                return False
            error = data.get("error")
            self.steps[index] = replace(
                self.steps[index],
                finished_at=_now(),
                error=None if error is None else f"{type(error).__name__}: {error}",
            )
            return True
        if mode == "messages" and isinstance(data, tuple) and len(data) == 2:
            message = data[0]
            if isinstance(message, (AIMessage, AIMessageChunk)) and message.usage_metadata:
                self.input_tokens += int(message.usage_metadata.get("input_tokens", 0))
                self.output_tokens += int(message.usage_metadata.get("output_tokens", 0))
        return False

    def end(self, status: RunStatus, error: str | None) -> None:
        """Settle the steps still open as the run ends with `status` (see module doc)."""
        if status in (RunStatus.SUCCESS, RunStatus.INTERRUPTED):
            gone = set(self._open.values())
            self.steps = [s for i, s in enumerate(self.steps) if i not in gone]
        else:
            at = _now()
            reason = CANCELLED if status is RunStatus.CANCELLED else error
            for index in self._open.values():
                self.steps[index] = replace(self.steps[index], finished_at=at, error=reason)
        self._open.clear()

    def fields(self) -> dict[str, Any]:
        """The RunRecord fields this timeline sets."""
        return {
            "steps": tuple(self.steps),
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
        }


def ended_at_cancel(steps: Sequence[StepRecord], at: datetime) -> tuple[StepRecord, ...] | None:
    """`steps` of a run cancelled while nobody executes it, with those its lost executor
    left open ended `CANCELLED` at `at`, as `Timeline.end` ends a step in flight at a
    cancel; None when none is open."""
    if all(s.finished_at is not None or s.error is not None for s in steps):
        return None
    return tuple(
        s
        if s.finished_at is not None or s.error is not None
        else replace(s, finished_at=at, error=CANCELLED)
        for s in steps
    )


def _now() -> datetime:
    return datetime.now(UTC)
