"""Starlette routes of the dashboard and the vendored browser files, and GraphiQL's page.

/ui, /ui/threads/..., /ui/runs/...   the dashboard's one HTML page (the page routes itself,
                                     so any deep link can be shared and reloaded)
/ui/static/...                       its modules and stylesheet
/vendor/<package>@<version>/...      vendored files (GraphiQL's and graphql-ws)
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from strawberry.http.ides import get_graphql_ide_html

__all__ = ["STATIC", "VENDOR", "offline_graphiql_html", "ui_routes", "vendor_routes"]

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
VENDOR = HERE / "vendor"
VENDOR_URL = "/vendor/"
# Strawberry's page names its assets by unpkg URL; vendor/ mirrors those paths
# byte for byte, so the page's subresource integrity hashes still hold.
UNPKG = "https://unpkg.com/"


@cache
def offline_graphiql_html() -> str:
    """Strawberry's GraphiQL page with every asset loaded from /vendor/ instead of unpkg."""
    html = get_graphql_ide_html(graphql_ide="graphiql").replace(UNPKG, VENDOR_URL)
    # Typed headers (an Authorization among them) stay in the tab, not in localStorage.
    html = html.replace("shouldPersistHeaders: true", "shouldPersistHeaders: false")
    missing = [
        part.split('"', 1)[0]
        for part in html.split(f'"{VENDOR_URL}')[1:]
        if not (VENDOR / part.split('"', 1)[0]).is_file()
    ]
    if missing or "https://" in html.replace("http://www.w3.org", ""):
        # A Strawberry upgrade changed its assets: vendor the new versions (vendor/README.md).
        raise RuntimeError(f"GraphiQL assets not vendored: {missing or 'an outside URL'}")
    return html


def ui_routes(*, graphiql: bool) -> list[BaseRoute]:
    """The dashboard: its page for /ui and every path below it, and its static files.

    `graphiql` tells the page whether /graphql serves GraphiQL (it links it only then).
    """
    page = (STATIC / "index.html").read_text(encoding="utf-8")
    page = page.replace('data-graphiql="false"', f'data-graphiql="{str(graphiql).lower()}"')

    async def index(request: Request) -> Response:
        # No caching of the page itself: it names the modules, which may change on upgrade.
        return HTMLResponse(page, headers={"cache-control": "no-cache"})

    return [
        Mount("/ui/static", StaticFiles(directory=STATIC), name="ui-static"),
        Route("/ui", index, methods=["GET", "HEAD"]),
        Route("/ui/{path:path}", index, methods=["GET", "HEAD"]),
    ]


def vendor_routes() -> list[BaseRoute]:
    """The vendored browser files, for GraphiQL's page and the dashboard."""
    return [Mount(VENDOR_URL.rstrip("/"), StaticFiles(directory=VENDOR), name="vendor")]
