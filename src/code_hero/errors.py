"""The one error hierarchy of Code Hero.

    CodeHeroError                 every error we raise on purpose
    ├── ConfigurationError        bad settings: unknown backend type, missing path or URL
    ├── BadInputError             a caller's request is malformed           -> BAD_USER_INPUT
    ├── NotFoundError             no such thread, run or checkpoint         -> NOT_FOUND
    ├── ConflictError             the thread is busy, not interrupted, ...  -> CONFLICT
    │   └── ThreadBeingDeletedError   a run's thread is marked by a deletion
    ├── AuthError
    │   ├── UnauthenticatedError  no or invalid credentials                 -> UNAUTHENTICATED
    │   └── ForbiddenError        valid credentials, action not allowed     -> FORBIDDEN
    ├── RateLimitedError          too many calls; retry after N seconds     -> RATE_LIMITED
    ├── QueryTooComplexError      a document costs more than the maximum    -> QUERY_TOO_COMPLEX
    └── BackendUnavailableError   the database is unreachable; retry later  -> UNAVAILABLE

The GraphQL layer maps each class to its `extensions.code` (plus the class's
`extensions`, e.g. `retryAfter`); anything else is an internal error, masked
for clients and logged with detail.
"""

from __future__ import annotations

__all__ = [
    "AuthError",
    "BackendUnavailableError",
    "BadInputError",
    "CodeHeroError",
    "ConfigurationError",
    "ConflictError",
    "ForbiddenError",
    "NotFoundError",
    "QueryTooComplexError",
    "RateLimitedError",
    "RunHeldUpError",
    "ThreadBeingDeletedError",
    "UnauthenticatedError",
    "described",
]


def described(exc: BaseException, limit: int = 500) -> str:
    """`Type: message` for logs and health reports; a type with no message (a timeout)
    says so rather than ending in a bare colon."""
    text = str(exc).strip()
    return (f"{type(exc).__name__}: {text}" if text else f"{type(exc).__name__} (no message)")[
        :limit
    ]


class CodeHeroError(Exception):
    """Base class of every error Code Hero raises on purpose."""

    code = "INTERNAL"

    @property
    def extensions(self) -> dict[str, object]:
        """Fields a client sees in `extensions` beside the code."""
        return {}


class ConfigurationError(CodeHeroError, ValueError):
    """Settings that cannot work: say which setting and what to change."""

    code = "BAD_USER_INPUT"


class BadInputError(CodeHeroError, ValueError):
    """A request that is malformed or contradicts itself."""

    code = "BAD_USER_INPUT"


class NotFoundError(CodeHeroError, LookupError):
    """The thread, run or checkpoint named does not exist (or is not visible)."""

    code = "NOT_FOUND"


class ConflictError(CodeHeroError):
    """The request is valid but clashes with the current state; with `retry_after`, a
    passing clash (a concurrent change) that trying again resolves."""

    code = "CONFLICT"

    def __init__(self, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    @property
    def extensions(self) -> dict[str, object]:
        return {} if self.retry_after is None else {"retryAfter": self.retry_after}


class AuthError(CodeHeroError):
    """Authentication or authorization refused the request."""


class UnauthenticatedError(AuthError):
    """No credentials, or credentials that do not verify."""

    code = "UNAUTHENTICATED"


class ForbiddenError(AuthError):
    """Valid credentials that may not perform this action."""

    code = "FORBIDDEN"


class RateLimitedError(CodeHeroError):
    """The caller has used up its rate limit for now; `retry_after` says when to try again."""

    code = "RATE_LIMITED"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    @property
    def extensions(self) -> dict[str, object]:
        return {"retryAfter": self.retry_after}


class QueryTooComplexError(CodeHeroError):
    """A document whose cost is above the server's maximum: ask for smaller pages."""

    code = "QUERY_TOO_COMPLEX"

    def __init__(self, cost: int, max_cost: int) -> None:
        super().__init__(
            f"the query costs {cost}, more than the maximum of {max_cost}: "
            "ask for smaller pages (`first`) or fewer nested lists"
        )
        self.cost = cost
        self.max_cost = max_cost

    @property
    def extensions(self) -> dict[str, object]:
        return {"cost": self.cost, "maxCost": self.max_cost}


class BackendUnavailableError(CodeHeroError):
    """The database that holds what the call needs cannot be reached now.

    An expected condition, not a bug: clients see UNAVAILABLE with
    `extensions.retryAfter`, the seconds until the next health probe.
    """

    code = "UNAVAILABLE"

    def __init__(self, message: str, retry_after: int = 5) -> None:
        super().__init__(message)
        self.retry_after = max(1, int(retry_after))

    @property
    def extensions(self) -> dict[str, object]:
        return {"retryAfter": self.retry_after}


class ThreadBeingDeletedError(ConflictError):
    """A run refused on a thread whose row a deletion has marked and not removed yet (or
    was cut short): admitted, it would go with the thread; ending the deletion first
    starts it on a fresh thread."""


class RunHeldUpError(BackendUnavailableError):
    """A run was admitted and recorded, but cannot go on until the database is back:
    `extensions.runId` names it, so a client follows that run instead of starting
    another by retrying."""

    def __init__(self, message: str, retry_after: int, run_id: str) -> None:
        super().__init__(message, retry_after)
        self.run_id = run_id

    @property
    def extensions(self) -> dict[str, object]:
        return {"retryAfter": self.retry_after, "runId": self.run_id}
