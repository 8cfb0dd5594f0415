"""How /ui, /vendor and GraphiQL's page are served, and when /ui is off (no browser needed)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import re
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from code_hero.app import create_app
from code_hero.cli.arguments import build_parser
from code_hero.settings import AppSettings, settings_from_env
from code_hero.ui import STATIC, VENDOR

KEYS = {"CODE_HERO_API_KEYS": "alice-0123456789abcdef=alice"}
GRAPHQL_WS = VENDOR / "graphql-ws@6.4.2" / "umd" / "graphql-ws.min.js"


@contextlib.asynccontextmanager
async def client(settings: AppSettings) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of the app, its lifespan (a gateway on memory://) running."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
            yield http


@pytest.fixture
def env() -> Iterator[dict[str, str]]:
    yield {"CODE_HERO_DATABASE_URL": "memory://"}


async def test_ui_serves_its_page_for_every_deep_link_and_its_modules(env: dict[str, str]) -> None:
    async with client(settings_from_env(env)) as http:
        for path in ("/ui", "/ui/", "/ui/threads", "/ui/threads/abc", "/ui/runs/xyz"):
            response = await http.get(path)
            assert response.status_code == 200, path
            assert response.headers["content-type"].startswith("text/html")
            assert '<main id="view"' in response.text
        assert 'data-graphiql="true"' in response.text  # GraphiQL on: the page links it
        script = await http.get("/ui/static/views/run.js")
        assert script.status_code == 200
        assert "javascript" in script.headers["content-type"]
        assert (await http.get("/vendor/graphql-ws@6.4.2/umd/graphql-ws.min.js")).status_code == 200


def test_the_pages_assets_stay_well_under_300_kb() -> None:
    files = [p for p in STATIC.rglob("*") if p.is_file()] + [GRAPHQL_WS]
    total = sum(p.stat().st_size for p in files)
    assert total < 150_000, total


def test_the_page_loads_nothing_from_another_origin() -> None:
    for path in STATIC.rglob("*"):
        if path.is_file():
            text = path.read_text()
            assert not re.search(r"""(src|href)=["']?(https?:)?//""", text), path
            assert 'import("http' not in text and 'from "http' not in text, path


async def test_no_ui_and_code_hero_ui_false_answer_404(env: dict[str, str]) -> None:
    for settings in (
        settings_from_env({**env, "CODE_HERO_UI": "false"}),
        settings_from_env(env, ui=False),
    ):
        assert not settings.ui
        async with client(settings) as http:
            assert (await http.get("/ui")).status_code == 404
            assert (await http.get("/ui/static/app.js")).status_code == 404
    assert build_parser().parse_args(["serve", "--no-ui"]).no_ui


def test_ui_is_on_by_default_except_in_open_mode_on_a_network_address(
    env: dict[str, str],
) -> None:
    assert settings_from_env(env).ui  # loopback, open
    assert settings_from_env({**env, **KEYS}, host="0.0.0.0").ui  # authenticated
    assert not settings_from_env(env, host="0.0.0.0", allow_anonymous=True).ui
    assert settings_from_env({**env, "CODE_HERO_UI": "true"}, host="0.0.0.0").ui
    assert not settings_from_env({**env, "CODE_HERO_UI": "true"}, ui=False).ui


async def test_graphiql_loads_its_assets_from_the_package_with_their_pinned_hashes(
    env: dict[str, str],
) -> None:
    async with client(settings_from_env(env)) as http:
        page = await http.get("/graphql", headers={"accept": "text/html"})
        assert page.status_code == 200
        assert "unpkg" not in page.text and "https://" not in page.text
        assets = re.findall(r'(?:src|href)="(/vendor/[^"]+)"\s+integrity="([^"]+)"', page.text)
        assert len(assets) == 7
        for url, integrity in assets:
            body = (await http.get(url)).content
            digest = base64.b64encode(hashlib.sha384(body).digest()).decode()
            assert integrity == f"sha384-{digest}", url


async def test_vendor_is_served_for_graphiql_alone_and_not_when_both_are_off(
    env: dict[str, str],
) -> None:
    only_ui = settings_from_env({**env, "CODE_HERO_GRAPHIQL": "false"})
    async with client(only_ui) as http:
        assert 'data-graphiql="false"' in (await http.get("/ui")).text  # no link to it
    only_graphiql = settings_from_env({**env, "CODE_HERO_UI": "false"})
    async with client(only_graphiql) as http:
        assert (await http.get("/vendor/react@18.2.0/LICENSE")).status_code == 200
    neither = settings_from_env({**env, "CODE_HERO_UI": "false", "CODE_HERO_GRAPHIQL": "false"})
    async with client(neither) as http:
        assert (await http.get("/vendor/react@18.2.0/LICENSE")).status_code == 404
