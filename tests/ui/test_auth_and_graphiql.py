"""/ui with authentication on, and GraphiQL at /graphql with no request leaving the origin."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.auth.issuer import SECRET
from tests.ui.conftest import Server, Shot, Watch, start_server, stop_server

pytestmark = pytest.mark.browser

ALICE_KEY = "alice-0123456789abcdef"
BOB_KEY = "bob-0123456789abcdef"
ROOT_KEY = "root-0123456789abcdef"


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A gateway with API keys for alice, bob and an administrator, and HS256 JWTs
    (GraphiQL off: the default with auth)."""
    started = start_server(
        tmp_path_factory.mktemp("secured"),
        CODE_HERO_API_KEYS=f"{ALICE_KEY}=alice,{BOB_KEY}=bob,{ROOT_KEY}=root:admin",
        CODE_HERO_JWT_SECRET=SECRET,
        UI_TEST_TOKEN_DELAY="0.5",  # slowhero's runs: live for a minute
    )
    yield started
    stop_server(started)


def test_a_token_that_expires_under_a_live_run_ends_the_session(
    page: Any, secured: Server, watch: Watch
) -> None:
    # The gateway closes a JWT's socket when the token expires (4403): the page stops
    # following, drops the credentials and asks for new ones.
    import jwt

    now = int(time.time())
    # `exp` 15 s ago, within the 30 s of skew allowed: valid for about 15 s more.
    token = jwt.encode({"sub": "carol", "iat": now - 60, "exp": now - 15}, SECRET)
    start = """mutation { startRun(input: {graph: "slowhero",
        message: "Write a long React component"}) { id } }"""  # minutes long: live at exp
    run_id = secured.gql(start, key=token)["startRun"]["id"]
    page.goto(f"{secured.url}/ui")
    page.evaluate("t => sessionStorage.setItem('code-hero.credentials', t)", token)
    page.goto(f"{secured.url}/ui/runs/{run_id}")
    page.get_by_text("Following live").wait_for()
    page.get_by_role("heading", name="Sign in").wait_for(timeout=60_000)
    page.get_by_role("alert").get_by_text("the token has expired").wait_for()
    page.get_by_text("These credentials were refused").wait_for()
    assert page.evaluate("() => sessionStorage.getItem('code-hero.credentials')") in (None, "")
    assert page.get_by_role("button", name="Sign out").count() == 0
    # A fresh token: the same view again, following the run.
    fresh = jwt.encode({"sub": "carol", "exp": int(time.time()) + 3600}, SECRET)
    page.get_by_label("API key or JWT").fill(fresh)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_text("Following live").wait_for()
    assert page.get_by_role("alert").is_hidden()
    cancel = f'mutation {{ cancelRun(id: "{run_id}") {{ status }} }}'
    assert secured.gql(cancel, key=ROOT_KEY)["cancelRun"]["status"] == "CANCELLED"  # was live


def test_a_wrong_key_shows_an_error_and_a_right_one_only_that_users_threads(
    page: Any, secured: Server, watch: Watch, shot: Shot
) -> None:
    # The browser itself logs each refused request (HTTP 401) as a console error.
    watch.expected.append("status of 401")
    start = 'mutation { startRun(input: {message: "hello", wait: true}) { threadId } }'
    mine = secured.gql(start, key=ALICE_KEY)["startRun"]["threadId"]
    theirs = secured.gql(start, key=BOB_KEY)["startRun"]["threadId"]

    page.goto(f"{secured.url}/ui/threads")
    page.get_by_role("heading", name="Sign in").wait_for()
    assert page.get_by_role("alert").is_hidden()  # a first visit is no error
    page.get_by_label("API key or JWT").fill("not-a-key")
    page.get_by_role("button", name="Sign in").click()
    banner = page.get_by_role("alert")
    banner.get_by_text("invalid credentials").wait_for()
    assert banner.locator(".code").inner_text() == "UNAUTHENTICATED"
    page.get_by_text("These credentials were refused").wait_for()
    # Refused credentials are not kept: nothing to sign out of.
    assert page.evaluate("() => sessionStorage.getItem('code-hero.credentials')") in (None, "")
    assert page.get_by_role("button", name="Sign out").count() == 0
    shot(page, "signin-error")

    assert page.get_by_role("link", name="GraphiQL").is_hidden()  # off with auth by default
    page.get_by_label("API key or JWT").fill(ALICE_KEY)
    page.get_by_role("button", name="Sign in").click()
    page.locator(f"[data-thread='{mine}']").wait_for()
    assert page.locator(f"[data-thread='{theirs}']").count() == 0
    assert page.get_by_test_id("total").get_attribute("data-count") == "1"
    assert page.evaluate("() => sessionStorage.getItem('code-hero.credentials')") == ALICE_KEY
    assert ALICE_KEY not in page.url
    assert page.get_by_role("button", name="Sign out").count() == 1

    # The socket authenticates with the same key in connection_init: a run is followed live.
    page.locator(f"[data-thread='{mine}'] a").click()
    page.locator("ul.runs a").first.click()
    page.get_by_text("The run has ended").wait_for()
    assert page.get_by_test_id("run-status").inner_text() == "SUCCESS"


def test_graphiql_runs_a_query_with_no_outside_request(
    page: Any, server: Server, watch: Watch, shot: Shot, tmp_path: Path
) -> None:
    page.goto(f"{server.url}/graphql?q=%7B%20health%20%7B%20status%20%7D%20%7D")
    page.locator(".graphiql-execute-button").click()
    page.locator(".graphiql-response").get_by_text("HEALTHY").wait_for()
    shot(page, "graphiql")
    assert watch.outside == []


def test_the_dashboard_links_graphiql(page: Any, server: Server) -> None:
    page.goto(f"{server.url}/ui")
    page.get_by_role("link", name="GraphiQL").click()
    page.wait_for_url(f"{server.url}/graphql")
    page.locator(".graphiql-execute-button").wait_for()
