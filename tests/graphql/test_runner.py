"""The extension hooks driven by schema.runner: what `contextlib` would do, and the order
Strawberry's own runner keeps.

`Stage` is checked against nested `contextlib.contextmanager`s on every way a
stage can end (normally, with an exception a hook lets through, swallows or
replaces, a hook that does not yield or yields twice); `HookRunner` through a
schema, with generator hooks and with hooks of the other kinds (which go
through Strawberry's context managers).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Generator, Iterator
from typing import Any

import pytest
import strawberry
from strawberry.extensions import SchemaExtension

from code_hero.schema.build import GatewaySchema
from code_hero.schema.runner import HookRunner, Stage

Behaviour = str  # what a hook does around its yield (see `hook`)


class Boom(Exception):
    pass


class Other(Exception):
    pass


def hook(name: str, behaviour: Behaviour, log: list[str]) -> Callable[[], Iterator[None]]:
    """A generator hook: "pass" (finally after yield), "swallow" what is thrown,
    "replace" it with Other, "noyield", "twice" (yields again), "enter" (raises
    before its yield)."""

    def run() -> Generator[None, None, None]:
        log.append(f"{name} in")
        if behaviour == "noyield":
            return
        if behaviour == "enter":
            raise Other(name)
        try:
            yield
        except Boom:
            log.append(f"{name} saw Boom")
            if behaviour == "swallow":
                return
            if behaviour == "replace":
                raise Other(name) from None
            raise
        finally:
            log.append(f"{name} out")
        if behaviour == "twice":
            yield

    return run


def outcome(
    enter: Callable[[list[Callable[[], Iterator[None]]]], Any],
    behaviours: tuple[Behaviour, ...],
    body_raises: bool,
) -> tuple[list[str], str]:
    log: list[str] = []
    hooks = [hook(f"h{i}", b, log) for i, b in enumerate(behaviours)]
    try:
        with enter(hooks):
            log.append("body")
            if body_raises:
                raise Boom
    except Exception as exc:
        return log, type(exc).__name__
    return log, "ok"


class nested:
    """The oracle: each hook as a contextmanager, nested in order on an ExitStack, whose
    exit result is dropped as Strawberry's `ExtensionContextManagerBase.__exit__` drops
    it: a hook that swallows an exception does not stop it (the stage's body did not
    run to its end, and Strawberry's code after the stage relies on it)."""

    def __init__(self, hooks: list[Callable[[], Iterator[None]]]) -> None:
        self.hooks = hooks
        self.stack = contextlib.ExitStack()

    def __enter__(self) -> None:
        for each in self.hooks:
            self.stack.enter_context(contextlib.contextmanager(each)())

    def __exit__(self, *exc: Any) -> None:
        self.stack.__exit__(*exc)


CASES = [
    (behaviours, body_raises)
    for behaviours in [
        (),
        ("pass",),
        ("swallow",),
        ("replace",),
        ("twice",),
        ("pass", "pass"),
        ("pass", "swallow"),
        ("swallow", "pass"),
        ("pass", "replace"),
        ("replace", "pass"),
    ]
    for body_raises in (False, True)
]


@pytest.mark.parametrize(("behaviours", "body_raises"), CASES)
def test_a_stage_ends_as_nested_contextmanagers_do(
    behaviours: tuple[Behaviour, ...], body_raises: bool
) -> None:
    expected = outcome(nested, behaviours, body_raises)
    assert outcome(Stage, behaviours, body_raises) == expected


@pytest.mark.parametrize("behaviours", [("noyield",), ("pass", "noyield"), ("pass", "enter")])
def test_a_hook_that_fails_to_enter_leaves_the_others_and_raises(
    behaviours: tuple[Behaviour, ...],
) -> None:
    log, raised = outcome(Stage, behaviours, False)
    assert "body" not in log
    assert raised == ("RuntimeError" if behaviours[-1] == "noyield" else "Other")
    if len(behaviours) > 1:  # the hook entered before it was left
        assert log[-1] == "h0 out"


async def test_a_stage_runs_under_async_with() -> None:
    log: list[str] = []
    with pytest.raises(Other):
        async with Stage([hook("h0", "replace", log)]):
            raise Boom
    assert log == ["h0 in", "h0 saw Boom", "h0 out"]


@strawberry.type
class Query:
    @strawberry.field
    def hello(self) -> str:
        return "world"

    @strawberry.field
    def fails(self) -> str:
        raise ValueError("no")


EVENTS: list[str] = []


class Generators(SchemaExtension):
    def on_operation(self) -> Iterator[None]:
        EVENTS.append("operation")
        yield
        EVENTS.append(f"operation done: {self.execution_context.result is not None}")

    def on_parse(self) -> Iterator[None]:
        EVENTS.append("parse")
        yield

    def on_execute(self) -> Iterator[None]:
        EVENTS.append("execute")
        yield
        EVENTS.append("executed")


class Plain(SchemaExtension):
    def on_validate(self) -> None:  # a plain function: Strawberry's context manager
        EVENTS.append("validate (plain)")

    async def on_execute(self) -> None:  # a coroutine: likewise
        EVENTS.append("execute (async)")


@pytest.fixture(autouse=True)
def clear_events() -> None:
    EVENTS.clear()


async def test_generator_hooks_run_in_strawberrys_order() -> None:
    schema = GatewaySchema(query=Query, extensions=[Generators])
    result = await schema.execute("{ hello }")
    assert result.data == {"hello": "world"}
    assert EVENTS == ["operation", "parse", "execute", "executed", "operation done: True"]


async def test_hooks_of_other_kinds_still_run() -> None:
    schema = GatewaySchema(query=Query, extensions=[Generators, Plain])
    result = await schema.execute("{ fails }")
    assert result.errors and result.errors[0].message == "no"
    assert EVENTS == [
        "operation",
        "parse",
        "validate (plain)",
        "execute",
        "execute (async)",
        "executed",
        "operation done: True",
    ]


def test_the_gateways_schema_runs_its_hooks_through_hookrunner() -> None:
    schema = GatewaySchema(query=Query, extensions=[Generators])
    ctx = schema._create_execution_context(  # what execute() makes, for the runner
        query="{ hello }",
        allowed_operation_types=(),
        variable_values=None,
        context_value=None,
        root_value=None,
        operation_name=None,
        operation_extensions=None,
    )
    runner = schema.create_extensions_runner(ctx, schema.get_extensions())
    assert isinstance(runner, HookRunner)
    assert isinstance(runner.operation(), Stage)
