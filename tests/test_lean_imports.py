"""What a server that does not need a heavy library keeps out of its memory."""

from __future__ import annotations

import os
import subprocess
import sys

SERVER = "import code_hero.app, code_hero.cli.serve, code_hero.compose, code_hero.gateway"


def loaded_after(statement: str, *modules: str) -> dict[str, bool]:
    probe = f"{statement}; import sys; print(' '.join(str(m in sys.modules) for m in {modules!r}))"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, env=os.environ
    ).stdout.split()
    return dict(zip(modules, (word == "True" for word in out), strict=True))


def test_jwt_and_cryptography_load_only_for_tokens() -> None:
    # PyJWT brings `cryptography` (~8 MiB resident): only a server verifying JWTs needs it.
    assert loaded_after(SERVER, "jwt", "cryptography") == {"jwt": False, "cryptography": False}
    verifier = (
        "from code_hero.auth import JwtSettings, JwtVerifier; "
        "JwtVerifier(JwtSettings(secret='s' * 32))"
    )
    assert loaded_after(verifier, "jwt") == {"jwt": True}
