"""API keys: `KEY=USER` and `KEY=USER:admin` entries, looked up in constant time.

The same format serves `CODE_HERO_API_KEYS` (comma separated) and the file
of `CODE_HERO_API_KEYS_FILE` (one entry a line, or comma separated; blank
lines and `#` comments skipped). A key is at least 16 characters. Error
messages name an entry by its position, never by its text: keys are never
logged.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping
from pathlib import Path

from code_hero.auth.caller import Caller
from code_hero.errors import ConfigurationError
from code_hero.persistence.jsonable import storable_text

__all__ = ["MIN_KEY_LENGTH", "ApiKeys", "parse_api_keys", "read_api_keys_file"]

MIN_KEY_LENGTH = 16


def _entries(text: str) -> Iterable[str]:
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        for entry in line.split(","):
            if entry.strip():
                yield entry.strip()


def parse_api_keys(text: str, *, source: str = "CODE_HERO_API_KEYS") -> dict[str, Caller]:
    """The callers of `KEY=USER[:admin]` entries; ConfigurationError on a bad entry."""
    keys: dict[str, Caller] = {}
    for number, entry in enumerate(_entries(text), start=1):
        key, sep, user = entry.rpartition("=")  # a base64 key may end in '='
        key, user = key.strip(), user.strip()
        where = f"{source}: entry {number}"
        if not sep or not key or not user:
            raise ConfigurationError(f"{where} is not KEY=USER or KEY=USER:admin")
        is_admin = False
        if ":" in user:
            user, _, role = user.rpartition(":")
            if role != "admin" or not user:
                raise ConfigurationError(f"{where}: the only role is ':admin'")
            is_admin = True
        if not storable_text(user):  # it owns and filters rows: the database must hold it
            raise ConfigurationError(f"{where}: the user may not hold NUL or undecodable bytes")
        if len(key) < MIN_KEY_LENGTH:
            raise ConfigurationError(
                f"{where}: a key must be at least {MIN_KEY_LENGTH} characters "
                "(use e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
            )
        if key in keys:
            raise ConfigurationError(f"{where} repeats a key given before")
        keys[key] = Caller(user_id=user, is_admin=is_admin)
    return keys


def read_api_keys_file(path: str) -> dict[str, Caller]:
    """The keys of a file in the same format."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(
            f"CODE_HERO_API_KEYS_FILE: cannot read {path}: {exc.strerror}"
        ) from None
    except UnicodeDecodeError as exc:
        raise ConfigurationError(
            f"CODE_HERO_API_KEYS_FILE: {path} is not UTF-8 text (byte {exc.start})"
        ) from None
    return parse_api_keys(text, source=f"CODE_HERO_API_KEYS_FILE {path}")


class ApiKeys:
    """The configured keys; `caller(token)` compares against every one in constant time."""

    def __init__(self, keys: Mapping[str, Caller]) -> None:
        self._keys = [(key.encode(), caller) for key, caller in keys.items()]

    def __bool__(self) -> bool:
        return bool(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"ApiKeys({len(self._keys)} keys)"

    def caller(self, token: str) -> Caller | None:
        """The caller holding this key, or None."""
        given = token.encode("utf-8", "surrogatepass")
        found: Caller | None = None
        for key, caller in self._keys:  # no early exit: the time does not tell which key
            if hmac.compare_digest(given, key):
                found = caller
        return found
