"""Checkpointer configuration: the seed's `CheckpointerConfig`, its types and factories.

The factory functions and `config_for_environment` are the edge where the
environment is read (DEV_USE_SQLITE, SQLITE_PATH, DATABASE_URL, POSTGRES_URL);
everything below them receives a frozen `CheckpointerConfig`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from code_hero.errors import ConfigurationError

__all__ = [
    "DEFAULT_PRODUCTION_SQLITE_PATH",
    "DEFAULT_SQLITE_PATH",
    "CheckpointerConfig",
    "CheckpointerType",
    "config_for_environment",
    "config_from_url",
    "config_from_url_setting",
    "create_memory_checkpointer",
    "create_postgres_checkpointer",
    "create_sqlite_checkpointer",
    "get_development_checkpointer_config",
    "get_production_checkpointer_config",
    "get_testing_checkpointer_config",
]

DEFAULT_SQLITE_PATH = "dev_checkpoints.sqlite"
DEFAULT_PRODUCTION_SQLITE_PATH = "checkpoints.sqlite"
ENVIRONMENTS = ("development", "testing", "production")


class CheckpointerType(StrEnum):
    """Which storage backend a manager uses (the ASYNC_ variants only state intent)."""

    MEMORY = "memory"
    SQLITE = "sqlite"
    ASYNC_SQLITE = "async_sqlite"
    POSTGRES = "postgres"
    ASYNC_POSTGRES = "async_postgres"

    @property
    def kind(self) -> str:
        """The database behind this type: "memory", "sqlite" or "postgres"."""
        return self.value.removeprefix("async_")


# The longest lock_timeout PostgreSQL takes, in seconds (2147483647 ms).
MAX_LOCK_TIMEOUT = 2_147_483.647


@dataclass(frozen=True)
class CheckpointerConfig:
    """Settings of one `EnhancedCheckpointerManager` (the seed's fields first)."""

    checkpointer_type: CheckpointerType | str = CheckpointerType.MEMORY
    connection_string: str | None = None
    database_path: str | None = None
    enable_async: bool = True
    auto_setup: bool = True
    thread_safe: bool = True
    # Beyond the seed.
    pool_min_size: int = 2
    pool_max_size: int = 16
    pool_timeout: float = 5.0
    saver_instances: int = 16
    # PostgreSQL: concurrent threads' checkpoint writes share one transaction
    # (persistence/groupcommit.py); off, each write commits on its own.
    group_commit: bool = True
    health_check_interval: float = 5.0
    # PostgreSQL: seconds a statement waits for a lock another session holds (a LOCK
    # TABLE, a row locked FOR UPDATE, a migration), then fails with lock_not_available:
    # UNAVAILABLE for a request; a run's checkpoint write waits on. SQLite's busy wait
    # is as long. A lock_timeout the database or role sets itself wins; 0: no bound;
    # past MAX_LOCK_TIMEOUT (PostgreSQL's largest), that largest.
    lock_timeout: float = 5.0
    enable_fallback: bool = True
    # Writes a fallback holds for the primary during an outage, at most (then UNAVAILABLE).
    max_pending_sync: int = 100_000
    # SQLite: the connection's page cache, at most (SQLite's default: 2,000 KiB). Pages
    # beyond it are read again through the operating system's file cache.
    sqlite_cache_kib: int = 512
    # The durable fallback's SQLite file (`persistence/outagefile.py`): what an outage's
    # fallback takes survives the process's death. None: the fallback is in memory.
    fallback_path: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        raw = self.checkpointer_type
        try:
            kind = raw if isinstance(raw, CheckpointerType) else CheckpointerType(str(raw).lower())
        except ValueError:
            names = ", ".join(t.value for t in CheckpointerType)
            raise ConfigurationError(
                f"unknown checkpointer type {raw!r}; use one of: {names}"
            ) from None
        object.__setattr__(self, "checkpointer_type", kind)
        if kind.kind == "postgres" and not self.connection_string:
            raise ConfigurationError(
                "a PostgreSQL checkpointer needs connection_string "
                "(e.g. postgresql://user@localhost:5432/db)"
            )
        if kind.kind == "sqlite" and not self.database_path:
            raise ConfigurationError("a SQLite checkpointer needs database_path")
        if self.pool_max_size < 1 or self.pool_min_size < 0 or self.saver_instances < 1:
            raise ConfigurationError("pool sizes and saver_instances must be positive")
        if self.max_pending_sync < 1:
            raise ConfigurationError("max_pending_sync must be at least 1")
        if self.sqlite_cache_kib < 1:
            raise ConfigurationError("sqlite_cache_kib must be at least 1")
        if (
            self.fallback_path
            and self.database_path
            and _same_file(self.fallback_path, self.database_path)
        ):
            raise ConfigurationError(
                f"the fallback's file {self.fallback_path} is the database itself: set "
                "CODE_HERO_FALLBACK_PATH to another file (on another disk)"
            )
        if self.health_check_interval <= 0 or self.pool_timeout <= 0:
            raise ConfigurationError("health_check_interval and pool_timeout must be positive")

    @property
    def type(self) -> CheckpointerType:
        """The checkpointer type as the enum (construction accepts strings too)."""
        assert isinstance(self.checkpointer_type, CheckpointerType)
        return self.checkpointer_type

    @property
    def kind(self) -> str:
        """The database behind this config: "memory", "sqlite" or "postgres"."""
        return self.type.kind

    def with_options(self, **changes: Any) -> CheckpointerConfig:
        """A copy with some fields changed."""
        return replace(self, **changes)

    def describe(self) -> str:
        """Where this config stores data, with any password hidden."""
        if self.kind == "postgres":
            return redact_url(self.connection_string or "")
        if self.kind == "sqlite":
            return f"sqlite:///{self.database_path}"
        return "memory://"


def _same_file(a: str, b: str) -> bool:
    return Path(a).resolve() == Path(b).resolve()


def redact_url(url: str) -> str:
    """The URL with its password replaced by ***."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme}{sep}{_masked(rest)}" if sep else url


def create_memory_checkpointer(**kwargs: Any) -> CheckpointerConfig:
    """A config for the in-memory saver (tests, quick experiments)."""
    return CheckpointerConfig(checkpointer_type=CheckpointerType.MEMORY, **kwargs)


def create_sqlite_checkpointer(
    database_path: str, async_mode: bool = True, thread_safe: bool = True, **kwargs: Any
) -> CheckpointerConfig:
    """A config for a SQLite file (`async_mode` picks the async saver type)."""
    kind = CheckpointerType.ASYNC_SQLITE if async_mode else CheckpointerType.SQLITE
    return CheckpointerConfig(
        checkpointer_type=kind,
        database_path=str(database_path),
        enable_async=async_mode,
        thread_safe=thread_safe,
        **kwargs,
    )


def create_postgres_checkpointer(
    connection_string: str, async_mode: bool = True, **kwargs: Any
) -> CheckpointerConfig:
    """A config for PostgreSQL over a psycopg connection pool."""
    kind = CheckpointerType.ASYNC_POSTGRES if async_mode else CheckpointerType.POSTGRES
    return CheckpointerConfig(
        checkpointer_type=kind,
        connection_string=connection_string,
        enable_async=async_mode,
        **kwargs,
    )


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def get_development_checkpointer_config(
    environ: Mapping[str, str] | None = None,
) -> CheckpointerConfig:
    """Memory, or SQLite at SQLITE_PATH when DEV_USE_SQLITE=true."""
    env = os.environ if environ is None else environ
    if _truthy(env.get("DEV_USE_SQLITE")):
        return create_sqlite_checkpointer(env.get("SQLITE_PATH") or DEFAULT_SQLITE_PATH)
    return create_memory_checkpointer()


def get_testing_checkpointer_config() -> CheckpointerConfig:
    """Always memory, for isolation."""
    return create_memory_checkpointer()


def get_production_checkpointer_config(
    environ: Mapping[str, str] | None = None,
) -> CheckpointerConfig:
    """PostgreSQL when DATABASE_URL or POSTGRES_URL is set, else a SQLite file."""
    env = os.environ if environ is None else environ
    for name in ("DATABASE_URL", "POSTGRES_URL"):
        if url := env.get(name):
            return config_from_url_setting(name, url)
    return create_sqlite_checkpointer(env.get("SQLITE_PATH") or DEFAULT_PRODUCTION_SQLITE_PATH)


def config_for_environment(
    environment: str = "development", environ: Mapping[str, str] | None = None
) -> CheckpointerConfig:
    """The seed's environment rules: development, testing or production."""
    name = (environment or "development").strip().lower()
    if name == "development":
        return get_development_checkpointer_config(environ)
    if name == "testing":
        return get_testing_checkpointer_config()
    if name == "production":
        return get_production_checkpointer_config(environ)
    raise ConfigurationError(
        f"unknown environment {environment!r}; use one of: {', '.join(ENVIRONMENTS)}"
    )


_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
# A libpq key=value connection string ("host=db user=app password=..."), which a
# bare path would otherwise take for a SQLite file's name (its password in the name).
_KEY_VALUE = re.compile(
    r"\s*(host|hostaddr|port|dbname|user|password|passfile|sslmode|service|options|"
    r"connect_timeout|application_name|target_session_attrs)\s*=",
    re.IGNORECASE,
)


def config_from_url(url: str, **kwargs: Any) -> CheckpointerConfig:
    """A config from a URL: postgresql://..., sqlite:///path, a .sqlite path, or memory://.

    A scheme is case-insensitive (RFC 3986); a PostgreSQL URL is one libpq can read,
    or a ConfigurationError that never shows its password.
    """
    text = url.strip()
    match = _SCHEME.match(text)
    scheme = match.group(1).lower() if match else ""
    if scheme in {"postgres", "postgresql"} or scheme.startswith("postgresql+"):
        # libpq reads only lower-case schemes; postgresql+psycopg:// is SQLAlchemy's
        text = scheme.partition("+")[0] + text[len(scheme) :]
        _check_postgres_url(text)
        return create_postgres_checkpointer(text, **kwargs)
    if scheme == "sqlite":
        # sqlite:///relative.db -> relative.db, sqlite:////abs.db -> /abs.db
        path = text[len("sqlite:") :].removeprefix("//").removeprefix("/")
        if not path:
            raise ConfigurationError(f"no file path in SQLite URL {url!r}")
        if "?" in path or "#" in path:  # a URL's query: none is read, so none is taken
            # An earlier version made the whole text the file's name: say where that is.
            made = (
                f"; a file named {path!r} exists, where an earlier version stored this URL's "
                "data: rename it, or give its path as a path, not a URL"
                if Path(path).exists()
                else ""
            )
            raise ConfigurationError(
                f"SQLite URL {url!r} has a query string, which is not read: give the file's "
                f"path alone (sqlite:///relative.db, sqlite:////absolute.db){made}"
            )
        return create_sqlite_checkpointer(path, **kwargs)
    if scheme == "memory" or text == ":memory:":
        return create_memory_checkpointer(**kwargs)
    if scheme == "" and _KEY_VALUE.match(text):
        raise ConfigurationError(
            "a libpq key=value connection string is not taken: write it as a URL, "
            "postgresql://user:password@host:port/dbname (the password percent-encoded)"
        )
    if scheme == "" and text:
        return create_sqlite_checkpointer(str(Path(text)), **kwargs)
    raise ConfigurationError(
        f"cannot tell the backend of {redact_url(url)!r}: "
        "use postgresql://..., sqlite:///path or memory://"
    )


def config_from_url_setting(name: str, url: str) -> CheckpointerConfig:
    """`config_from_url` of the URL a setting (a variable, an option) holds; a
    ConfigurationError names the setting."""
    try:
        return config_from_url(url)
    except ConfigurationError as exc:
        raise ConfigurationError(f"{name}: {exc}") from None


def _libpq_at(rest: str) -> int:
    """Where libpq ends the credentials of a URL after its `scheme://`: the index of
    the first @ before any /, or -1 (then it reads no user or password)."""
    at = rest.find("@")
    return at if at != -1 and "/" not in rest[:at] else -1


def _credentials_at(rest: str) -> int:
    """Where the credentials of a URL after its `scheme://` end (the index of their
    @, or -1), to hide them: libpq's @, unless an @ follows it before any query (an
    unencoded / or @ in the password: libpq would read the host from it) or libpq
    finds none and an @ follows at all; then the last @, hiding too much, not too little."""
    at = _libpq_at(rest)
    tail = rest if at == -1 else rest[at + 1 :].split("?", 1)[0]
    return rest.rfind("@") if "@" in tail else at


def _masked(rest: str) -> str:
    """`rest` (a URL after its `scheme://`) with its password, if any, as ***."""
    at = _credentials_at(rest)
    user, _, password = rest[: max(at, 0)].partition(":")
    return f"{user}:***{rest[at:]}" if password else rest


def _check_postgres_url(url: str) -> None:
    """ConfigurationError unless libpq can read `url` (parsed here: nothing connects)
    and takes its password whole.

    libpq's messages quote the part they cannot read, the password included, so its
    message is told only of the URL with *** in the password's place.
    """
    # psycopg loads only for PostgreSQL (SQLite and memory servers never need it).
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict

    scheme, _, rest = url.partition("://")
    unencoded = ConfigurationError(
        "the password in the PostgreSQL URL is not URL-encoded: percent-encode it, "
        "% as %25, / as %2F, @ as %40, # as %23, ? as %3F, a space as %20"
    )
    if "@" in rest[_libpq_at(rest) + 1 :].split("?", 1)[0]:
        raise unencoded  # u:pa/ss@h or u:p@ss@h: libpq's host would be u or ss@h
    try:
        params = conninfo_to_dict(url)
    except ProgrammingError:
        try:
            conninfo_to_dict(f"{scheme}://{_masked(rest)}")
        except ProgrammingError as exc:
            text = str(exc).strip()
            detail = text.splitlines()[0] if text else type(exc).__name__
            raise ConfigurationError(f"not a PostgreSQL URL libpq can read: {detail}") from None
        raise unencoded from None  # without its password, libpq reads it
    _check_libpq_values(params)


_SSLMODES = frozenset({"disable", "allow", "prefer", "require", "verify-ca", "verify-full"})


def _check_libpq_values(params: Mapping[str, Any]) -> None:
    """ConfigurationError for a port or sslmode libpq parses but refuses at every
    connection ("invalid port number"): caught at start-up, such a typo was an outage
    that never ended, the server serving from its fallback file."""
    for port in str(params.get("port") or "").split(","):  # one per host, or none
        if port and not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
            raise ConfigurationError(
                f"not a PostgreSQL URL libpq can read: the port {port!r} is not 1-65535"
            )
    sslmode = params.get("sslmode")
    if sslmode is not None and sslmode not in _SSLMODES:
        raise ConfigurationError(
            f"not a PostgreSQL URL libpq can read: sslmode {sslmode!r} is none of "
            f"{', '.join(sorted(_SSLMODES))}"
        )
