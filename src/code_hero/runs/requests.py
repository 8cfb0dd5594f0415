"""What a caller asks a run to do (`StartRun`), and how the request is checked and shaped.

A request carries exactly one of a message, an input or a resume answer, or,
naming its thread, none: the run goes on from the thread's checkpoint.
`check_config` keeps a caller's config to the graph's own keys and a bounded
recursion limit; `continuing` lets a resume carry on the interrupted run's
graph and config; `input_for` turns a message or an input into the graph's
input, checked against the keys the graph takes. All of it runs before
anything is stored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from code_hero.errors import BadInputError
from code_hero.inputs import check_graph_value, check_text
from code_hero.persistence.records import MultitaskStrategy, Registry, RunFilter, RunStatus

__all__ = [
    "DEFAULT_RECURSION_LIMIT",
    "RESERVED_CONFIG_KEYS",
    "UNSET",
    "MultitaskStrategy",
    "StartRun",
    "UpdateState",
    "check_answer",
    "check_config",
    "check_one_input",
    "check_request_text",
    "continuing",
    "input_for",
]

UNSET: Any = object()
_INTERRUPT_ID_LENGTH = 32  # xxh3-128, in lower-case hex
_LOWER_HEX = frozenset("0123456789abcdef")
DEFAULT_RECURSION_LIMIT = 50  # graph steps of a run that sets no recursion_limit
# `configurable` keys the executor and the checkpointer set; a caller's config may
# not (nor any key starting "__", LangGraph's `__pregel_*` internals among them).
# `fromCheckpointId` is how a caller forks; `user_id` comes from the caller's identity.
RESERVED_CONFIG_KEYS = frozenset(
    {"thread_id", "checkpoint_id", "checkpoint_ns", "checkpoint_map", "run_id", "user_id"}
)


@dataclass(frozen=True)
class StartRun:
    """What a caller asks for: exactly one of message, input or resume (or, with a
    thread_id, none: go on from its checkpoint)."""

    thread_id: str | None = None
    message: str | None = None
    input: Any = UNSET
    resume: Any = UNSET
    from_checkpoint_id: str | None = None
    graph: str | None = None
    user_id: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    config: Mapping[str, Any] = field(default_factory=dict)
    multitask: MultitaskStrategy = MultitaskStrategy.REJECT
    wait: bool = False
    owner: str | None = None  # admit only on a new thread or one this user owns
    webhook: str | None = None  # a URL told when the run ends (checked by the gateway)


def check_request_text(request: StartRun) -> None:
    """No NUL in anything of a run request that is stored, and no integer past 64 bits in
    what the graph is given: its input or resume, and the top level of its config and
    metadata (LangGraph copies those values, and only those, into each checkpoint's
    metadata; a big integer nested deeper is never checkpointed)."""
    for name, value in (
        ("message", request.message),
        ("graph", request.graph),
        ("userId", request.user_id),
        ("webhook", request.webhook),
    ):
        check_text(value, name)
    for name, json_value in (("input", request.input), ("resume", request.resume)):
        if json_value is not UNSET:
            check_graph_value(json_value, name)
    for name, json_value in (("metadata", request.metadata), ("config", request.config)):
        if json_value is UNSET:
            continue
        check_text(json_value, name)
        if isinstance(json_value, Mapping):  # only the top level reaches a checkpoint
            for key, item in json_value.items():
                if isinstance(item, int) and not isinstance(item, bool):
                    check_graph_value({key: item}, name)


def check_config(config: Mapping[str, Any], max_recursion_limit: int) -> None:
    """The graph's own configurable keys only, and a recursion_limit within the maximum."""
    reserved = sorted(k for k in config if k in RESERVED_CONFIG_KEYS or k.startswith("__"))
    if reserved:
        raise BadInputError(
            f"config may not set {', '.join(reserved)}: the gateway sets those "
            "(use fromCheckpointId to run from a past checkpoint)"
        )
    if "recursion_limit" in config:
        limit = config["recursion_limit"]
        if (
            not isinstance(limit, int)
            or isinstance(limit, bool)
            or not 1 <= limit <= max_recursion_limit
        ):
            raise BadInputError(
                "config.recursion_limit must be a whole number between 1 and "
                f"{max_recursion_limit}, got {limit!r}"
            )


def check_one_input(req: StartRun) -> None:
    """Exactly one of message, input or resume; or, with a threadId, none: the run goes
    on from the thread's checkpoint (`fromCheckpointId`'s, else its latest) with no new
    input, as LangGraph's `None` input does (after an `updateState` with `asNode`)."""
    given = _given(req)
    if len(given) > 1 or (not given and req.thread_id is None):
        raise BadInputError(
            "give exactly one of message, input or resume (or, with a threadId, none: "
            "to go on from its checkpoint)" + (f" (got {', '.join(given)})" if given else "")
        )


def goes_on(req: StartRun) -> bool:
    """Whether the run has no input of its own: it goes on from its thread's checkpoint."""
    return not _given(req)


def _given(req: StartRun) -> list[str]:
    """Which of message, input and resume the request gives."""
    return [
        name
        for name, value in (("message", req.message), ("input", req.input))
        if value is not UNSET and value is not None
    ] + (["resume"] if req.resume is not UNSET else [])


def check_answer(resume: Any, pending: Sequence[str]) -> None:
    """A resume answers the thread's pending interrupts (their ids): not with null, which
    LangGraph takes for no answer at all, and, with several pending, with a map of their
    interrupt ids (a plain answer fails the run in LangGraph and loses the questions).

    An object whose keys all look like interrupt ids (32 hex digits, LangGraph's own
    test) is a map for LangGraph whatever is pending, and an empty object too: it must
    name pending interrupts only, or the questions it misses are asked again and the
    answer is silently dropped."""
    ids = f" (pending: {', '.join(pending)})" if pending else ""
    if resume is None:
        raise BadInputError(
            "resume may not be null, which LangGraph takes for no answer: to answer null, "
            f"send {{interrupt id: null}}{ids}"
        )
    if isinstance(resume, Mapping) and all(_looks_like_interrupt_id(k) for k in resume):
        if not resume:
            raise BadInputError(
                "resume is an empty object, which LangGraph takes for a map of interrupt "
                f"id to answer that answers nothing{ids}"
            )
        unknown = sorted(set(resume) - set(pending))
        if unknown:
            raise BadInputError(
                f"resume answers interrupts the thread does not wait for: "
                f"{', '.join(unknown)}{ids or ' (none pending)'}"
            )
    if len(pending) > 1 and not (
        isinstance(resume, Mapping) and resume and set(resume) <= set(pending)
    ):
        raise BadInputError(
            f"the thread waits for {len(pending)} answers: resume with an object of "
            f"interrupt id to answer{ids}"
        )


def _looks_like_interrupt_id(key: Any) -> bool:
    """LangGraph's test for a key of a resume map (`is_xxh3_128_hexdigest`): the ids
    `interrupt()` makes. Written here, not imported: the schema loads this module (its
    resolvers do), and loads no LangGraph (the import contract in pyproject.toml)."""
    return (
        isinstance(key, str)
        and len(key) == _INTERRUPT_ID_LENGTH
        and all(c in _LOWER_HEX for c in key)
    )


async def continuing(registry: Registry, req: StartRun) -> StartRun:
    """A resume carries on the interrupted run: its graph and config unless given (with
    no such run, a copy of the thread or the run deleted, as it was asked)."""
    if req.thread_id is None:
        raise BadInputError("resume needs the threadId of the interrupted thread")
    page = await registry.list_runs(
        RunFilter(thread_id=req.thread_id, status=RunStatus.INTERRUPTED), first=1
    )
    if not page.items:
        return req
    last = page.items[0]
    config = {k: v for k, v in last.config.items() if k != "checkpoint_id"}
    return replace(
        req,
        graph=req.graph or last.graph,
        config={**config, **req.config},
        user_id=req.user_id or last.user_id,
    )


def input_for(
    req: StartRun, graph_name: str, keys: frozenset[str] | None, max_message_length: int
) -> Any:
    """The graph's input for a message or an input (None for a resume).

    `keys` are the state keys the graph takes (None: any).
    """
    if req.message is not None:
        if not isinstance(req.message, str) or not req.message.strip():
            raise BadInputError("message must be a non-empty string")
        if len(req.message) > max_message_length:
            raise BadInputError(
                f"message is {len(req.message)} characters; the limit is {max_message_length}"
            )
        if keys is not None and "messages" not in keys:
            raise BadInputError(f"graph {graph_name!r} takes no messages; send `input` instead")
        return {"messages": [{"role": "user", "content": req.message}]}
    if req.input is not UNSET and req.input is not None:
        if not isinstance(req.input, Mapping):
            raise BadInputError("input must be a JSON object of the graph's state keys")
        unknown = set(req.input) - keys if keys is not None else set()
        if unknown:
            raise BadInputError(
                f"graph {graph_name!r} does not take {', '.join(sorted(unknown))}; "
                f"its input keys are {', '.join(sorted(keys or ()))}"
            )
        return dict(req.input)
    return None


@dataclass(frozen=True)
class UpdateState:
    """A human edit (`code_hero.runs.edits`): `values` applied as `as_node`'s update, to the
    latest checkpoint of `namespace` or (a fork) to `checkpoint_id`."""

    thread_id: str
    values: Any
    as_node: str | None = None
    checkpoint_id: str | None = None
    namespace: str = ""
