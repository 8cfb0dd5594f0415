"""The access policy beyond ownership: the optional hook and the rate limit.

Ownership is checked by the gateway. Then, when `CODE_HERO_AUTH_HOOK` names
a function (`package.module:function`), it is called once per action with an
`AccessRequest`, in the manner of LangGraph server's `@auth.on.threads...`
handlers; it may be sync or async:

    def authorize(request: AccessRequest) -> bool | None:
        if request.action == "thread.delete" and not request.caller.is_admin:
            return False                       # only administrators delete
        return None                            # None or True: allowed

False denies: a read then finds nothing (null, an empty page, NOT_FOUND
for a subscription), a mutation answers FORBIDDEN. The hook may raise a
`code_hero.errors.CodeHeroError` to answer with its own code and message;
any other exception denies as an internal error (logged, masked).

Mutations (run.create, run.cancel, run.delete, thread.delete) count against
the caller's mutation rate limit before anything else happens; reads (queries
and subscriptions) spend their query cost (`code_hero.schema.cost`) from a
second bucket of cost points before they run. The two are apart so a busy
dashboard never uses up the mutations of the same user, nor the reverse.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from code_hero.auth.caller import Caller
from code_hero.auth.ratelimit import RateLimit, TokenBuckets
from code_hero.errors import ConfigurationError, ForbiddenError, RateLimitedError

__all__ = [
    "MUTATIONS",
    "AccessPolicy",
    "AccessRequest",
    "AccessSettings",
    "Action",
    "Hook",
    "load_hook",
]


class Action(StrEnum):
    """What a caller does, named `resource.verb` as the hook sees it."""

    THREAD_READ = "thread.read"
    THREAD_SEARCH = "thread.search"
    THREAD_SUBSCRIBE = "thread.subscribe"
    THREAD_DELETE = "thread.delete"
    THREAD_CREATE = "thread.create"  # createThread, and copyThread's new thread
    THREAD_UPDATE = "thread.update"
    CHECKPOINT_READ = "checkpoint.read"
    CHECKPOINT_WRITE = "checkpoint.write"  # updateState: a human edit of the state
    RUN_CREATE = "run.create"
    RUN_READ = "run.read"
    RUN_SEARCH = "run.search"
    RUN_SUBSCRIBE = "run.subscribe"
    RUN_CANCEL = "run.cancel"
    RUN_DELETE = "run.delete"
    WEBHOOK_CREATE = "webhook.create"
    WEBHOOK_DELETE = "webhook.delete"


MUTATIONS = frozenset(
    {
        Action.RUN_CREATE,
        Action.RUN_CANCEL,
        Action.RUN_DELETE,
        Action.THREAD_DELETE,
        Action.CHECKPOINT_WRITE,
        Action.WEBHOOK_CREATE,
        Action.WEBHOOK_DELETE,
        Action.THREAD_CREATE,
        Action.THREAD_UPDATE,
    }
)


@dataclass(frozen=True)
class AccessRequest:
    """One action on one thread or run (or a search), as the hook sees it."""

    action: Action
    caller: Caller
    thread_id: str | None = None
    run_id: str | None = None
    value: Mapping[str, Any] = field(default_factory=dict)  # the request's arguments


Hook = Callable[[AccessRequest], "bool | Awaitable[bool | None] | None"]


def load_hook(spec: str) -> Hook:
    """The function `package.module:function` names; ConfigurationError when it does not load."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigurationError(f"CODE_HERO_AUTH_HOOK must be module:function, got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise ConfigurationError(
            f"CODE_HERO_AUTH_HOOK: cannot import {module_name}: {exc}"
        ) from exc
    hook = getattr(module, attr, None)
    if not callable(hook):
        raise ConfigurationError(f"CODE_HERO_AUTH_HOOK: {spec} is not a function")
    return hook  # type: ignore[no-any-return]


@dataclass(frozen=True)
class AccessSettings:
    """The hook's spec, the rate limit on mutations and the one on read cost (None: none)."""

    hook: str | None = None
    rate_limit: RateLimit | None = None
    read_rate_limit: RateLimit | None = None


class AccessPolicy:
    """The hook and the rate limiter of one gateway."""

    def __init__(self, settings: AccessSettings | None = None, *, hook: Hook | None = None) -> None:
        settings = settings or AccessSettings()
        self.hook = hook or (load_hook(settings.hook) if settings.hook else None)
        self.buckets = TokenBuckets(settings.rate_limit) if settings.rate_limit else None
        reads = settings.read_rate_limit
        self.read_buckets = TokenBuckets(reads) if reads else None

    def spend(self, caller: Caller, action: Action) -> None:
        """Count a mutation against the caller's limit; RateLimitedError when it is used up."""
        if self.buckets is None or action not in MUTATIONS:
            return
        wait = self.buckets.retry_after(caller.rate_key)
        if wait:
            raise RateLimitedError(
                f"rate limit of {self.buckets.limit} reached; retry in {wait} s", wait
            )

    def spend_reads(self, caller: Caller, cost: int) -> None:
        """Spend a read's cost points; RateLimitedError when the caller has too few left."""
        if self.read_buckets is None or cost <= 0:
            return
        wait = self.read_buckets.retry_after(caller.rate_key, cost)
        if wait:
            raise RateLimitedError(
                f"read rate limit of {self.read_buckets.limit} cost points reached "
                f"(this query costs {cost}); retry in {wait} s",
                wait,
            )

    async def allows(
        self,
        caller: Caller,
        action: Action,
        *,
        thread_id: str | None = None,
        run_id: str | None = None,
        value: Mapping[str, Any] | None = None,
    ) -> bool:
        """The hook's answer (True without a hook)."""
        if self.hook is None:
            return True
        request = AccessRequest(action, caller, thread_id, run_id, value or {})
        answer = self.hook(request)
        if inspect.isawaitable(answer):
            answer = await answer
        return answer is not False

    async def require(
        self,
        caller: Caller,
        action: Action,
        *,
        thread_id: str | None = None,
        run_id: str | None = None,
        value: Mapping[str, Any] | None = None,
    ) -> None:
        """ForbiddenError unless the hook allows the action."""
        if not await self.allows(caller, action, thread_id=thread_id, run_id=run_id, value=value):
            raise ForbiddenError(f"{action} is not allowed by the access policy")
