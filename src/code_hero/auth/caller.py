"""Who is asking: the `Caller` every gateway method takes."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["ANONYMOUS", "Caller"]


@dataclass(frozen=True)
class Caller:
    """An authenticated user, an administrator, or the open mode's anonymous caller.

    A user sees and acts on the threads it owns; an administrator on all of
    them. `anonymous` marks the caller of a gateway with no authentication
    configured: it acts as an administrator with no user id of its own.
    """

    user_id: str | None
    is_admin: bool = False
    anonymous: bool = False
    # When the credentials stop being valid (UNIX time): a JWT's `exp`, plus the
    # leeway its check allows; None for an API key. An open WebSocket is closed then.
    expires_at: float | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not self.is_admin and not self.user_id:
            raise ValueError("a caller who is not an administrator needs a user id")

    def sees(self, owner: str | None) -> bool:
        """True when this caller may see a thread owned by `owner`."""
        return self.is_admin or owner == self.user_id

    @property
    def rate_key(self) -> str:
        """The key its rate limit is counted under."""
        return self.user_id or ("anonymous" if self.anonymous else "admin")

    def __str__(self) -> str:
        if self.anonymous:
            return "anonymous"
        return f"{self.user_id} (admin)" if self.is_admin else str(self.user_id)


ANONYMOUS = Caller(user_id=None, is_admin=True, anonymous=True)
"""The caller of an open gateway (no keys, no JWT): sees and acts on everything."""
