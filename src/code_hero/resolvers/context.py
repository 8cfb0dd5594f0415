"""The context every resolver receives: the gateway, the caller, the limits, the loaders."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from code_hero.auth import ANONYMOUS, Caller
from code_hero.errors import UnauthenticatedError
from code_hero.limits import Limits
from code_hero.resolvers.loaders import Loaders

if TYPE_CHECKING:  # the gateway is passed in; importing it would load every layer below
    from code_hero.gateway import Gateway
    from code_hero.runs.waits import Waits

__all__ = ["Context", "OperationObserver"]

# Called once per finished operation with (operation type, status).
OperationObserver = Callable[[str, str], None]


@dataclass
class Context:
    """Built once per HTTP request or WebSocket connection, copied per operation.

    `identity` is who authenticated: ANONYMOUS in open mode, None on a socket
    whose `connection_init` has not been verified yet (no operation runs then).
    """

    gateway: Gateway
    limits: Limits = field(default_factory=Limits)
    request: Any = None
    response: Any = None
    connection_params: dict[str, Any] | None = None
    observe_operation: OperationObserver | None = None
    identity: Caller | None = ANONYMOUS
    waits: Waits | None = None  # the app's: its stop answers the startRun(wait)s begun here
    _loaders: Loaders | None = None

    @property
    def caller(self) -> Caller:
        """The caller every gateway call is made for."""
        if self.identity is None:
            raise UnauthenticatedError("authentication required")
        return self.identity

    @property
    def loaders(self) -> Loaders:
        """This operation's DataLoaders."""
        if self._loaders is None:
            self._loaders = Loaders(self.gateway, self.caller)
        return self._loaders

    def for_operation(self) -> Context:
        """A copy with fresh loaders, for one operation."""
        # A shallow copy of the fields, as dataclasses.replace makes it (Context has no
        # __post_init__), without replace's look-up of every field: a fifth of its time.
        copy = object.__new__(type(self))
        copy.__dict__.update(self.__dict__)
        copy._loaders = None
        return copy
