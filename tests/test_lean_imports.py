"""What a server that does not need a heavy library keeps out of its memory."""

from __future__ import annotations

import os
import subprocess
import sys

SERVER = "import code_hero.app, code_hero.cli.serve, code_hero.compose, code_hero.gateway"


def loaded_after(statement: str, *modules: str) -> dict[str, bool]:
    (loaded,) = loaded_along((statement, modules))
    return loaded


def loaded_along(*steps: tuple[str, tuple[str, ...]]) -> list[dict[str, bool]]:
    """Runs each step's statement in turn in one fresh interpreter; after each, which of
    its modules are loaded. A later step sees what the earlier ones loaded, as a server
    does: one process, not one per question, and "not yet, then yes" in the same one."""
    probe = ["import sys"]
    for statement, modules in steps:
        probe.append(statement)
        probe.append(f"print('loaded:', *(str(m in sys.modules) for m in {modules!r}))")
    # No credentials of the caller's: `serve` must refuse an open address (see below).
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODE_HERO_")}
    out = subprocess.run(
        [sys.executable, "-c", "\n".join(probe)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    ).stdout.splitlines()
    answers = [line.split()[1:] for line in out if line.startswith("loaded: ")]
    return [
        dict(zip(modules, (word == "True" for word in words), strict=True))
        for (_, modules), words in zip(steps, answers, strict=True)
    ]


def test_jwt_and_cryptography_load_only_for_tokens() -> None:
    # PyJWT brings `cryptography` (~8 MiB resident): only a server verifying JWTs needs it.
    verifier = (
        "from code_hero.auth import JwtSettings, JwtVerifier; "
        "JwtVerifier(JwtSettings(secret='s' * 32))"
    )
    served, verifying = loaded_along((SERVER, ("jwt", "cryptography")), (verifier, ("jwt",)))
    assert served == {"jwt": False, "cryptography": False}
    assert verifying == {"jwt": True}


def test_psycopg_loads_only_for_postgresql() -> None:
    # psycopg, its pool and the PostgreSQL saver (~9 MiB resident): SQLite and memory
    # servers never load them.
    drivers = ("psycopg", "psycopg_pool", "langgraph.checkpoint.postgres.aio")
    backend = (
        "from code_hero.config import create_postgres_checkpointer; "
        "from code_hero.persistence.backends import open_backend; "
        "open_backend(create_postgres_checkpointer('postgresql://nowhere/db'))"
    )
    served, opened = loaded_along((SERVER, drivers), (backend, drivers))
    assert not any(served.values())
    assert all(opened.values())


def test_prometheus_client_loads_only_when_scraped() -> None:
    # prometheus-client (~1 MiB resident) renders /metrics only: the counters are
    # plain, so a server nobody scrapes never loads it.
    app = "from code_hero.app import create_app; create_app()"
    scraped = (
        "import asyncio, httpx; from code_hero.app import create_app; "
        "t = httpx.ASGITransport(app=create_app()); "
        "c = httpx.AsyncClient(transport=t, base_url='http://gateway'); "
        "assert asyncio.run(c.get('/metrics')).status_code == 200"
    )
    module = ("prometheus_client",)
    created, after_scrape = loaded_along((app, module), (scraped, module))
    assert created == {"prometheus_client": False}
    assert after_scrape == {"prometheus_client": True}


def test_the_default_schema_is_built_only_when_asked_for() -> None:
    # The app builds a schema for its limits; the default one (for `code-hero schema`
    # and the contract test) would be a second copy (~0.5 MiB) nobody reads.
    probe = (
        "import code_hero.schema as s; from code_hero.app import create_app; create_app(); "
        "print('schema' in vars(s)); from code_hero.schema import schema; "
        "print(type(schema).__name__, 'schema' in vars(s))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, env=os.environ
    ).stdout.split()
    assert out == ["False", "GatewaySchema", "True"]


def test_serve_defers_the_langgraph_sdk_client_and_langsmith_types() -> None:
    # LangGraph imports a leaf of each package; their inits load the SDK's HTTP client
    # (httpx, rich, pygments) and 164 generated pydantic models, which serve no request
    # (~12 MiB resident; cli/deferred.py). `serve` refuses 0.0.0.0 without authentication
    # only after it has imported the app, which is what this looks at.
    refused = "from code_hero.cli import main; main(['serve', '--host', '0.0.0.0'])"
    heavy = (
        *("langgraph_sdk.client", "langgraph_sdk.auth.exceptions", "langsmith.types.run"),
        *("httpx", "rich", "pygments"),
    )
    # Deferred, not gone: the first use runs the package's init.
    used = (
        "from langgraph_sdk import get_client; from langgraph_sdk.auth import Auth; "
        "import langsmith.types as t; t.Run"
    )
    waited = ("langgraph_sdk.client", "langgraph_sdk.auth.exceptions", "langsmith.types.run")
    loaded, after_use = loaded_along(
        (refused, ("langgraph.graph", "code_hero.app", *heavy)), (used, waited)
    )
    assert loaded == {"langgraph.graph": True, "code_hero.app": True} | dict.fromkeys(heavy, False)
    assert all(after_use.values())


def test_every_command_defers_them() -> None:
    # A command other than `serve` imports the same stack to open the store; deferred,
    # it starts in about 1.2 s of CPU instead of 1.7.
    command = "from code_hero.cli import main; main(['run', 'hi', '--graph', 'nope'])"
    heavy = ("langgraph_sdk.client", "langsmith.types.run", "httpx", "rich.console")
    loaded = loaded_after(command, "langgraph.graph", *heavy)
    assert loaded == {"langgraph.graph": True} | dict.fromkeys(heavy, False)


def test_serve_starts_uvicorn_without_its_command_line() -> None:
    # `import uvicorn` runs its package's `__init__`, which loads its command line:
    # click, watchfiles, the supervisors (~3 MiB resident). `serve` builds uvicorn's
    # Config and Server from their modules, and `Config.load()` (the lifespan and
    # protocol modules, as `Server.run` loads them) reads `Config` off the package.
    # Strawberry's `dateutil.tz` and `dateutil.parser` (its `DateTime` scalar reads only
    # `isoparse`), httpx's `idna` and `strawberry.federation` wait too.
    start = (
        "from code_hero.cli.deferred import defer_package_inits as d; d(); "
        "from uvicorn.config import Config; from code_hero.app import create_app; "
        "c = Config(create_app(), lifespan='on', ws='websockets-sansio', "
        "ws_per_message_deflate=False); c.load()"
    )
    cli = ("click", "uvicorn.main", "watchfiles", "uvicorn.supervisors")
    waiting = (
        *("dateutil.tz.tz", "dateutil.parser._parser", "dateutil.relativedelta"),
        *("idna.core", "strawberry.federation.schema"),
    )
    # Deferred, not gone: the first use of a name the `__init__` makes runs it.
    used = (
        "import uvicorn; uvicorn.run; import dateutil.parser as p; "
        "assert p.parse('2 Jan 2024').year == 2024"
    )
    loaded, after_use = loaded_along(
        (start, ("uvicorn.lifespan.on", *cli, *waiting)),
        (used, ("click", "uvicorn.main", "dateutil.parser._parser")),
    )
    assert loaded == {"uvicorn.lifespan.on": True} | dict.fromkeys(cli + waiting, False)
    assert all(after_use.values())


def test_serve_defers_charset_normalizers_detector() -> None:
    # `requests` (langchain-core's and langsmith's) reads charset-normalizer's
    # `__version__` as it imports; the package's `__init__` loads its detector (~2.5 MiB
    # resident), which only a `requests` response without a declared encoding uses.
    start = (
        "from code_hero.cli.deferred import defer_package_inits as d; d(); "
        "from uvicorn.config import Config; from code_hero.app import create_app; "
        "Config(create_app(), lifespan='on').load()"
    )
    detector = ("charset_normalizer.api", "charset_normalizer.cd", "charset_normalizer.md")
    # Deferred, not gone: requests guesses an undeclared encoding with it.
    used = (
        "import requests; r = requests.Response(); "
        "r._content = 'Größe'.encode('utf-8'); assert r.apparent_encoding == 'utf-8'"
    )
    loaded, after_use = loaded_along(
        (start, ("requests", "charset_normalizer", *detector)), (used, detector)
    )
    assert loaded == {"requests": True, "charset_normalizer": True} | dict.fromkeys(detector, False)
    assert all(after_use.values())


def test_serve_defers_the_libraries_model_builds_not_a_graphs() -> None:
    # The ~120 pydantic models the libraries define as `serve` imports the app build
    # their validators at first use (~2 MiB; cli/deferred.py); a model defined later
    # (a graph's own) builds at once, as pydantic does by default.
    refused = "from code_hero.cli import main; main(['serve', '--host', '0.0.0.0'])"
    probe = (
        f"try:\n    {refused}\nexcept Exception:\n    pass\n"
        "import pydantic; from langsmith.schemas import Run\n"
        "class Mine(pydantic.BaseModel):\n    n: int\n"
        "print(Run.__pydantic_complete__, Mine.__pydantic_complete__)"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODE_HERO_")}
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, env=env
    ).stdout.split()
    assert out == ["False", "True"]


def test_httpx_loads_only_for_a_webhook_delivery() -> None:
    # The webhook worker's client; with the SDK's deferred, nothing else of a server's
    # imports it (nor httpx's command line: rich, pygments).
    deferred = f"from code_hero.cli.deferred import defer_package_inits as d; d(); {SERVER}"
    assert loaded_after(deferred, "httpx") == {"httpx": False}


def test_the_builtin_graph_loads_only_when_run() -> None:
    # Its modules bring langchain-core's chat models (~2 MiB resident): a server whose
    # graphs are the user's own, on the offline model, builds it at its first use.
    load = (
        "import asyncio; from code_hero.runs.graphs import GraphRegistry; "
        "r = asyncio.run(GraphRegistry.load(None)); assert r.names() == ['code_hero']"
    )
    heavy = ("code_hero.agents.graph", "langchain_core.language_models.chat_models")
    run = "g = r.get(None); assert g.name == 'code_hero' and r.get('code_hero') is g"
    loaded, ran = loaded_along((load, heavy), (run, heavy))
    assert not any(loaded.values())
    assert all(ran.values())


def test_a_started_sqlite_server_loads_no_postgresql_driver() -> None:
    # Not the imports only: the lifespan (the primary, the fallbacks, the bus) on SQLite.
    start = (
        "import asyncio, tempfile; from starlette.testclient import TestClient; "
        "from code_hero.app import create_app; from code_hero.settings import settings_from_env; "
        "d = tempfile.mkdtemp(); "
        "s = settings_from_env({'CODE_HERO_DATABASE_URL': f'sqlite:///{d}/g.sqlite'}); "
        "c = TestClient(create_app(s)); c.__enter__(); "
        "assert c.get('/healthz').status_code == 200; c.__exit__(None, None, None)"
    )
    drivers = ("psycopg", "psycopg_pool", "langgraph.checkpoint.postgres")
    assert loaded_after(start, *drivers) == dict.fromkeys(drivers, False)
