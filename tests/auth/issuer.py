"""A tiny identity provider for the tests: real keys, a JWKS file, signed tokens."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

SECRET = "a-shared-hs256-secret-of-at-least-32-bytes!"


class Issuer:
    """Signs tokens with HS256 (the shared secret), RS256 and ES256 (keys in its JWKS)."""

    def __init__(self, directory: Path) -> None:
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())
        rsa_jwk: dict[str, Any] = json.loads(RSAAlgorithm.to_jwk(self.rsa.public_key()))
        ec_jwk: dict[str, Any] = json.loads(ECAlgorithm.to_jwk(self.ec.public_key()))
        rsa_jwk.update(kid="rsa-1", use="sig", alg="RS256")
        ec_jwk.update(kid="ec-1", use="sig", alg="ES256")
        self.jwks = directory / "jwks.json"
        self.jwks.write_text(json.dumps({"keys": [rsa_jwk, ec_jwk]}))

    def token(
        self, sub: str | None = "ann", *, alg: str = "HS256", ttl: float = 3600, **claims: Any
    ) -> str:
        """A signed token for `sub`, valid for `ttl` seconds (negative: already expired)."""
        now = int(time.time())
        payload: dict[str, Any] = {"iat": now, "exp": now + int(ttl), **claims}
        if sub is not None:
            payload["sub"] = sub
        if alg == "HS256":
            return jwt.encode(payload, SECRET, algorithm="HS256")
        if alg == "RS256":
            return jwt.encode(payload, self.rsa, algorithm="RS256", headers={"kid": "rsa-1"})
        if alg == "ES256":
            return jwt.encode(payload, self.ec, algorithm="ES256", headers={"kid": "ec-1"})
        raise ValueError(alg)
