"""Authentication and authorization: who calls, and what they may do.

    caller.py         Caller: a user, an administrator, or the open mode's ANONYMOUS
    keys.py           API keys (`KEY=USER[:admin]`), compared in constant time
    tokens.py         JWTs: HS256 with a secret, RS256/ES256 with a JWKS (PyJWT)
    authenticator.py  credentials -> Caller; AuthSettings
    ratelimit.py      per-user token buckets
    policy.py         the optional per-action hook and the mutation rate limit

The gateway enforces ownership with the caller it is given (`gateway.py`);
the app turns HTTP and WebSocket credentials into that caller (`app.py`).
Nothing here imports strawberry or starlette.
"""

from code_hero.auth.authenticator import Authenticator, AuthSettings, bearer_token
from code_hero.auth.caller import ANONYMOUS, Caller
from code_hero.auth.keys import ApiKeys, parse_api_keys, read_api_keys_file
from code_hero.auth.policy import (
    AccessPolicy,
    AccessRequest,
    AccessSettings,
    Action,
    Hook,
    load_hook,
)
from code_hero.auth.ratelimit import RateLimit, TokenBuckets, parse_rate_limit
from code_hero.auth.tokens import JwtSettings, JwtVerifier

__all__ = [
    "ANONYMOUS",
    "AccessPolicy",
    "AccessRequest",
    "AccessSettings",
    "Action",
    "ApiKeys",
    "AuthSettings",
    "Authenticator",
    "Caller",
    "Hook",
    "JwtSettings",
    "JwtVerifier",
    "RateLimit",
    "TokenBuckets",
    "bearer_token",
    "load_hook",
    "parse_api_keys",
    "parse_rate_limit",
    "read_api_keys_file",
]
