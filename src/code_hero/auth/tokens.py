"""JWT bearer tokens (PyJWT): HS256 with a shared secret, RS256/ES256 with a JWKS.

The user is the `sub` claim; `exp` is required; the issuer and audience are
checked when configured. The admin claim is either a claim name whose value
must be `true` ("is_admin") or `claim=value` ("role=admin"), where the claim
may be a string, a space-separated string (an OAuth `scope`) or a list, and
a dotted name reaches into objects ("realm_access.roles=admin").

A JWKS is a file read once at start-up, or an https URL fetched by
`PyJWKClient` (cached for five minutes; fetched off the event loop).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from code_hero.auth.caller import Caller
from code_hero.errors import ConfigurationError, UnauthenticatedError
from code_hero.persistence.jsonable import storable_text

if TYPE_CHECKING:
    # Imported where used: PyJWT loads `cryptography` (~8 MiB resident), which only a
    # server that verifies JWTs needs.
    import jwt

__all__ = ["MIN_SECRET_BYTES", "TOKEN_EXPIRED", "JwtSettings", "JwtVerifier", "looks_like_jwt"]

log = logging.getLogger(__name__)

MIN_SECRET_BYTES = 32  # RFC 7518 3.2: an HS256 key at least as long as the hash
ASYMMETRIC = ("RS256", "ES256")

# Its refusal, and the reason a socket of it is closed with (code_hero.sockets).
TOKEN_EXPIRED = "the token has expired"


@dataclass(frozen=True)
class JwtSettings:
    """How bearer tokens are verified; nothing set means JWTs are not accepted."""

    secret: str | None = field(default=None, repr=False)
    jwks: str | None = None  # a file path or an http(s) URL
    issuer: str | None = None
    audience: str | None = None
    admin_claim: str | None = None
    leeway: float = 30.0  # seconds of clock skew tolerated on exp, nbf and iat

    @property
    def configured(self) -> bool:
        """True when tokens can be verified (a secret or a JWKS)."""
        return bool(self.secret or self.jwks)


def looks_like_jwt(token: str) -> bool:
    """Three dot-separated parts: worth decoding as a JWT."""
    return token.count(".") == 2


class JwtVerifier:
    """Verifies tokens with the configured keys; read the JWKS file at construction."""

    def __init__(self, settings: JwtSettings) -> None:
        import jwt

        self.settings = settings
        if settings.secret is not None and len(settings.secret.encode()) < MIN_SECRET_BYTES:
            raise ConfigurationError(
                f"CODE_HERO_JWT_SECRET must be at least {MIN_SECRET_BYTES} bytes for HS256"
            )
        self._client: jwt.PyJWKClient | None = None
        self._keys: jwt.PyJWKSet | None = None
        source = settings.jwks
        if source and source.startswith(("https://", "http://")):
            self._client = jwt.PyJWKClient(source, cache_jwk_set=True, lifespan=300, timeout=10)
        elif source:
            self._keys = _read_jwks(source)
        self._claim, self._value = _admin_rule(settings.admin_claim)

    async def caller(self, token: str) -> Caller:
        """The caller the token names; UnauthenticatedError when it does not verify."""
        import jwt

        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise UnauthenticatedError("malformed token") from None
        algorithm = header.get("alg")
        if algorithm == "HS256" and self.settings.secret:
            key: Any = self.settings.secret
        elif algorithm in ASYMMETRIC and self.settings.jwks:
            key = await self._public_key(token, header)
        else:
            raise UnauthenticatedError("the token's signing algorithm is not accepted")
        s = self.settings
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[str(algorithm)],
                audience=s.audience,
                issuer=s.issuer,
                leeway=s.leeway,
                options={
                    "require": ["exp", "sub"],
                    "verify_aud": s.audience is not None,
                    "verify_iss": s.issuer is not None,
                },
            )
        except jwt.ExpiredSignatureError:
            raise UnauthenticatedError(TOKEN_EXPIRED) from None
        except jwt.PyJWTError as exc:
            raise UnauthenticatedError(f"invalid token: {_reason(exc)}") from None
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise UnauthenticatedError("invalid token: sub must be a non-empty string")
        if not storable_text(subject):  # it owns and filters rows: the database must hold it
            raise UnauthenticatedError("invalid token: sub may not hold NUL or lone surrogates")
        return Caller(
            user_id=subject, is_admin=self._is_admin(claims), expires_at=_expiry(claims, s.leeway)
        )

    async def _public_key(self, token: str, header: Mapping[str, Any]) -> Any:
        import jwt

        if self._client is not None:
            client = self._client
            try:  # urllib underneath: never on the event loop
                found = await asyncio.to_thread(client.get_signing_key_from_jwt, token)
            except jwt.PyJWKClientConnectionError as exc:
                log.warning("cannot fetch the JWKS: %s", exc)
                raise UnauthenticatedError("the token cannot be verified now") from None
            except jwt.PyJWTError:
                raise UnauthenticatedError("invalid token: no matching signing key") from None
            return found.key
        assert self._keys is not None
        kid = header.get("kid")
        keys = self._keys.keys
        if kid is not None:
            matching = [k for k in keys if k.key_id == kid]
        else:
            matching = keys if len(keys) == 1 else []
        if not matching:
            raise UnauthenticatedError("invalid token: no matching signing key")
        return matching[0].key

    def _is_admin(self, claims: Mapping[str, Any]) -> bool:
        if self._claim is None:
            return False
        value: Any = claims
        for part in self._claim.split("."):
            if not isinstance(value, Mapping) or part not in value:
                return False
            value = value[part]
        if self._value is None:
            return value is True
        if isinstance(value, str):
            return value == self._value or self._value in value.split()
        if isinstance(value, list):
            return self._value in value
        return False


def _admin_rule(spec: str | None) -> tuple[str | None, str | None]:
    if not spec:
        return None, None
    claim, sep, value = spec.partition("=")
    claim, value = claim.strip(), value.strip()
    if not claim or (sep and not value):
        raise ConfigurationError(
            f"CODE_HERO_JWT_ADMIN_CLAIM must be a claim name or claim=value, got {spec!r}"
        )
    return claim, value if sep else None


def _read_jwks(path: str) -> jwt.PyJWKSet:
    import jwt

    try:
        text = Path(path).read_text(encoding="utf-8")
        return jwt.PyJWKSet.from_dict(json.loads(text))
    except OSError as exc:
        raise ConfigurationError(
            f"CODE_HERO_JWT_JWKS: cannot read {path}: {exc.strerror}"
        ) from None
    except (ValueError, jwt.PyJWTError) as exc:
        raise ConfigurationError(f"CODE_HERO_JWT_JWKS: {path} is not a JWK set: {exc}") from None


def _reason(exc: jwt.PyJWTError) -> str:
    text = str(exc).strip().rstrip(".")
    return text[:1].lower() + text[1:] if text else type(exc).__name__


def _expiry(claims: Mapping[str, Any], leeway: float) -> float | None:
    """When the token stops verifying (UNIX time): `exp` plus the leeway. PyJWT checked
    that `exp` reads as an integer; one past a float's range never comes (None)."""
    try:
        return float(int(claims["exp"])) + leeway
    except OverflowError:
        return None
