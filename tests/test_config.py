"""The seed's environment rules and factories."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from code_hero.config import (
    CheckpointerConfig,
    CheckpointerType,
    config_for_environment,
    config_from_url,
    config_from_url_setting,
    create_postgres_checkpointer,
    create_sqlite_checkpointer,
    get_development_checkpointer_config,
    get_production_checkpointer_config,
)
from code_hero.errors import ConfigurationError
from tests.conftest import PG_ADMIN_URL


def test_development_is_memory_unless_dev_use_sqlite() -> None:
    assert get_development_checkpointer_config({}).type is CheckpointerType.MEMORY
    config = get_development_checkpointer_config(
        {"DEV_USE_SQLITE": "true", "SQLITE_PATH": "data/dev.sqlite"}
    )
    assert config.kind == "sqlite" and config.database_path == "data/dev.sqlite"
    assert get_development_checkpointer_config({"DEV_USE_SQLITE": "false"}).kind == "memory"


def test_testing_is_always_memory() -> None:
    env = {"DATABASE_URL": "postgresql://x@h/db", "DEV_USE_SQLITE": "true"}
    assert config_for_environment("testing", env).kind == "memory"


def test_production_prefers_database_url_then_postgres_url_then_sqlite() -> None:
    both = {"DATABASE_URL": "postgresql://a@h/one", "POSTGRES_URL": "postgresql://b@h/two"}
    assert get_production_checkpointer_config(both).connection_string == "postgresql://a@h/one"
    only = {"POSTGRES_URL": "postgresql://b@h/two"}
    assert get_production_checkpointer_config(only).type is CheckpointerType.ASYNC_POSTGRES
    fallback = get_production_checkpointer_config({"SQLITE_PATH": "/var/lib/ch.sqlite"})
    assert fallback.kind == "sqlite" and fallback.database_path == "/var/lib/ch.sqlite"
    assert get_production_checkpointer_config({}).database_path == "checkpoints.sqlite"


def test_unknown_environment_is_a_clear_error() -> None:
    with pytest.raises(ConfigurationError, match="unknown environment 'staging'"):
        config_for_environment("staging", {})


def test_factories_pick_sync_or_async_types() -> None:
    assert create_sqlite_checkpointer("x.db", async_mode=False).type is CheckpointerType.SQLITE
    assert create_sqlite_checkpointer("x.db").type is CheckpointerType.ASYNC_SQLITE
    pg = create_postgres_checkpointer("postgresql://h/db", async_mode=False)
    assert pg.type is CheckpointerType.POSTGRES and pg.enable_async is False


def test_config_accepts_type_names_and_rejects_bad_values() -> None:
    assert CheckpointerConfig(checkpointer_type="SQLITE", database_path="a").kind == "sqlite"
    with pytest.raises(ConfigurationError, match="database_path"):
        CheckpointerConfig(checkpointer_type=CheckpointerType.SQLITE)
    with pytest.raises(ConfigurationError, match="positive"):
        CheckpointerConfig(saver_instances=0)


@pytest.mark.parametrize(
    ("url", "kind", "where"),
    [
        ("postgresql://u:p@h:5432/db", "postgres", "postgresql://u:p@h:5432/db"),
        ("postgres://u@h/db", "postgres", "postgres://u@h/db"),
        ("postgresql+psycopg://u@h/db", "postgres", "postgresql://u@h/db"),
        ("sqlite:///rel.db", "sqlite", "rel.db"),
        ("sqlite:////abs/path.db", "sqlite", "/abs/path.db"),
        ("data/x.sqlite", "sqlite", "data/x.sqlite"),
        ("memory://", "memory", None),
    ],
)
def test_config_from_url(url: str, kind: str, where: str | None) -> None:
    config = config_from_url(url)
    assert config.kind == kind
    assert (config.connection_string or config.database_path) == where


def test_describe_hides_passwords() -> None:
    assert "***" in config_from_url("postgresql://u:secret@h/db").describe()
    assert "secret" not in config_from_url("postgresql://u:secret@h/db").describe()
    with pytest.raises(ConfigurationError):
        config_from_url("mysql://u@h/db")


@pytest.mark.parametrize(
    ("url", "told"),
    [
        ("postgresql://u:secret@h/db?nosuchparam=1", 'invalid URI query parameter: "nosuchparam"'),
        ("postgresql://u:50%off@h/db", "password in the PostgreSQL URL is not URL-encoded"),
        ("postgresql://u:se cret@h/db", "password in the PostgreSQL URL is not URL-encoded"),
        ("postgresql://u:p@secret@h/db", "password in the PostgreSQL URL is not URL-encoded"),
        ("postgresql://u:secret@[::1/db", 'IPv6 host address in URI: "postgresql://u:***@[::1/db"'),
        ("mysql://u:secret@[::1/db", "cannot tell the backend of 'mysql://u:***@[::1/db'"),
    ],
)
def test_a_postgres_url_libpq_cannot_read_is_refused_without_its_password(
    url: str, told: str
) -> None:
    # Refused here, not when the pool first connects: serve would start on its fallback.
    with pytest.raises(ConfigurationError) as refused:
        config_from_url_setting("DATABASE_URL", url)
    message = str(refused.value)
    assert message.startswith("DATABASE_URL: ") and told in message
    assert "secret" not in message and "off" not in message and "\n" not in message


@pytest.mark.parametrize(
    "url",
    ["Postgresql://u@h/db", "POSTGRES://u@h/db", "PostgreSQL+Psycopg://u@h/db"],
)
def test_a_postgres_urls_scheme_is_case_insensitive(url: str) -> None:
    # RFC 3986 schemes are case-insensitive; libpq reads only lower case ones.
    config = config_from_url(url)
    assert config.kind == "postgres" and config.connection_string is not None
    assert config.connection_string.startswith(("postgresql://u@h/db", "postgres://u@h/db"))
    assert conninfo_to_dict(config.connection_string)["host"] == "h"


@pytest.mark.parametrize(
    "dsn",
    [
        "host=127.0.0.1 user=postgres password=secret dbname=test",
        "dbname=test password=secret",
        "  Host = db password=secret",
    ],
)
def test_a_libpq_key_value_string_is_refused_not_taken_for_a_sqlite_file(dsn: str) -> None:
    """It was a SQLite file named after it, its password in the name and in the logs."""
    with pytest.raises(ConfigurationError) as refused:
        config_from_url_setting("DATABASE_URL", dsn)
    message = str(refused.value)
    assert message.startswith("DATABASE_URL: ") and "postgresql://" in message
    assert "secret" not in message


def test_a_file_path_with_an_equals_sign_is_still_a_sqlite_file() -> None:
    config = config_from_url("data/run=1.sqlite")
    assert config.kind == "sqlite" and config.database_path == "data/run=1.sqlite"


def test_a_sqlite_url_with_a_query_string_is_refused_naming_a_file_made_of_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its query was never read: an earlier version made it part of the file's name."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigurationError, match="has a query string, which is not read") as no:
        config_from_url("sqlite:///data.db?mode=rwc")
    assert "exists" not in str(no.value)
    (tmp_path / "data.db?mode=rwc").touch()
    with pytest.raises(ConfigurationError, match=r"a file named 'data\.db\?mode=rwc' exists"):
        config_from_url("sqlite:///data.db?mode=rwc")
    assert config_from_url("data.db?mode=rwc").database_path == "data.db?mode=rwc"  # a path


def test_production_names_the_variable_of_a_bad_url() -> None:
    with pytest.raises(ConfigurationError, match=r"^POSTGRES_URL: "):
        get_production_checkpointer_config({"POSTGRES_URL": "postgresql://h/db?x=1"})


# A password's characters that libpq reads as the end of it (/, @) or that RFC 3986
# parsers do (#, ?). The letters around them must never be shown.
SHOWN = ("zq", "xv", "kw")


@pytest.mark.parametrize(
    "password",
    ["zq/xv", "91/78", "zq@xv", "zq/xv?kw", "zq/xv?kw=1", "zq@xv/kw", "zq%2Fxv/kw"],
)
def test_a_password_libpq_would_split_is_refused_and_never_shown(password: str) -> None:
    # libpq would read "u:zq/xv@h:5432/db" as host u, port zq, database xv@h:5432/db:
    # refused at start-up, before any connection to a host that is not the database's.
    url = f"postgresql://u:{password}@h:5432/db"
    with pytest.raises(ConfigurationError) as refused:
        config_from_url_setting("CODE_HERO_DATABASE_URL", url)
    message = str(refused.value)
    assert message.startswith("CODE_HERO_DATABASE_URL: the password in the PostgreSQL URL")
    assert "not URL-encoded" in message and "/ as %2F" in message
    assert not any(part in message for part in (*SHOWN, "91", "78")), message
    # And a config made without the check (the seed's factory) never shows it either.
    where = create_postgres_checkpointer(url).describe()
    assert not any(part in where for part in (*SHOWN, "91", "78")), where


@pytest.mark.parametrize(
    ("password", "meant"),
    [
        ("zq#xv", "zq#xv"),
        ("zq?xv", "zq?xv"),
        ("zq:xv", "zq:xv"),
        ("zq%2Fxv", "zq/xv"),
        ("zq%40xv", "zq@xv"),
        ("zq%23xv", "zq#xv"),
        ("zq%3Fxv", "zq?xv"),
        ("zq%2Fxv%23kw", "zq/xv#kw"),
    ],
)
def test_a_password_libpq_reads_whole_is_taken_and_never_shown(password: str, meant: str) -> None:
    # libpq ends a password only at @ (and at / before any @): # and ? are its own.
    config = config_from_url_setting("DATABASE_URL", f"postgresql://u:{password}@h:5432/db")
    assert config.connection_string is not None
    read = conninfo_to_dict(config.connection_string)
    assert (read["password"], read["host"], read["port"], read["dbname"]) == (
        meant,
        "h",
        "5432",
        "db",
    )
    assert config.describe() == "postgresql://u:***@h:5432/db"


def test_a_percent_encoded_password_reaches_the_database() -> None:
    # The server may trust its clients (it does in CI): what this shows is that libpq
    # connects to the URL's host and database, not to a host read from the password.
    admin = conninfo_to_dict(PG_ADMIN_URL)
    if admin.get("password"):
        pytest.skip("CODE_HERO_TEST_PG has a password of its own")
    where = f"{admin.get('host', 'localhost')}:{admin.get('port', 5432)}/{admin['dbname']}"
    url = f"postgresql://{admin.get('user', 'postgres')}:pa%2Fss%23x%3F%40@{where}"
    with psycopg.connect(str(config_from_url(url).connection_string), connect_timeout=5) as conn:
        row = conn.execute("SELECT current_database()").fetchone()
    assert row == (admin["dbname"],)
