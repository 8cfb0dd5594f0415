"""Server settings: read once from the environment and CLI options, then frozen.

Every variable the server reads is listed in `ENVIRONMENT` (the README's
configuration table is generated from the same names).
"""

from __future__ import annotations

import ipaddress
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from standardwebhooks import Webhook

from code_hero.auth import (
    AccessSettings,
    AuthSettings,
    Caller,
    JwtSettings,
    load_hook,
    parse_api_keys,
    parse_rate_limit,
    read_api_keys_file,
)
from code_hero.compose import DEFAULT_TOMBSTONE_RETENTION
from code_hero.config import (
    MAX_LOCK_TIMEOUT,
    CheckpointerConfig,
    config_for_environment,
    config_from_url_setting,
)
from code_hero.errors import ConfigurationError
from code_hero.gateway import GatewaySettings
from code_hero.inputs import MAX_TTL_SECONDS
from code_hero.limits import DEFAULT_MAX_COST, Limits
from code_hero.runs.destinations import parse_allow_list
from code_hero.runs.graphs import parse_graph_specs, read_langgraph_json
from code_hero.runs.webhooks import DEFAULT_RETENTION, WebhookSettings, parse_schedule

# Limits and DEFAULT_MAX_COST live in code_hero.limits (the schema needs them without
# the gateway this module imports); they are re-exported here for the edge's callers.
__all__ = [
    "DEFAULT_MAX_COST",
    "ENVIRONMENT",
    "AppSettings",
    "Limits",
    "auth_from_env",
    "is_loopback",
    "settings_from_env",
    "webhooks_from_env",
]

ENVIRONMENT: dict[str, str] = {
    "DATABASE_URL": "PostgreSQL URL of the checkpoint database (the seed's name)",
    "POSTGRES_URL": "used when DATABASE_URL is not set",
    "SQLITE_PATH": "SQLite file when no PostgreSQL URL is set (default checkpoints.sqlite)",
    "DEV_USE_SQLITE": "development environment: SQLite instead of memory",
    "CODE_HERO_ENVIRONMENT": "production (default for serve), development or testing",
    "CODE_HERO_DATABASE_URL": "overrides the above: postgresql://..., sqlite:///path or memory://",
    "CODE_HERO_GRAPHS": "extra graphs: name=package.module:attr,name=./file.py:attr",
    "CODE_HERO_LANGGRAPH_JSON": "a langgraph.json whose `graphs` are served",
    "CODE_HERO_DEFAULT_GRAPH": "graph used when a run names none (default code_hero)",
    "CODE_HERO_MODEL": "provider:model for the agents (default: the offline model)",
    "CODE_HERO_HOST": "listen address (default 127.0.0.1)",
    "CODE_HERO_PORT": "listen port, 0 to 65535 (default 8000)",
    "CODE_HERO_LOG_LEVEL": "debug, info, warning, error (default info)",
    "CODE_HERO_MAX_CONCURRENT_RUNS": "runs executing at once in this process (8; 0: serve only)",
    "CODE_HERO_LEASE_SECONDS": "run lease; an orphaned run is resumed after it lapses (15)",
    "CODE_HERO_HEALTH_INTERVAL": "seconds between backend probes (default 5)",
    "CODE_HERO_LOCK_TIMEOUT": (
        "PostgreSQL: seconds a request's statement waits for another session's lock "
        "(default 5; 0: no bound)"
    ),
    "CODE_HERO_MAX_PENDING_SYNC": "writes held for the database during an outage (100000)",
    "CODE_HERO_FALLBACK_PATH": (
        "serve's durable outage fallback, a SQLite file (PostgreSQL default "
        "code-hero-fallback.sqlite; SQLite: memory unless set); memory: none"
    ),
    "CODE_HERO_SQLITE_CACHE_KIB": "SQLite's page cache, KiB (default 512; SQLite's own: 2000)",
    "CODE_HERO_SHUTDOWN_GRACE": "seconds runs get to end on SIGTERM before being handed on (10)",
    "CODE_HERO_THREAD_TTL": "seconds after its last update a thread is deleted (unset: never)",
    "CODE_HERO_TOMBSTONE_RETENTION": (
        "seconds a finished deletion's record outlives it, against copy-backs "
        "(default 2592000, 30 days)"
    ),
    "CODE_HERO_EVENT_RECHECK_SECONDS": "silent seconds before a subscriber re-reads the log (2)",
    "CODE_HERO_GRAPHIQL": "serve GraphiQL at /graphql (default: true in open mode, else false)",
    "CODE_HERO_UI": "the dashboard at /ui; false: like --no-ui (default: see The dashboard)",
    "CODE_HERO_MAX_DEPTH": "query depth limit (default 10)",
    "CODE_HERO_MAX_ALIASES": "aliases per document (default 30)",
    "CODE_HERO_MAX_TOKENS": "tokens per document (default 5000)",
    "CODE_HERO_MAX_COST": "query cost limit: objects a document may ask for (default 25000)",
    "CODE_HERO_MAX_BODY_BYTES": "request body limit, HTTP 413 above it (default 1048576)",
    "CODE_HERO_MAX_MESSAGE_LENGTH": "characters in a run's message (default 100000)",
    "CODE_HERO_MAX_RECURSION_LIMIT": "highest recursion_limit a run's config may set (default 100)",
    "CODE_HERO_MAX_SUBSCRIPTIONS": "subscriptions per WebSocket connection (default 20)",
    "CODE_HERO_WS_INIT_TIMEOUT": "seconds a socket may wait before connection_init (default 10)",
    "CODE_HERO_KEEP_ALIVE_SECONDS": (
        "seconds an idle HTTP connection stays open (default 75: longer than clients' pools "
        "and load balancers keep one)"
    ),
    "CODE_HERO_API_KEYS": "API keys: KEY=USER or KEY=USER:admin, comma separated",
    "CODE_HERO_API_KEYS_FILE": "a file of such entries, one a line (keeps keys out of `ps`)",
    "CODE_HERO_JWT_SECRET": "HS256 secret of bearer JWTs (at least 32 bytes)",
    "CODE_HERO_JWT_JWKS": "RS256/ES256 public keys of bearer JWTs: a JWKS file path or URL",
    "CODE_HERO_JWT_ISSUER": "required `iss` of JWTs (checked when set)",
    "CODE_HERO_JWT_AUDIENCE": "required `aud` of JWTs (checked when set)",
    "CODE_HERO_JWT_ADMIN_CLAIM": "claim that makes a JWT's user an admin: role=admin or is_admin",
    "CODE_HERO_AUTH_HOOK": "module:function asked per action; may deny (see Security)",
    "CODE_HERO_RATE_LIMIT": "mutations per user: 60/minute (default with auth), off",
    "CODE_HERO_READ_RATE_LIMIT": "query cost points per user: 300000/minute (default with auth)",
    "CODE_HERO_ALLOW_ANONYMOUS": "open mode on a non-loopback address, like --allow-anonymous",
    "CODE_HERO_CORS_ORIGINS": "origins allowed for CORS and WebSockets, comma separated",
    "CODE_HERO_INTROSPECTION": "answer introspection queries (default true)",
    "CODE_HERO_FIELD_SUGGESTIONS": "'Did you mean ...' hints in errors (default true)",
    "CODE_HERO_WEBHOOK_RETRY_SCHEDULE": (
        "webhook tries: seconds after the first (0,5,30,120,600,1800,3600)"
    ),
    "CODE_HERO_WEBHOOK_ALLOW": (
        "private webhook destinations allowed: IPs and CIDRs, comma separated"
    ),
    "CODE_HERO_WEBHOOK_TIMEOUT": "seconds a webhook receiver has to answer a try (default 10)",
    "CODE_HERO_WEBHOOK_SECRET": "whsec_... secret signing deliveries to a run's own webhook URL",
    "CODE_HERO_WEBHOOK_RETENTION": (
        "seconds a delivered or failed webhook delivery is kept (default 604800, 7 days)"
    ),
}

# The durable fallback's file when the primary is PostgreSQL, beside SQLite's default.
DEFAULT_FALLBACK_PATH = "code-hero-fallback.sqlite"
DEFAULT_RATE_LIMIT = "60/minute"  # with authentication on; open mode has none unless set
# Query cost points (see code_hero.schema.cost), with authentication on: a dashboard
# polling a few pages of 20 rows (about 250 points each) every second spends under a
# tenth of it; a client asking for full pages of everything at the cost limit
# (25,000) gets a dozen a minute.
DEFAULT_READ_RATE_LIMIT = "300000/minute"
# How long serve keeps an idle HTTP/1.1 connection open (uvicorn's own default: 5 s).
# A client that reuses a pooled connection just as the server closes it has its request
# reset (httpx's pool keeps one 5 s, as uvicorn did: under load, 2 requests in 480 sent
# on connections idle 4.97-5.03 s got ReadError). The server must outlast its clients'
# pools and any load balancer in front (AWS's: 60 s), as nginx's 75 s does.
DEFAULT_KEEP_ALIVE = 75.0


@dataclass(frozen=True)
class AppSettings:
    """The whole server's settings."""

    gateway: GatewaySettings = field(default_factory=GatewaySettings)
    limits: Limits = field(default_factory=Limits)
    auth: AuthSettings = field(default_factory=AuthSettings)
    host: str = "127.0.0.1"
    port: int = 8000
    log_level: str = "info"
    graphiql: bool = True
    ui: bool = True  # the dashboard at /ui
    cors_origins: tuple[str, ...] = ()  # also the WebSocket origins allowed
    keep_alive: float = DEFAULT_KEEP_ALIVE  # seconds an idle HTTP connection stays open

    def with_options(self, **changes: Any) -> AppSettings:
        """A copy with some fields changed."""
        return replace(self, **changes)


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be a whole number, got {raw!r}") from None
    if value < 0:
        raise ConfigurationError(f"{name} must not be negative, got {raw!r}")
    return value


def _port(env: Mapping[str, str]) -> int:
    # As --port: uvicorn would take 99999, listen on 99999 mod 65536 and log 99999.
    value = _int(env, "CODE_HERO_PORT", 8000)
    if value > 65535:
        raise ConfigurationError(f"CODE_HERO_PORT must be a TCP port (0 to 65535), got {value}")
    return value


def _thread_ttl(env: Mapping[str, str]) -> int | None:
    if not env.get("CODE_HERO_THREAD_TTL"):
        return None
    value = _positive_int(env, "CODE_HERO_THREAD_TTL", 1)
    if value > MAX_TTL_SECONDS:
        raise ConfigurationError(f"CODE_HERO_THREAD_TTL must be at most {MAX_TTL_SECONDS}")
    return value


_SQLITE_CACHE_KIB_MAX = 2**31 - 1  # PRAGMA cache_size takes a 32-bit count


def _positive_int(env: Mapping[str, str], name: str, default: int) -> int:
    value = _int(env, name, default)
    if value < 1:
        raise ConfigurationError(f"{name} must be at least 1, got {value}")
    return value


def _float(
    env: Mapping[str, str],
    name: str,
    default: float,
    *,
    zero: bool = False,
    most: float = math.inf,
) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be a number, got {raw!r}") from None
    if not math.isfinite(value):
        raise ConfigurationError(f"{name} must be a finite number, got {raw!r}")
    if value < 0 or (value == 0 and not zero):
        least = "0 or more" if zero else "positive"
        raise ConfigurationError(f"{name} must be {least}, got {raw!r}")
    if value > most:
        raise ConfigurationError(f"{name} must be {most:g} at most, got {raw!r}")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = (env.get(name) or "").strip().lower()
    if not raw:
        return default
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise ConfigurationError(f"{name} must be true or false, got {raw!r}")


def _text(env: Mapping[str, str], name: str) -> str | None:
    return (env.get(name) or "").strip() or None


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost: addresses only this machine reaches."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def auth_from_env(env: Mapping[str, str]) -> AuthSettings:
    """API keys (variable and file) and JWT settings."""
    keys: dict[str, Caller] = {}
    if env.get("CODE_HERO_API_KEYS"):
        keys.update(parse_api_keys(env["CODE_HERO_API_KEYS"]))
    path = _text(env, "CODE_HERO_API_KEYS_FILE")
    if path:
        for key, caller in read_api_keys_file(path).items():
            if key in keys:
                raise ConfigurationError(
                    "a key is given both in CODE_HERO_API_KEYS and CODE_HERO_API_KEYS_FILE"
                )
            keys[key] = caller
    jwt = JwtSettings(
        secret=env.get("CODE_HERO_JWT_SECRET") or None,
        jwks=_text(env, "CODE_HERO_JWT_JWKS"),
        issuer=_text(env, "CODE_HERO_JWT_ISSUER"),
        audience=_text(env, "CODE_HERO_JWT_AUDIENCE"),
        admin_claim=_text(env, "CODE_HERO_JWT_ADMIN_CLAIM"),
    )
    return AuthSettings(
        api_keys=keys,
        jwt=jwt,
        allow_anonymous=_bool(env, "CODE_HERO_ALLOW_ANONYMOUS", False),
    )


def _hook(env: Mapping[str, str]) -> str | None:
    spec = _text(env, "CODE_HERO_AUTH_HOOK")
    if spec:
        load_hook(spec)  # a hook that does not load stops the server before it listens
    return spec


def _origins(env: Mapping[str, str]) -> tuple[str, ...]:
    origins = tuple(o.strip() for o in (env.get("CODE_HERO_CORS_ORIGINS") or "").split(","))
    return tuple(o.rstrip("/") for o in origins if o)


def webhooks_from_env(env: Mapping[str, str]) -> WebhookSettings:
    """Retry schedule, allowed private destinations, timeout and the run webhooks' secret."""
    secret = _text(env, "CODE_HERO_WEBHOOK_SECRET")
    if secret is not None:
        try:
            Webhook(secret)
        except Exception:
            raise ConfigurationError(
                "CODE_HERO_WEBHOOK_SECRET must be whsec_ followed by base64"
            ) from None
    return WebhookSettings(
        schedule=parse_schedule(env.get("CODE_HERO_WEBHOOK_RETRY_SCHEDULE")),
        allow=parse_allow_list(env.get("CODE_HERO_WEBHOOK_ALLOW")),
        timeout=_float(env, "CODE_HERO_WEBHOOK_TIMEOUT", 10.0),
        secret=secret,
        retention=_float(env, "CODE_HERO_WEBHOOK_RETENTION", DEFAULT_RETENTION),
    )


def checkpointer_from_env(
    env: Mapping[str, str], *, database_url: str | None = None, sqlite_path: str | None = None
) -> CheckpointerConfig:
    """The checkpointer: an explicit URL or path first, then the seed's environment rules."""
    interval = _float(env, "CODE_HERO_HEALTH_INTERVAL", 5.0)
    if database_url:
        config = config_from_url_setting("--database-url", database_url)
    elif url := env.get("CODE_HERO_DATABASE_URL"):
        config = config_from_url_setting("CODE_HERO_DATABASE_URL", url)
    elif sqlite_path:
        config = config_from_url_setting("--sqlite-path", sqlite_path)
    else:
        config = config_for_environment(env.get("CODE_HERO_ENVIRONMENT") or "production", env)
    journal = _int(env, "CODE_HERO_MAX_PENDING_SYNC", 100_000)
    # 0: no bound. PostgreSQL takes at most 2147483647 ms.
    lock_timeout = _float(
        env, "CODE_HERO_LOCK_TIMEOUT", config.lock_timeout, zero=True, most=MAX_LOCK_TIMEOUT
    )
    cache = _positive_int(env, "CODE_HERO_SQLITE_CACHE_KIB", config.sqlite_cache_kib)
    if cache > _SQLITE_CACHE_KIB_MAX:  # SQLite would take a larger one as no cache at all
        raise ConfigurationError(
            f"CODE_HERO_SQLITE_CACHE_KIB must be at most {_SQLITE_CACHE_KIB_MAX}, got {cache}"
        )
    return config.with_options(
        health_check_interval=interval,
        max_pending_sync=journal,
        sqlite_cache_kib=cache,
        lock_timeout=lock_timeout,
        fallback_path=_fallback_path(env, config.kind),
    )


def _fallback_path(env: Mapping[str, str], kind: str) -> str | None:
    """The durable fallback's file: set, or the default for a PostgreSQL primary (a
    SQLite primary's full or read-only disk would take a file beside it with it)."""
    path = _text(env, "CODE_HERO_FALLBACK_PATH")
    if path is not None and path.lower() == "memory":
        return None
    if path is None and kind == "postgres":
        return DEFAULT_FALLBACK_PATH
    return path if kind != "memory" else None


def settings_from_env(
    environ: Mapping[str, str] | None = None,
    *,
    database_url: str | None = None,
    sqlite_path: str | None = None,
    graphs: str | None = None,
    langgraph_json: str | None = None,
    host: str | None = None,
    port: int | None = None,
    log_level: str | None = None,
    allow_anonymous: bool = False,
    ui: bool | None = None,
) -> AppSettings:
    """Settings from the environment, with CLI options taking precedence."""
    env = os.environ if environ is None else environ
    auth = auth_from_env(env)
    if allow_anonymous:
        auth = replace(auth, allow_anonymous=True)
    rate = env.get("CODE_HERO_RATE_LIMIT")
    if rate is None:
        rate = DEFAULT_RATE_LIMIT if auth.enabled else None
    reads = env.get("CODE_HERO_READ_RATE_LIMIT")
    if reads is None:
        reads = DEFAULT_READ_RATE_LIMIT if auth.enabled else None
    specs = parse_graph_specs(graphs if graphs is not None else env.get("CODE_HERO_GRAPHS"))
    json_path = langgraph_json or env.get("CODE_HERO_LANGGRAPH_JSON")
    if json_path:
        specs = {**read_langgraph_json(json_path), **specs}
    limits = Limits(
        max_depth=_int(env, "CODE_HERO_MAX_DEPTH", 10),
        max_aliases=_int(env, "CODE_HERO_MAX_ALIASES", 30),
        max_tokens=_int(env, "CODE_HERO_MAX_TOKENS", 5000),
        max_cost=_int(env, "CODE_HERO_MAX_COST", DEFAULT_MAX_COST),
        max_body_bytes=_int(env, "CODE_HERO_MAX_BODY_BYTES", 1024 * 1024),
        max_message_length=_int(env, "CODE_HERO_MAX_MESSAGE_LENGTH", 100_000),
        max_subscriptions=_int(env, "CODE_HERO_MAX_SUBSCRIPTIONS", 20),
        ws_init_timeout=_float(env, "CODE_HERO_WS_INIT_TIMEOUT", 10.0),
        introspection=_bool(env, "CODE_HERO_INTROSPECTION", True),
        field_suggestions=_bool(env, "CODE_HERO_FIELD_SUGGESTIONS", True),
    )
    gateway = GatewaySettings(
        checkpointer=checkpointer_from_env(env, database_url=database_url, sqlite_path=sqlite_path),
        graphs=specs,
        default_graph=env.get("CODE_HERO_DEFAULT_GRAPH") or None,
        model=env.get("CODE_HERO_MODEL") or None,
        max_concurrent_runs=_int(env, "CODE_HERO_MAX_CONCURRENT_RUNS", 8),
        lease_seconds=_float(env, "CODE_HERO_LEASE_SECONDS", 15.0),
        shutdown_grace=_float(env, "CODE_HERO_SHUTDOWN_GRACE", 10.0),
        event_recheck_interval=_float(env, "CODE_HERO_EVENT_RECHECK_SECONDS", 2.0),
        max_message_length=limits.max_message_length,
        max_page=limits.max_page,
        max_recursion_limit=_positive_int(env, "CODE_HERO_MAX_RECURSION_LIMIT", 100),
        thread_ttl=_thread_ttl(env),
        tombstone_retention=_float(
            env, "CODE_HERO_TOMBSTONE_RETENTION", DEFAULT_TOMBSTONE_RETENTION
        ),
        access=AccessSettings(
            hook=_hook(env),
            rate_limit=parse_rate_limit(rate),
            read_rate_limit=parse_rate_limit(reads, "CODE_HERO_READ_RATE_LIMIT"),
        ),
        webhooks=webhooks_from_env(env),
    )
    level = (log_level or env.get("CODE_HERO_LOG_LEVEL") or "info").lower()
    if level not in {"debug", "info", "warning", "error", "critical"}:
        raise ConfigurationError(f"unknown log level {level!r}")
    host = host or env.get("CODE_HERO_HOST") or "127.0.0.1"
    if ui is None:
        # On by default, except in open mode on an address others reach: there
        # the page would hand every visitor a delete button (turn it on explicitly).
        ui = _bool(env, "CODE_HERO_UI", auth.enabled or is_loopback(host))
    return AppSettings(
        gateway=gateway,
        limits=limits,
        host=host,
        port=port if port is not None else _port(env),
        log_level=level,
        graphiql=_bool(env, "CODE_HERO_GRAPHIQL", not auth.enabled),
        ui=ui,
        auth=auth,
        cors_origins=_origins(env),
        keep_alive=_float(env, "CODE_HERO_KEEP_ALIVE_SECONDS", DEFAULT_KEEP_ALIVE),
    )
