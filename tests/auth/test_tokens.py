"""JWTs: HS256 with a secret, RS256 and ES256 with a JWKS file; every way a token fails."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import replace
from pathlib import Path

import jwt
import pytest

from code_hero.auth import Caller, JwtSettings, JwtVerifier
from code_hero.errors import ConfigurationError, UnauthenticatedError
from tests.auth.issuer import SECRET, Issuer


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> Issuer:
    return Issuer(tmp_path_factory.mktemp("idp"))


def verifier(idp: Issuer, **options: object) -> JwtVerifier:
    settings = JwtSettings(secret=SECRET, jwks=str(idp.jwks), admin_claim="role=admin")
    return JwtVerifier(replace(settings, **options))


async def test_each_algorithm_names_its_user(issuer: Issuer) -> None:
    v = verifier(issuer)
    for alg in ("HS256", "RS256", "ES256"):
        assert await v.caller(issuer.token("ann", alg=alg)) == Caller(user_id="ann")
    assert (await v.caller(issuer.token("root", alg="RS256", role="admin"))).is_admin


async def test_a_caller_knows_when_its_token_stops_verifying(issuer: Issuer) -> None:
    # `exp` plus the leeway: when an open WebSocket or SSE stream of it is ended.
    token = jwt.encode({"sub": "ann", "exp": 2_000_000_000}, SECRET, algorithm="HS256")
    assert (await verifier(issuer).caller(token)).expires_at == 2_000_000_030.0  # 30 s leeway
    assert (await verifier(issuer, leeway=0).caller(token)).expires_at == 2_000_000_000.0
    # An `exp` past a float's range (PyJWT reads any integer) never comes: no 500.
    forever = jwt.encode({"sub": "ann", "exp": 10**400}, SECRET, algorithm="HS256")
    assert (await verifier(issuer).caller(forever)).expires_at is None
    assert (await verifier(issuer).caller(forever)) == Caller(user_id="ann")


@pytest.mark.parametrize(
    ("claim", "claims", "admin"),
    [
        ("role=admin", {"role": "admin"}, True),
        ("role=admin", {"role": "user"}, False),
        ("roles=admin", {"roles": ["user", "admin"]}, True),
        ("scope=admin", {"scope": "read admin"}, True),
        ("realm_access.roles=admin", {"realm_access": {"roles": ["admin"]}}, True),
        ("is_admin", {"is_admin": True}, True),
        ("is_admin", {"is_admin": "true"}, False),  # a boolean claim means the boolean
        ("is_admin", {}, False),
    ],
)
async def test_admin_claim(
    issuer: Issuer, claim: str, claims: dict[str, object], admin: bool
) -> None:
    v = verifier(issuer, admin_claim=claim)
    assert (await v.caller(issuer.token("ann", **claims))).is_admin is admin


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _hs256(claims: dict[str, object], key: bytes) -> str:
    """HS256 by hand: PyJWT itself refuses to sign with something that looks like a key."""
    header = json.dumps({"alg": "HS256", "typ": "JWT"}).encode()
    signed = f"{_b64(header)}.{_b64(json.dumps(claims).encode())}"
    mac = hmac.new(key, signed.encode(), hashlib.sha256).digest()
    return f"{signed}.{_b64(mac)}"


def _forged(token: str, **header: object) -> str:
    head = base64.urlsafe_b64encode(json.dumps(header).encode()).rstrip(b"=").decode()
    return ".".join([head, *token.split(".")[1:]])


async def test_refused_tokens(issuer: Issuer, tmp_path: Path) -> None:
    v = verifier(issuer, issuer="https://idp.example", audience="code-hero")
    good = {"iss": "https://idp.example", "aud": "code-hero"}
    assert (await v.caller(issuer.token("ann", **good))).user_id == "ann"
    other_secret = jwt.encode({"sub": "ann", "exp": 2**40}, "x" * 40, algorithm="HS256")
    cases = {
        "the token has expired": issuer.token("ann", ttl=-3600, **good),
        "invalid token: signature": other_secret,
        "issuer": issuer.token("ann", iss="https://evil", aud="code-hero"),
        "audience": issuer.token("ann", iss=good["iss"], aud="other"),
        '"sub"': issuer.token(None, **good),
        "malformed token": "not.a.jwt",
        "signing algorithm is not accepted": _forged(issuer.token("ann", **good), alg="none"),
    }
    for says, token in cases.items():
        with pytest.raises(UnauthenticatedError) as refused:
            await v.caller(token)
        assert says in str(refused.value), (says, str(refused.value))
    # An RS256 token re-signed with HS256 and the public key as the secret
    # (algorithm confusion) is refused: HS256 verifies with the secret only.
    confused = _hs256({"sub": "root", "exp": 2**40, **good}, issuer.jwks.read_bytes())
    with pytest.raises(UnauthenticatedError):
        await v.caller(confused)
    # A kid that is not in the JWKS.
    with pytest.raises(UnauthenticatedError, match="no matching signing key"):
        await v.caller(_forged(issuer.token("ann", alg="RS256"), alg="RS256", kid="nope"))
    # Without a JWKS, asymmetric tokens are not accepted at all.
    hs_only = JwtVerifier(JwtSettings(secret=SECRET))
    with pytest.raises(UnauthenticatedError, match="algorithm is not accepted"):
        await hs_only.caller(issuer.token("ann", alg="RS256"))


@pytest.mark.parametrize("sub", ["a\u0000b", "\ud800x"])
async def test_a_subject_no_database_can_store_is_refused(issuer: Issuer, sub: str) -> None:
    """The caller's user id filters and owns every thread it touches: a sub that
    PostgreSQL's text cannot hold (NUL) or that is no UTF-8 (a lone surrogate, which a
    JSON `\\ud800` escape decodes to) reached the database and answered INTERNAL, where
    an empty sub is refused here."""
    with pytest.raises(UnauthenticatedError, match="sub"):
        await verifier(issuer).caller(issuer.token(sub))


def test_configuration_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="at least 32 bytes"):
        JwtVerifier(JwtSettings(secret="short"))
    with pytest.raises(ConfigurationError, match="cannot read"):
        JwtVerifier(JwtSettings(jwks=str(tmp_path / "missing.json")))
    (tmp_path / "bad.json").write_text('{"keys": "nope"}')
    with pytest.raises(ConfigurationError, match="not a JWK set"):
        JwtVerifier(JwtSettings(jwks=str(tmp_path / "bad.json")))
    with pytest.raises(ConfigurationError, match="claim=value"):
        JwtVerifier(JwtSettings(secret=SECRET, admin_claim="role="))
