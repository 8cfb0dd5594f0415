"""The seed's one-call entry point: `process_with_hierarchical_agents`."""

from __future__ import annotations

import os
import uuid
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, HumanMessage

from code_hero.agents.graph import build_code_hero_graph
from code_hero.agents.model import make_chat_model
from code_hero.config import CheckpointerConfig, config_for_environment
from code_hero.errors import BadInputError
from code_hero.persistence.manager import EnhancedCheckpointerManager

__all__ = ["final_answer", "process_with_hierarchical_agents"]


async def process_with_hierarchical_agents(
    message: str,
    conversation_id: str | None = None,
    user_id: str | None = None,
    enable_memory: bool = True,
    environment: str = "development",
    checkpointer_config: CheckpointerConfig | None = None,
    *,
    manager: EnhancedCheckpointerManager | None = None,
    model: BaseChatModel | None = None,
) -> str:
    """Run the `code_hero` graph on one message and return its final answer.

    `conversation_id` is the checkpoint thread (a new one when omitted). With
    `enable_memory` the run is checkpointed through a manager built from
    `checkpointer_config` or the environment's rules, or through `manager`
    when given (a memory backend only keeps history across calls that way).
    """
    if not isinstance(message, str) or not message.strip():
        raise BadInputError("message must be a non-empty string")
    chat = model if model is not None else make_chat_model(os.environ.get("CODE_HERO_MODEL"))
    builder = build_code_hero_graph(chat)
    configurable: dict[str, Any] = {"thread_id": conversation_id or f"conv_{uuid.uuid4().hex}"}
    if user_id is not None:
        configurable["user_id"] = user_id
    inputs: Any = {"messages": [HumanMessage(message)]}
    if not enable_memory:
        result = await builder.compile().ainvoke(inputs, {"configurable": configurable})
        return final_answer(result)
    owned = manager is None
    mgr = manager or EnhancedCheckpointerManager(
        checkpointer_config or config_for_environment(environment), environment=environment
    )
    if owned:
        await mgr.initialize()
    try:
        graph = builder.compile(checkpointer=mgr.get_checkpointer())
        result = await graph.ainvoke(inputs, {"configurable": configurable})
    finally:
        if owned:
            await mgr.cleanup()
    return final_answer(result)


def final_answer(result: Any) -> str:
    """The text of the last AI message of a final state (or the pending question)."""
    interrupts = result.get("__interrupt__") if isinstance(result, dict) else None
    if interrupts:
        value = interrupts[0].value
        question = value.get("question") if isinstance(value, dict) else None
        return str(question or value)
    for msg in reversed(result.get("messages", []) if isinstance(result, dict) else []):
        if isinstance(msg, AIMessage):
            return msg.text if isinstance(msg.text, str) else str(msg.content)
    return ""
