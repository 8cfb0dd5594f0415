"""Credentials to a `Caller`: API keys first, then JWTs; open mode when neither is set.

Over HTTP the credentials are `Authorization: Bearer <key or token>`; over a
WebSocket the same header on the upgrade, or `authorization` in the
`connection_init` payload, where a bare token is accepted too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from code_hero.auth.caller import ANONYMOUS, Caller
from code_hero.auth.keys import ApiKeys
from code_hero.auth.tokens import JwtSettings, JwtVerifier, looks_like_jwt
from code_hero.errors import UnauthenticatedError

__all__ = ["AuthSettings", "Authenticator", "bearer_token"]


@dataclass(frozen=True)
class AuthSettings:
    """How callers authenticate; with no keys and no JWT the gateway is open."""

    api_keys: Mapping[str, Caller] = field(default_factory=dict, repr=False)
    jwt: JwtSettings = field(default_factory=JwtSettings)
    allow_anonymous: bool = False  # open mode on an address other than loopback

    @property
    def enabled(self) -> bool:
        """True when callers must authenticate."""
        return bool(self.api_keys) or self.jwt.configured


def bearer_token(value: object, *, bare: bool = False) -> str:
    """The token of "Bearer <token>" (or, with `bare`, of "<token>"); else UnauthenticatedError."""
    if value is None or value == "":
        raise UnauthenticatedError("authentication required: send Authorization: Bearer <token>")
    if not isinstance(value, str):
        raise UnauthenticatedError("authorization must be a string")
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() == "bearer" and rest.strip():
        return rest.strip()
    if bare and scheme and not rest:
        return scheme
    raise UnauthenticatedError("the Authorization header must be Bearer <token>")


class Authenticator:
    """Verifies credentials against the configured keys and JWT settings."""

    def __init__(self, settings: AuthSettings | None = None) -> None:
        self.settings = settings or AuthSettings()
        self.keys = ApiKeys(self.settings.api_keys)
        jwt = self.settings.jwt
        self.tokens = JwtVerifier(jwt) if jwt.configured else None

    @property
    def enabled(self) -> bool:
        """False in open mode: every caller is ANONYMOUS."""
        return self.settings.enabled

    async def caller(self, authorization: object, *, bare: bool = False) -> Caller:
        """The caller these credentials name; UnauthenticatedError when they do not verify."""
        if not self.enabled:
            return ANONYMOUS
        token = bearer_token(authorization, bare=bare)
        found = self.keys.caller(token)
        if found is not None:
            return found
        if self.tokens is not None and looks_like_jwt(token):
            return await self.tokens.caller(token)
        raise UnauthenticatedError("invalid credentials")
