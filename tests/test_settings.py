"""Settings from the environment: the security variables, and the README's table."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from code_hero.auth import RateLimit
from code_hero.errors import ConfigurationError
from code_hero.settings import ENVIRONMENT, settings_from_env

README = Path(__file__).resolve().parents[1] / "README.md"
KEY = "k-0123456789abcdef0123"


def test_the_readme_table_is_environment() -> None:
    rows = dict(re.findall(r"^\| `([A-Z_]+)` \| (.+) \|$", README.read_text(), re.MULTILINE))
    assert rows == ENVIRONMENT


def test_open_mode_defaults() -> None:
    settings = settings_from_env({})
    assert not settings.auth.enabled and settings.graphiql
    assert settings.gateway.access.rate_limit is None
    assert settings.limits.introspection and settings.limits.field_suggestions
    assert settings.cors_origins == ()
    assert settings.gateway.event_recheck_interval == 2.0
    chosen = settings_from_env({"CODE_HERO_EVENT_RECHECK_SECONDS": "0.5"})
    assert chosen.gateway.event_recheck_interval == 0.5


def test_idle_connections_outlast_the_clients_pools() -> None:
    # httpx keeps a pooled connection 5 s, AWS's load balancer 60 s: the server longer.
    assert settings_from_env({}).keep_alive == 75.0
    assert settings_from_env({"CODE_HERO_KEEP_ALIVE_SECONDS": "120"}).keep_alive == 120.0
    for bad, says in (
        ("0", "must be positive"),
        ("-1", "must be positive"),
        ("soon", "must be a number"),
    ):
        with pytest.raises(ConfigurationError, match=f"CODE_HERO_KEEP_ALIVE_SECONDS {says}"):
            settings_from_env({"CODE_HERO_KEEP_ALIVE_SECONDS": bad})


def test_with_authentication(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text(f"{KEY}x=bob\n")
    settings = settings_from_env(
        {
            "CODE_HERO_API_KEYS": f"{KEY}=ann:admin",
            "CODE_HERO_API_KEYS_FILE": str(keys),
            "CODE_HERO_CORS_ORIGINS": "https://app.example/, https://admin.example",
            "CODE_HERO_INTROSPECTION": "false",
            "CODE_HERO_FIELD_SUGGESTIONS": "false",
        }
    )
    auth = settings.auth
    assert auth.enabled and set(auth.api_keys) == {KEY, KEY + "x"}
    assert auth.api_keys[KEY].is_admin and auth.api_keys[KEY + "x"].user_id == "bob"
    assert not settings.graphiql  # off by default once authentication is on
    assert settings.gateway.access.rate_limit == RateLimit(60, 60.0)
    assert settings.cors_origins == ("https://app.example", "https://admin.example")
    assert not settings.limits.introspection and not settings.limits.field_suggestions
    assert KEY not in repr(settings)
    chosen = settings_from_env(
        {"CODE_HERO_JWT_SECRET": "s" * 32, "CODE_HERO_RATE_LIMIT": "off", "CODE_HERO_GRAPHIQL": "1"}
    )
    assert chosen.auth.enabled and chosen.graphiql and chosen.gateway.access.rate_limit is None


def test_bad_security_settings_stop_the_start() -> None:
    for env, says in (
        ({"CODE_HERO_API_KEYS": "short=ann"}, "at least 16"),
        ({"CODE_HERO_API_KEYS_FILE": "/nonexistent/keys"}, "cannot read"),
        ({"CODE_HERO_RATE_LIMIT": "fast"}, "60/minute"),
        ({"CODE_HERO_AUTH_HOOK": "no_such_module_here:hook"}, "cannot import"),
        ({"CODE_HERO_AUTH_HOOK": "json"}, "module:function"),
        ({"CODE_HERO_AUTH_HOOK": "json:nothing_here"}, "is not a function"),
    ):
        with pytest.raises(ConfigurationError, match=says):
            settings_from_env(env)


def test_max_recursion_limit() -> None:
    assert settings_from_env({}).gateway.max_recursion_limit == 100
    env = {"CODE_HERO_MAX_RECURSION_LIMIT": "7"}
    assert settings_from_env(env).gateway.max_recursion_limit == 7
    for raw in ("0", "-1", "many"):
        with pytest.raises(ConfigurationError, match="CODE_HERO_MAX_RECURSION_LIMIT"):
            settings_from_env({"CODE_HERO_MAX_RECURSION_LIMIT": raw})


def test_sqlite_cache_kib() -> None:
    url = {"CODE_HERO_DATABASE_URL": "sqlite:///tmp/x.sqlite"}
    assert settings_from_env(url).gateway.checkpointer.sqlite_cache_kib == 512
    env = {**url, "CODE_HERO_SQLITE_CACHE_KIB": "2000"}
    assert settings_from_env(env).gateway.checkpointer.sqlite_cache_kib == 2000
    for raw in ("0", "-1", "lots", str(2**31), "1099511627776"):
        with pytest.raises(ConfigurationError, match="CODE_HERO_SQLITE_CACHE_KIB"):
            settings_from_env({**url, "CODE_HERO_SQLITE_CACHE_KIB": raw})


def test_lock_timeout_from_the_environment() -> None:
    from code_hero.settings import checkpointer_from_env

    env = {"CODE_HERO_DATABASE_URL": "postgresql://db/x", "CODE_HERO_LOCK_TIMEOUT": "2.5"}
    assert checkpointer_from_env(env).lock_timeout == 2.5
    assert checkpointer_from_env({"CODE_HERO_DATABASE_URL": "postgresql://db/x"}).lock_timeout == 5
    with pytest.raises(ConfigurationError, match="CODE_HERO_LOCK_TIMEOUT"):
        checkpointer_from_env({"CODE_HERO_LOCK_TIMEOUT": "-1"})


def test_the_durable_fallback_is_postgresqls_by_default_and_sqlites_when_set(
    tmp_path: Path,
) -> None:
    from code_hero.settings import checkpointer_from_env

    pg = {"CODE_HERO_DATABASE_URL": "postgresql://db/x"}
    assert checkpointer_from_env(pg).fallback_path == "code-hero-fallback.sqlite"
    elsewhere = str(tmp_path / "f.sqlite")
    assert (
        checkpointer_from_env({**pg, "CODE_HERO_FALLBACK_PATH": elsewhere}).fallback_path
        == elsewhere
    )
    assert checkpointer_from_env({**pg, "CODE_HERO_FALLBACK_PATH": "memory"}).fallback_path is None
    lite = {"CODE_HERO_DATABASE_URL": f"sqlite:///{tmp_path}/db.sqlite"}
    assert checkpointer_from_env(lite).fallback_path is None  # its disk would go with it
    assert (
        checkpointer_from_env({**lite, "CODE_HERO_FALLBACK_PATH": elsewhere}).fallback_path
        == elsewhere
    )
    with pytest.raises(ConfigurationError, match="the database itself"):
        checkpointer_from_env({**lite, "CODE_HERO_FALLBACK_PATH": f"{tmp_path}/db.sqlite"})


def test_a_port_from_the_environment_is_a_tcp_port() -> None:
    # `--port 99999` is refused as a bad argument; CODE_HERO_PORT=99999 was taken and
    # uvicorn listened on 34463 (99999 mod 65536) while logging 99999.
    assert settings_from_env({"CODE_HERO_PORT": "8600"}).port == 8600
    assert settings_from_env({"CODE_HERO_PORT": "65535"}).port == 65535
    assert settings_from_env({"CODE_HERO_PORT": "0"}).port == 0  # any free port, as --port 0
    assert settings_from_env({}).port == 8000
    for raw in ("65536", "99999", "-1"):
        with pytest.raises(ConfigurationError, match="CODE_HERO_PORT"):
            settings_from_env({"CODE_HERO_PORT": raw})
