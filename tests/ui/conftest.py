"""Browser tests of /ui and GraphiQL: Debian's chromium driven by Playwright, against a
real `code-hero serve` process on a temporary SQLite file.

Every page gets a context that refuses (and records) any request to a host other than
127.0.0.1, and collects console errors and page errors; a test ends with none of
either, except the console lines it declares it expects.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
GRAPH = Path(__file__).with_name("ui_graph.py")
CHROMIUM = Path("/usr/bin/chromium")
DOCS = ROOT / "docs"
# The screenshots the README shows (docs/ui-NAME.png).
DOC_SHOTS = frozenset(
    {
        "overview",
        "overview-chart",
        "threads",
        "run-live",
        "run-steps",
        "thread",
        "thread-diff",
        "thread-narrow",
        "inbox",
        "signin-error",
        "graphiql",
    }
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """One `code-hero serve` process on `url`."""

    url: str
    process: subprocess.Popen[bytes]

    def gql(self, query: str, key: str | None = None, **variables: Any) -> dict[str, Any]:
        """POST a query; its data (errors fail the test)."""
        headers = {"authorization": f"Bearer {key}"} if key else {}
        response = httpx.post(
            f"{self.url}/graphql",
            json={"query": query, "variables": variables},
            headers=headers,
            timeout=30,
        )
        body = response.json()
        assert "errors" not in body, body
        data: dict[str, Any] = body["data"]
        return data


def start_server(workdir: Path, *args: str, **env: str) -> Server:
    """Start `code-hero serve` with the slow graph as `slowhero` (and a slower one as
    `longhero`); wait until /healthz answers."""
    port = _free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    log = open(workdir / f"serve-{port}.log", "wb")  # the child keeps its own copy
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "code_hero.cli", "serve", "--port", str(port)),
            *("--sqlite-path", str(workdir / "ui.sqlite"), "--log-level", "warning"),
            "--graphs",
            f"slowhero={GRAPH}:graph,longhero={GRAPH}:long_graph,plain={GRAPH}:plain",
            *args,
        ],
        env={**os.environ, "PYTHONPATH": str(ROOT / "src"), **env},
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=workdir,
    )
    log.close()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            text = (workdir / f"serve-{port}.log").read_text()
            pytest.fail(f"serve exited with {process.returncode}: {text}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return Server(url, process)
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    process.kill()
    pytest.fail("serve did not answer /healthz within 60 s")


def stop_server(server: Server) -> None:
    """SIGTERM, then SIGKILL after 15 s."""
    server.process.send_signal(signal.SIGTERM)
    try:
        server.process.wait(15)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """An open-mode gateway shared by the browser tests (each makes its own threads)."""
    started = start_server(tmp_path_factory.mktemp("serve"))
    yield started
    stop_server(started)


@dataclass
class CuttableProxy:
    """tests/faults.py's BlackHoleProxy in front of a server, on its own event loop thread:
    `cut()` closes every connection under the page (the peer hangs up, as a server
    that drops its sockets does), `heal()` lets new ones through."""

    port: int
    proxy: Any
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cut(self) -> None:
        self.loop.call_soon_threadsafe(self.proxy.refuse)

    def heal(self) -> None:
        self.loop.call_soon_threadsafe(self.proxy.forward)


@pytest.fixture
def proxy(server: Server) -> Iterator[CuttableProxy]:
    """A cuttable TCP proxy to the shared server."""
    from tests.faults import BlackHoleProxy

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    port = int(urlparse(server.url).port or 0)
    forward = BlackHoleProxy("127.0.0.1", port)
    asyncio.run_coroutine_threadsafe(forward.start(), loop).result(10)
    yield CuttableProxy(forward.port, forward, loop, thread)
    asyncio.run_coroutine_threadsafe(forward.close(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's chromium (apt-get install chromium); Playwright cannot download browsers here."""
    if not CHROMIUM.exists():
        pytest.fail("no /usr/bin/chromium: apt-get install -y chromium (.ci/run does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield launched
        launched.close()


@dataclass
class Watch:
    """What a page did that it should not: outside requests, console errors, page errors."""

    outside: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    expected: list[str] = field(default_factory=list)  # substrings of allowed console errors

    def unexpected(self) -> list[str]:
        return [e for e in self.errors if not any(x in e for x in self.expected)]


@pytest.fixture
def watch() -> Watch:
    return Watch()


@pytest.fixture
def context(browser: Any, watch: Watch) -> Iterator[Any]:
    """A fresh browser context (own sessionStorage) whose requests may only reach 127.0.0.1."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 800})

    def guard(route: Any) -> None:
        if urlparse(route.request.url).hostname != "127.0.0.1":
            watch.outside.append(route.request.url)
            route.abort()
        else:
            route.continue_()

    ctx.route("**/*", guard)
    yield ctx
    ctx.close()
    assert watch.outside == [], f"requests left the origin: {watch.outside}"
    assert watch.unexpected() == [], f"console or page errors: {watch.unexpected()}"


@pytest.fixture
def page(context: Any, watch: Watch) -> Any:
    """A page of `context`, its console errors and page errors recorded in `watch`."""
    new = context.new_page()
    new.on("console", lambda m: watch.errors.append(m.text) if m.type == "error" else None)
    new.on("pageerror", lambda e: watch.errors.append(f"pageerror: {e}"))
    return new


Shot = Callable[..., None]


@pytest.fixture
def shot(tmp_path: Path) -> Shot:
    """Screenshot a page to the test's directory as NAME.png; with UI_SCREENSHOTS_TO_DOCS=1
    also to docs/ui-NAME.png for those the README shows (how its pictures are made)."""

    def take(page: Any, name: str, part: Any = None) -> None:
        """The whole page, or only the element `part` (a locator) when given."""
        path = tmp_path / f"{name}.png"
        if part is None:
            page.screenshot(path=str(path), full_page=True)
        else:
            part.screenshot(path=str(path))
        if os.environ.get("UI_SCREENSHOTS_TO_DOCS") == "1" and name in DOC_SHOTS:
            shutil.copyfile(path, DOCS / f"ui-{name}.png")

    return take


def subscriptions_after(page: Any) -> list[int]:
    """The `afterSeq` of every runEvents subscription the page sends, as it sends them
    (a steps read over the same socket has no afterSeq and is left out)."""
    seen: list[int] = []

    def frames(socket: Any) -> None:
        def sent(payload: str | bytes) -> None:
            message = json.loads(payload)
            variables = message.get("payload", {}).get("variables", {})
            if message.get("type") == "subscribe" and "afterSeq" in variables:
                seen.append(variables["afterSeq"])

        socket.on("framesent", sent)

    page.on("websocket", frames)
    return seen
