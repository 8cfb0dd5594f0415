"""The graph's nodes: the supervisor, the team leads and the experts.

Each node returns a state update with what it did: a transition record per
hand-off, a tool-call record per tool run, its own time in `timings`, and any
recovered failure in `errors`. Hand-offs and tool calls are also written to the
custom stream as they happen, so `stream_mode="custom"` shows them live.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Mapping
from typing import Any, Protocol

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.runnables import RunnableConfig
from langgraph.config import get_stream_writer
from langgraph.errors import GraphBubbleUp
from langgraph.graph import END
from langgraph.types import Command, interrupt

from code_hero.agents.catalog import SUPERVISOR, system_prompt, team_lead
from code_hero.agents.replies import FEEDBACK_HEADING, FINDINGS_HEADING
from code_hero.agents.routing import Route, route_request
from code_hero.agents.state import (
    AgentState,
    ErrorRecord,
    FeedbackRecord,
    ToolCallRecord,
    TransitionRecord,
    new_record_id,
)
from code_hero.agents.tools import TOOLS, extract_code

__all__ = [
    "POST_TOOLS",
    "PRE_TOOLS",
    "Node",
    "make_expert_node",
    "make_lead_node",
    "parse_approval",
    "supervisor_node",
]


class Node(Protocol):
    """An async graph node over `AgentState` that reads the run config."""

    def __call__(self, state: AgentState, config: RunnableConfig) -> Awaitable[Any]: ...


PRE_TOOLS: Mapping[str, tuple[str, ...]] = {
    "CODE_REVIEWER": ("check_python",),
    "STANDARDS_ENFORCER": ("style_check",),
}
"""Tools an agent runs on the code quoted in the request before it answers."""

POST_TOOLS: Mapping[str, tuple[str, ...]] = {"CODE_GENERATOR": ("check_python",)}
"""Tools an agent runs on the code in its own answer, to check what it wrote."""

_REFUSALS = frozenset({"no", "n", "reject", "rejected", "deny", "denied", "stop", "cancel"})


def _last_request(state: AgentState) -> str:
    messages = state.get("messages", [])
    return next((str(m.text) for m in reversed(messages) if isinstance(m, HumanMessage)), "")


def _transition(source: str, target: str, reason: str) -> TransitionRecord:
    record: TransitionRecord = {
        "id": new_record_id(),
        "from": source,
        "to": target,
        "reason": reason,
    }
    get_stream_writer()({"type": "agent_transition", **record})
    return record


def _approval_required(state: AgentState, config: RunnableConfig) -> bool:
    configurable = config.get("configurable") or {}
    return bool(configurable.get("require_approval") or state.get("require_approval"))


def parse_approval(answer: Any) -> tuple[bool, str]:
    """(approved, feedback) from a resume value: a bool, a string or {"approved", "feedback"}.

    A string approves, and is kept as feedback, unless it is a refusal such as "no"
    or "reject: <why>"; a mapping without "approved" approves.
    """
    if isinstance(answer, bool):
        return answer, ""
    if isinstance(answer, Mapping):
        return bool(answer.get("approved", True)), str(answer.get("feedback") or "")
    text = "" if answer is None else str(answer).strip()
    first = text.split(maxsplit=1)[0].strip(".,:;!").lower() if text else ""
    return first not in _REFUSALS, text


def _question(route: Route) -> str:
    who = "who answers it" if route.expert == route.lead else f"who passes it to {route.expert}"
    return f"Hand this request to the {route.team} team's lead {route.lead}, {who}?"


async def supervisor_node(state: AgentState, config: RunnableConfig) -> Command[str]:
    """Route the request to a team, asking a person first when approval is required."""
    started = time.perf_counter()
    request = _last_request(state)
    route = route_request(request)
    plan: dict[str, str] = route.as_dict()
    update: dict[str, Any] = {"route": plan}
    if _approval_required(state, config):
        # Everything above re-runs on resume; it is pure, so that is harmless.
        answer = interrupt(
            {
                "type": "approval_request",
                "agent": SUPERVISOR,
                "request": request,
                "plan": plan,
                "question": _question(route),
            }
        )
        approved, feedback = parse_approval(answer)
        record: FeedbackRecord = {
            "id": new_record_id(),
            "agent": SUPERVISOR,
            "approved": approved,
            "feedback": feedback,
            "plan": dict(plan),
        }
        update["human_feedback"] = [record]
        if not approved:
            text = f"{SUPERVISOR}: the plan to hand this to {route.lead} was not approved"
            text += f" ({feedback})." if feedback else "."
            update["messages"] = [AIMessage(content=text, name=SUPERVISOR)]
            update["timings"] = {SUPERVISOR: time.perf_counter() - started}
            return Command(goto=END, update=update)
        plan["feedback"] = feedback
    reason = f"{route.reason}; the {route.team} team handles it"
    update["transitions"] = [_transition(SUPERVISOR, route.lead, reason)]
    update["timings"] = {SUPERVISOR: time.perf_counter() - started}
    return Command(goto=route.team, update=update)


def _team_route(state: AgentState, team: str) -> Route:
    """The supervisor's route if it chose this team, else this team's own choice."""
    plan = state.get("route") or {}
    lead = team_lead(team).name
    if plan.get("team") == team:
        return Route(team, lead, plan["expert"], plan["reason"])
    route = route_request(_last_request(state))
    if route.team == team:
        return route
    return Route(team, lead, lead, f"the request was sent straight to the {team} team")


def make_lead_node(team: str, model: BaseChatModel) -> Node:
    """The node of `team`'s lead: pass the request to the expert, or answer it itself."""
    lead = team_lead(team).name
    answer = make_expert_node(lead, model)

    async def lead_node(state: AgentState, config: RunnableConfig) -> Command[str]:
        started = time.perf_counter()
        route = _team_route(state, team)
        if route.expert == lead:
            return Command(goto=END, update=await answer(state, config))
        reason = f"{route.reason}; {route.expert} is the {team} specialist for it"
        update = {
            "transitions": [_transition(lead, route.expert, reason)],
            "timings": {lead: time.perf_counter() - started},
        }
        return Command(goto=route.expert, update=update)

    lead_node.__name__ = f"{lead.lower()}_lead"
    return lead_node


def _run_tools(agent: str, names: tuple[str, ...], text: str) -> list[ToolCallRecord]:
    writer = get_stream_writer()
    records: list[ToolCallRecord] = []
    for code in extract_code(text):
        for name in names:
            result = TOOLS[name](code)
            record: ToolCallRecord = {
                "id": new_record_id(),
                "agent": agent,
                "tool": name,
                "args": {"code": code},
                "result": result,
            }
            writer({"type": "tool_call", **record})
            records.append(record)
    return records


def _describe(record: ToolCallRecord, number: int) -> list[str]:
    """Findings of one tool call, one line each, for the agent's prompt."""
    result, where = record["result"], f"{record['tool']} on snippet {number}"
    if record["tool"] == "check_python":
        if result["ok"]:
            return [f"{where}: compiles without errors"]
        return [
            f"{where}: line {e['line']}, col {e['col']}: {e['message']}" for e in result["errors"]
        ]
    issues = result.get("issues", [])
    if not issues:
        return [f"{where}: no issues"]
    return [f"{where}: line {i['line']} ({i['rule']}): {i['message']}" for i in issues]


def _prompt(agent: str, state: AgentState, records: list[ToolCallRecord]) -> str:
    parts = [system_prompt(agent)]
    feedback = (state.get("route") or {}).get("feedback")
    if feedback:
        parts.append(f"{FEEDBACK_HEADING} {feedback}")
    if agent in PRE_TOOLS:
        lines = [line for n, r in enumerate(records, 1) for line in _describe(r, n)]
        parts.append(FINDINGS_HEADING)
        parts.extend(lines or ["no Python code was quoted in the request, so none was checked"])
    return "\n".join(parts)


def make_expert_node(agent: str, model: BaseChatModel) -> Node:
    """The node of an expert: run its tools, answer through the chat model (streamed)."""

    async def expert_node(state: AgentState, config: RunnableConfig) -> dict[str, Any]:
        started = time.perf_counter()
        records = _run_tools(agent, PRE_TOOLS.get(agent, ()), _last_request(state))
        prompt: list[BaseMessage] = [SystemMessage(_prompt(agent, state, records))]
        errors: list[ErrorRecord] = []
        try:
            reply = await model.ainvoke(prompt + list(state.get("messages", [])), config)
            message: BaseMessage = reply.model_copy(update={"name": agent})
        except GraphBubbleUp:
            raise
        except Exception as exc:  # a failing model must not lose the run: record it, say so
            kind, detail = type(exc).__name__, str(exc)
            errors.append(
                {"id": new_record_id(), "agent": agent, "error_type": kind, "message": detail}
            )
            message = AIMessage(
                content=f"{agent}: I could not answer ({kind}: {detail}).", name=agent
            )
        records += _run_tools(agent, POST_TOOLS.get(agent, ()), str(message.text))
        update: dict[str, Any] = {
            "messages": [message],
            "timings": {agent: time.perf_counter() - started},
        }
        if records:
            update["tool_calls"] = records
        if errors:
            update["errors"] = errors
        return update

    expert_node.__name__ = f"{agent.lower()}_expert"
    return expert_node
