"""How `code-hero run` shows a run: one event dispatch, a plain or a rich renderer.

`RunDisplay` reads each event once and tells its renderer what happened: a
transition, a piece of the answer, a tool call, a question, a status.
`PlainRenderer` writes lines (for pipes and logs); `RichRenderer` keeps a live
display on a terminal.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # the heavy modules load only once a run is shown
    from code_hero.persistence.records import EventRecord, RunRecord

__all__ = ["PlainRenderer", "Renderer", "RichRenderer", "RunDisplay", "jsonable"]


def jsonable(value: Any) -> Any:
    """A value `json.dumps` takes: times as ISO text, mappings and sequences walked."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


class Renderer(Protocol):
    """What a display does with each kind of news of a run."""

    def started(self, run: RunRecord) -> None: ...
    def transition(self, text: str, to: str) -> None: ...
    def delta(self, message_id: str | None, text: str) -> None: ...
    def tool_call(self, text: str) -> None: ...
    def question(self, text: str) -> None: ...
    def status(self, status: str, text: str, final: bool) -> None: ...
    def close(self) -> None: ...


class RunDisplay:
    """A run's events, each dispatched once to the renderer."""

    def __init__(self, renderer: Renderer) -> None:
        self.renderer = renderer

    @classmethod
    def for_stdout(cls) -> RunDisplay:
        """Rich on a terminal, plain lines otherwise."""
        return cls(RichRenderer() if sys.stdout.isatty() else PlainRenderer())

    def started(self, run: RunRecord) -> None:
        self.renderer.started(run)

    def event(self, event: EventRecord) -> None:
        from code_hero.runs.events import EventType, terminal_status

        payload = event.payload
        if event.type == EventType.AGENT_TRANSITION:
            self.renderer.transition(_transition(payload), str(payload.get("to")))
        elif event.type == EventType.MESSAGE_DELTA:
            self.renderer.delta(payload.get("message_id"), str(payload.get("delta", "")))
        elif event.type == EventType.TOOL_CALL:
            self.renderer.tool_call(f"{payload.get('agent')} called {payload.get('tool')}")
        elif event.type == EventType.INTERRUPT:
            self.renderer.question(_question(payload.get("value")))
        elif event.type == EventType.STATUS:
            final = terminal_status(event) is not None
            self.renderer.status(str(payload.get("status")), _status(payload), final)

    def close(self) -> None:
        self.renderer.close()


def _question(value: Any) -> str:
    if isinstance(value, Mapping) and isinstance(value.get("question"), str):
        return str(value["question"])
    return json.dumps(jsonable(value))


def _transition(payload: Mapping[str, Any]) -> str:
    text = f"{payload.get('from') or 'START'} -> {payload.get('to')}"
    return f"{text}: {payload['reason']}" if payload.get("reason") else text


def _status(payload: Mapping[str, Any]) -> str:
    error = payload.get("error")
    return f"{payload.get('status')}: {error}" if error else str(payload.get("status"))


class PlainRenderer:
    """Plain lines, message deltas streamed as they come (for pipes and logs)."""

    def __init__(self) -> None:
        self._message: str | None = None
        self._midline = False

    def _line(self, text: str) -> None:
        if self._midline:
            sys.stdout.write("\n")
            self._midline = False
            self._message = None
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    def started(self, run: RunRecord) -> None:
        self._line(f"[run] {run.run_id} on thread {run.thread_id} (graph {run.graph})")

    def transition(self, text: str, to: str) -> None:
        self._line(f"[transition] {text}")

    def delta(self, message_id: str | None, text: str) -> None:
        if self._midline and message_id != self._message:
            sys.stdout.write("\n")
        self._message = message_id
        sys.stdout.write(text)
        sys.stdout.flush()
        self._midline = True

    def tool_call(self, text: str) -> None:
        self._line(f"[tool] {text}")

    def question(self, text: str) -> None:
        self._line(f"[interrupt] {text}")

    def status(self, status: str, text: str, final: bool) -> None:
        if final:  # the run's own progress shows in the other lines
            self._line(f"[status] {text}")

    def close(self) -> None:
        if self._midline:
            self._line("")


class RichRenderer:
    """A live display: transitions printed above, the answer growing under a spinner."""

    STYLES = {"SUCCESS": "green", "INTERRUPTED": "yellow"}  # any other end is red

    def __init__(self) -> None:
        from rich.console import Console, Group
        from rich.live import Live
        from rich.spinner import Spinner
        from rich.text import Text

        self.console, self.answer = Console(), Text()
        self._message: str | None = None
        self.spinner = Spinner("dots", text="waiting for the run to start")
        self.group = Group(self.answer, self.spinner)
        self.live = Live(self.group, console=self.console, vertical_overflow="visible")

    def _print(self, mark: str, style: str, text: str) -> None:
        from rich.text import Text

        self.live.console.print(Text.assemble((mark + " ", style), text))

    def started(self, run: RunRecord) -> None:
        self.console.print(f"[dim]run[/] {run.run_id} [dim]on thread[/] [bold]{run.thread_id}")
        self.live.start()

    def transition(self, text: str, to: str) -> None:
        self._print("→", "cyan", text)
        self.spinner.update(text=f"{to} is working")

    def delta(self, message_id: str | None, text: str) -> None:
        if self.answer.plain and message_id != self._message:
            self.answer.append("\n\n")
        self._message = message_id
        self.answer.append(text)

    def tool_call(self, text: str) -> None:
        self._print("⚙", "magenta", text)

    def question(self, text: str) -> None:
        self._print("?", "bold yellow", text)

    def status(self, status: str, text: str, final: bool) -> None:
        from rich.text import Text

        if final:
            style = self.STYLES.get(status, "red")
            self.group.renderables[-1] = Text("● " + text, style=style)
        else:
            self.spinner.update(text=status.lower())

    def close(self) -> None:
        self.live.stop()
