"""The context every resolver receives: the gateway, the limits, the loaders."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from code_hero.gateway import Gateway
from code_hero.resolvers.loaders import Loaders
from code_hero.settings import Limits

__all__ = ["Context", "OperationObserver"]

# Called once per finished operation with (operation type, status).
OperationObserver = Callable[[str, str], None]


@dataclass
class Context:
    """Built once per HTTP request or WebSocket connection, copied per operation."""

    gateway: Gateway
    limits: Limits = field(default_factory=Limits)
    request: Any = None
    response: Any = None
    connection_params: dict[str, Any] | None = None
    observe_operation: OperationObserver | None = None
    _loaders: Loaders | None = None

    @property
    def loaders(self) -> Loaders:
        """This operation's DataLoaders."""
        if self._loaders is None:
            self._loaders = Loaders(self.gateway)
        return self._loaders

    def for_operation(self) -> Context:
        """A copy with fresh loaders, for one operation."""
        return replace(self, _loaders=Loaders(self.gateway))
