"""API keys: the entry format, its errors (which never show a key), constant-time look-up."""

from __future__ import annotations

from pathlib import Path

import pytest

from code_hero.auth import ApiKeys, Authenticator, AuthSettings, Caller, bearer_token
from code_hero.auth.keys import parse_api_keys, read_api_keys_file
from code_hero.errors import ConfigurationError, UnauthenticatedError

ALICE = "alice-key-0123456789abcdef"
ROOT = "root-key-0123456789abcdef=="  # base64 keys may end in '='


def test_entries_users_and_admins(tmp_path: Path) -> None:
    keys = parse_api_keys(f" {ALICE}=alice , {ROOT}=root:admin ")
    assert keys == {
        ALICE: Caller(user_id="alice"),
        ROOT: Caller(user_id="root", is_admin=True),
    }
    path = tmp_path / "keys"
    path.write_text(
        f"# the team's keys\n{ALICE}=alice\n\n{ROOT}=root:admin, bob-key-0123456789abc=bob\n"
    )
    from_file = read_api_keys_file(str(path))
    assert set(from_file) == {ALICE, ROOT, "bob-key-0123456789abc"}
    assert from_file[ROOT].is_admin and not from_file[ALICE].is_admin


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("secret-secret-secret-1", "entry 1 is not KEY=USER"),
        (f"{ALICE}=", "entry 1 is not KEY=USER"),
        (f"{ALICE}=alice,{ALICE}=bob", "entry 2 repeats a key"),
        (f"{ALICE}=alice:owner", "the only role is ':admin'"),
        ("short=alice", "at least 16 characters"),
        (f"{ALICE}=al\u0000ice", "entry 1: the user"),
        (f"{ALICE}=al\udcffice", "entry 1: the user"),  # a byte not UTF-8, in the environment
    ],
)
def test_bad_entries_say_which_without_the_key(text: str, says: str) -> None:
    with pytest.raises(ConfigurationError) as refused:
        parse_api_keys(text)
    assert says in str(refused.value)
    for secret in ("secret-secret-secret-1", ALICE, "short"):
        assert secret not in str(refused.value)


def test_a_missing_file_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot read"):
        read_api_keys_file(str(tmp_path / "nope"))


def test_a_file_that_is_not_utf8_is_a_configuration_error(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_bytes(f"{ALICE}=alice\n".encode() + b"\xff\xfe=bob\n")
    with pytest.raises(ConfigurationError, match="CODE_HERO_API_KEYS_FILE"):
        read_api_keys_file(str(keys))


def test_look_up_and_repr_hide_keys() -> None:
    keys = ApiKeys(parse_api_keys(f"{ALICE}=alice"))
    assert keys.caller(ALICE) == Caller(user_id="alice")
    assert keys.caller(ALICE[:-1]) is None and keys.caller(ALICE + "x") is None
    assert keys.caller("\ud800") is None  # a lone surrogate from JSON does not crash it
    assert ALICE not in repr(keys)
    assert ALICE not in repr(AuthSettings(api_keys=parse_api_keys(f"{ALICE}=alice")))


def test_bearer_token() -> None:
    assert bearer_token("Bearer abc") == "abc" and bearer_token("bearer  abc ") == "abc"
    assert bearer_token("abc", bare=True) == "abc"
    for bad in (None, "", "abc", "Basic abc", "Bearer ", 42):
        with pytest.raises(UnauthenticatedError):
            bearer_token(bad)


async def test_open_mode_and_keys() -> None:
    open_mode = Authenticator(AuthSettings())
    assert not open_mode.enabled and (await open_mode.caller(None)).anonymous
    auth = Authenticator(AuthSettings(api_keys=parse_api_keys(f"{ALICE}=alice")))
    assert (await auth.caller(f"Bearer {ALICE}")).user_id == "alice"
    with pytest.raises(UnauthenticatedError, match="invalid credentials"):
        await auth.caller("Bearer not-a-key-at-all")
    with pytest.raises(UnauthenticatedError, match="authentication required"):
        await auth.caller(None)
