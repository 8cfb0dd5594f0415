"""Chat models for the agents: the offline one, and the factory that picks a model.

`OfflineChatModel` needs no network and no key and always says the same thing
to the same messages; it streams its reply word by word, so LangGraph's
`stream_mode="messages"` shows real token deltas.

It reports honest usage for what it reads and says, in its own tokens (the
word-sized pieces of `tokenize`): input tokens are the pieces of every message
it was given, output tokens the pieces it answers with. Streamed, the first
chunk carries the input count and every chunk one output token, so the chunks
add up to exactly what the whole message reports.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from langchain_core.callbacks import (
    AsyncCallbackManagerForLLMRun,
    CallbackManagerForLLMRun,
)
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult

from code_hero.agents.replies import compose_reply, tokenize
from code_hero.errors import ConfigurationError

__all__ = ["OFFLINE", "OfflineChatModel", "make_chat_model"]

OFFLINE = "offline"


class OfflineChatModel(BaseChatModel):
    """A deterministic chat model that answers in the role its system prompt names."""

    token_delay: float = 0.0
    """Seconds to wait before each streamed token (lets tests watch a run in flight)."""

    @property
    def _llm_type(self) -> str:
        return "code-hero-offline"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model": OFFLINE, "token_delay": self.token_delay}

    def reply_to(self, messages: Sequence[BaseMessage]) -> str:
        """The whole reply to `messages`: a function of the system prompt and last request."""
        system = "\n".join(m.text for m in messages if m.type == "system")
        request = next((m.text for m in reversed(messages) if isinstance(m, HumanMessage)), "")
        return compose_reply(system, request)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        pieces = tokenize(self.reply_to(messages))
        message = AIMessage(
            content="".join(pieces), usage_metadata=_usage(_read(messages), len(pieces))
        )
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _chunks(self, messages: list[BaseMessage]) -> Iterator[ChatGenerationChunk]:
        read = _read(messages)
        for i, piece in enumerate(tokenize(self.reply_to(messages))):
            usage = _usage(read if i == 0 else 0, 1)
            yield ChatGenerationChunk(message=AIMessageChunk(content=piece, usage_metadata=usage))

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        yield from self._chunks(messages)

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        for chunk in self._chunks(messages):
            # Always yield to the loop, so a long reply never starves other tasks.
            await asyncio.sleep(self.token_delay)
            yield chunk


def _read(messages: Sequence[BaseMessage]) -> int:
    """The input tokens of a call: the pieces of every message's text."""
    return sum(len(tokenize(m.text)) for m in messages)


def _usage(input_tokens: int, output_tokens: int) -> UsageMetadata:
    return UsageMetadata(
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        total_tokens=input_tokens + output_tokens,
    )


def make_chat_model(spec: str | None = None) -> BaseChatModel:
    """The chat model named by `spec`: None or "offline", else "provider:model"."""
    if spec is None or spec.strip().lower() == OFFLINE:
        return OfflineChatModel()
    if not spec.strip():
        raise ConfigurationError('Empty model spec: use "offline" or "provider:model".')
    try:
        from langchain.chat_models import init_chat_model
    except ImportError:
        raise ConfigurationError(
            f"Model {spec!r} needs the 'langchain' package and its provider package "
            "(for example: pip install langchain langchain-openai), "
            'or use the built-in "offline" model.'
        ) from None
    try:
        model: BaseChatModel = init_chat_model(spec)
    except (ImportError, ValueError) as exc:
        raise ConfigurationError(f"Cannot make chat model {spec!r}: {exc}") from exc
    return model
