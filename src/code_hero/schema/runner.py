"""The schema extension's hooks run around each stage of an operation, without wrappers.

Strawberry's `SchemaExtensionsRunner` builds, for each of an operation's four
stages (operation, parsing, validation, execution), a context manager that
looks each hook up, checks what kind of function it is, wraps a generator
hook in `contextlib.contextmanager` and enters it through an `AsyncExitStack`:
a fifth of a `{ __typename }` request's time in the app (py-spy, bench/gateway.py),
for one extension whose hooks are plain generators. `HookRunner` drives such
hooks itself: what the hook is, is known once per extension class, and a
stage calls the generator, steps it at entry and steps it (or throws the
stage's exception into it) at exit, as `contextlib.contextmanager` does. A
hook that is not a generator function goes through Strawberry's own context
manager, as does every `on_stream_result`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Generator
from types import TracebackType
from typing import Any

from strawberry.extensions import SchemaExtension
from strawberry.extensions.context import (
    ExecutingContextManager,
    OperationContextManager,
    ParsingContextManager,
    ValidationContextManager,
)
from strawberry.extensions.runner import SchemaExtensionsRunner

__all__ = ["HookRunner"]

Hook = Callable[[], Generator[None, None, None]]
STAGES = ("on_operation", "on_parse", "on_validate", "on_execute")


_KINDS: dict[type, dict[str, bool] | None] = {}  # per extension class, as it cannot change


def _generator_hooks(cls: type) -> dict[str, bool] | None:
    """Which of the stages' hooks `cls` defines (True) or leaves alone (False);
    None when one it defines is not a generator function."""
    if cls not in _KINDS:
        _KINDS[cls] = _kinds(cls)
    return _KINDS[cls]


def _kinds(cls: type) -> dict[str, bool] | None:
    kinds = {}
    for name in STAGES:
        hook = getattr(cls, name)
        if hook is getattr(SchemaExtension, name):
            kinds[name] = False
        elif inspect.isgeneratorfunction(hook):
            kinds[name] = True
        else:
            return None
    return kinds


class Stage:
    """One stage's generator hooks, entered in order and left in reverse order, as nested
    `with` blocks of `contextlib.contextmanager`s would be; usable with or without `async`."""

    __slots__ = ("_hooks", "_running")

    def __init__(self, hooks: list[Hook]) -> None:
        self._hooks = hooks
        self._running: list[Generator[None, None, None]] = []

    def __enter__(self) -> None:
        for hook in self._hooks:
            generator = hook()
            try:
                next(generator)
            except StopIteration:
                error = RuntimeError("a hook did not yield")
            except BaseException as exc:  # the hooks entered so far see it, then it goes on
                self.__exit__(type(exc), exc, exc.__traceback__)
                raise
            else:
                self._running.append(generator)
                continue
            self.__exit__(RuntimeError, error, None)
            raise error

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Never swallows `exc` (see below); a hook's own exception replaces it."""
        pending = exc
        while self._running:
            generator = self._running.pop()
            try:
                if pending is None:
                    next(generator)
                else:
                    generator.throw(pending)
            except StopIteration:
                pending = None  # ended: normally, or having swallowed what was thrown
                continue
            except BaseException as raised:
                pending = raised
                continue
            generator.close()
            pending = RuntimeError("a hook yielded twice")
        # A hook that swallowed `exc` does not stop it, as in Strawberry's own runner
        # (its `__exit__` drops the exit stack's answer): the code after the stage
        # relies on the stage's body having run (a result, a validated document).
        if pending is not None and pending is not exc:
            raise pending

    async def __aenter__(self) -> None:
        self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)


class HookRunner(SchemaExtensionsRunner):
    """Strawberry's runner, with the four stages' generator hooks driven by `Stage`."""

    def _stage(self, name: str) -> Stage | None:
        hooks: list[Hook] = []
        for extension in self.extensions:
            kinds = _generator_hooks(type(extension))
            if kinds is None:
                return None
            if kinds[name]:
                hooks.append(getattr(extension, name))
        return Stage(hooks)

    def operation(self) -> Any:
        return self._stage("on_operation") or OperationContextManager(self.extensions)

    def parsing(self) -> Any:
        return self._stage("on_parse") or ParsingContextManager(self.extensions)

    def validation(self) -> Any:
        return self._stage("on_validate") or ValidationContextManager(self.extensions)

    def executing(self) -> Any:
        return self._stage("on_execute") or ExecutingContextManager(self.extensions)
