"""The v2 parts of the dashboard in Chromium: the overview's chart, a checkpoint's diff,
editing state, copying, the threads' filters and bulk delete, and a socket cut under a
live run. Each test makes its own threads; every wait is for something to appear."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.ui.conftest import CuttableProxy, Server, Shot, Watch, subscriptions_after
from tests.ui.test_dashboard import all_seqs, shown_seqs, start_from_threads_page

pytestmark = pytest.mark.browser

START = """mutation Start($input: StartRunInput!) {
  startRun(input: $input) { id threadId status }
}"""
STATS = """query Stats($since: DateTime!) {
  runStats(filter: { createdAfter: $since }, bucket: HOUR) {
    runs series { start runs byStatus { status count } }
  }
}"""
CHECKPOINTS = """query Checkpoints($id: ID!) {
  thread(id: $id) {
    checkpoints(first: 20) {
      totalCount
      edges { node { id source changes { channel appended after } } }
    }
  }
}"""


def run_to_end(server: Server, message: str = "hello", **extra: Any) -> dict[str, Any]:
    """startRun with wait: true; the run's id, threadId and status."""
    run: dict[str, Any] = server.gql(START, input={"message": message, "wait": True, **extra})[
        "startRun"
    ]
    return run


def test_the_overview_chart_draws_runstats_by_hour_and_status(
    page: Any, server: Server, shot: Shot
) -> None:
    run_to_end(server)
    run_to_end(server, "Add a FastAPI route", config={"require_approval": True})
    page.goto(f"{server.url}/ui")
    chart = page.get_by_test_id("runs-chart")
    chart.locator("svg").wait_for()
    since = chart.get_attribute("data-since")
    stats = server.gql(STATS, since=since)["runStats"]

    # Every bucket the API counts runs in has a bar of that many runs, split the same way.
    drawn = chart.locator("g.bucket").evaluate_all(
        """gs => gs.map(g => ({
            start: g.dataset.start, runs: Number(g.dataset.runs),
            parts: Object.fromEntries([...g.querySelectorAll('rect[data-status]')]
                .map(r => [r.dataset.status, Number(r.dataset.count)]))}))"""
    )
    assert 24 <= len(drawn) <= 25  # one per hour since `since`, the current one included
    assert sum(b["runs"] for b in drawn) == stats["runs"] >= 2
    busy = {b["start"]: b for b in drawn if b["runs"]}
    expected = {
        b["start"]: {c["status"]: c["count"] for c in b["byStatus"] if c["count"]}
        for b in stats["series"]
        if b["runs"]
    }
    drawn_parts = {_iso(k): v["parts"] for k, v in busy.items()}
    assert drawn_parts == {_iso(k): v for k, v in expected.items()}
    assert page.locator("[data-fact=Runs]").inner_text() == f"{stats['runs']:,}"
    assert "INTERRUPTED" in page.locator("[data-fact='By status']").inner_text()
    assert page.locator("[data-fact='Duration p95']").inner_text() != "—"
    # Labelled for screen readers: the svg names its <title> and <desc>.
    labels = chart.locator("svg").get_attribute("aria-labelledby").split()
    assert [page.locator(f"[id='{i}']").text_content() != "" for i in labels] == [True, True]
    assert page.get_by_role("list", name="Legend").locator("li").count() == 6
    shot(page, "overview")
    shot(page, "overview-chart", page.locator("section.stats"))
    page.set_viewport_size({"width": 390, "height": 800})  # a narrow window
    page.reload()
    chart.locator("svg").wait_for()
    shot(page, "overview-narrow")


def _iso(text: str) -> str:
    """An instant as UTC ISO text to the second, however the server or the page wrote it."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC).isoformat()[:19]


def test_a_checkpoint_shows_what_it_changed_as_a_diff(
    page: Any, server: Server, shot: Shot
) -> None:
    thread_id = run_to_end(server)["threadId"]
    edges = server.gql(CHECKPOINTS, id=thread_id)["thread"]["checkpoints"]["edges"]
    # A checkpoint whose step appended to the messages (an agent's answer).
    cp = next(
        e["node"]
        for e in edges
        if any(c["channel"] == "messages" and c["appended"] for c in e["node"]["changes"])
    )
    added = next(c for c in cp["changes"] if c["channel"] == "messages")["after"]
    page.goto(f"{server.url}/ui/threads/{thread_id}")
    item = page.locator(f"details.checkpoint[data-checkpoint='{cp['id']}']")
    item.locator("summary").click()
    messages = item.locator(".change[data-channel=messages]")
    messages.wait_for()
    assert messages.locator(".added").count() == len(added) >= 1
    assert messages.locator(".removed").count() == 0  # appended: no "before" to show
    assert f"+{len(added)} appended" in messages.locator("h5").inner_text()
    # The timeline row names the nodes that wrote the checkpoint.
    assert item.locator("summary .by").inner_text().startswith("by ")
    shot(page, "thread-diff", item)


def test_edit_state_from_the_page_makes_an_update_checkpoint(
    page: Any, server: Server, watch: Any
) -> None:
    thread_id = run_to_end(server)["threadId"]
    before = server.gql(CHECKPOINTS, id=thread_id)["thread"]["checkpoints"]["totalCount"]
    page.goto(f"{server.url}/ui/threads/{thread_id}")
    form = page.locator("form.edit")
    values = form.get_by_label("Values (JSON object)")

    values.fill("{not json")  # refused in the page, shown as the API would
    form.get_by_role("button", name="Save as a new checkpoint").click()
    banner = page.get_by_role("alert")
    banner.wait_for()
    assert banner.locator(".code").inner_text() == "BAD_USER_INPUT"
    # Numbers JSON.parse would change (to null, to 0, rounded) are refused, not sent.
    for typed in ("1e400", "1e-400", "9007199254740993"):
        values.fill(f'{{"count": {typed}}}')
        form.get_by_role("button", name="Save as a new checkpoint").click()
        banner.get_by_text(typed, exact=False).wait_for()
    assert server.gql(CHECKPOINTS, id=thread_id)["thread"]["checkpoints"]["totalCount"] == before

    values.fill(json.dumps({"messages": [{"role": "user", "content": "edited from the page"}]}))
    form.get_by_role("button", name="Save as a new checkpoint").click()
    page.get_by_role("heading", name=f"Checkpoints ({before + 1}), newest first").wait_for()
    newest = page.locator("details.checkpoint").first
    assert newest.locator(".source").inner_text() == "UPDATE"
    newest.locator("summary").click()
    change = newest.locator(".change[data-channel=messages] .added")
    change.get_by_text("edited from the page").wait_for()
    edges = server.gql(CHECKPOINTS, id=thread_id)["thread"]["checkpoints"]["edges"]
    assert edges[0]["node"]["source"] == "UPDATE"


def test_copy_a_thread_and_land_on_the_copy(page: Any, server: Server) -> None:
    thread_id = run_to_end(server)["threadId"]
    count = server.gql(CHECKPOINTS, id=thread_id)["thread"]["checkpoints"]["totalCount"]
    page.goto(f"{server.url}/ui/threads/{thread_id}")
    page.get_by_role("button", name="Copy thread").click()
    page.wait_for_url(lambda url: "/ui/threads/" in url and thread_id not in url)
    copy_id = page.url.rsplit("/", 1)[1]
    page.get_by_role("heading", name=f"Checkpoints ({count}), newest first").wait_for()
    assert server.gql(CHECKPOINTS, id=copy_id)["thread"]["checkpoints"]["totalCount"] == count


def test_filter_by_statuses_and_delete_the_selected_threads(page: Any, server: Server) -> None:
    idle = run_to_end(server)["threadId"]
    waiting = run_to_end(server, "Add a FastAPI route", config={"require_approval": True})
    page.goto(f"{server.url}/ui/threads")
    page.get_by_test_id("total").wait_for()
    page.get_by_label("Statuses (none: any)").select_option(["INTERRUPTED", "ERROR"])
    page.get_by_role("button", name="Apply").click()
    page.wait_for_function("() => location.search.startsWith('?status=INTERRUPTED&status=ERROR&')")
    page.locator(f"[data-thread='{waiting['threadId']}']").wait_for()
    assert page.locator(f"[data-thread='{idle}']").count() == 0
    shown = page.locator("table.threads tbody tr").count()
    total = int(page.get_by_test_id("total").get_attribute("data-count"))
    assert shown == min(total, 20)

    page.goto(f"{server.url}/ui/threads")
    page.get_by_label(f"Select thread {idle}").check()
    page.get_by_label(f"Select thread {waiting['threadId']}").check()
    page.get_by_role("button", name="Delete selected (2)…").click()
    page.get_by_role("button", name="Yes, delete them").click()
    page.locator(f"[data-thread='{idle}']").wait_for(state="detached")
    assert page.locator(f"[data-thread='{waiting['threadId']}']").count() == 0
    for gone in (idle, waiting["threadId"]):
        assert server.gql(f'{{ thread(id: "{gone}") {{ id }} }}') == {"thread": None}


@pytest.mark.parametrize(
    ("search", "said"),
    [
        ("metadata=%7Bnot", "the metadata filter must be a JSON object"),
        ("metadata=%5B1%5D", "filter.metadata must be a JSON object"),
        ("metadata=%7B%22n%22%3A1e400%7D", "1e400 is out of range"),  # {"n":1e400}
        ("sort=BOGUS", "'BOGUS' does not exist"),
        ("first=abc", 'per page must be a whole number, got "abc"'),
        ("first=1000", "first must be between 1 and 100"),
        ("status=FOO", "'FOO' does not exist"),
        ("after=garbage", "malformed cursor 'garbage'"),
    ],
)
def test_a_refused_filter_keeps_the_form_to_fix_it(
    page: Any, server: Server, watch: Watch, search: str, said: str
) -> None:
    watch.expected.append("status of 400")  # a variable the API refuses answers HTTP 400
    page.goto(f"{server.url}/ui/threads?{search}")
    banner = page.get_by_role("alert")
    banner.get_by_text(said, exact=False).wait_for()
    assert banner.locator(".code").inner_text() == "BAD_USER_INPUT"
    assert page.get_by_role("heading", name="Could not load this view").count() == 0
    # The form is there, its controls set to what parses (an unknown sort or size
    # shows the first choice): applying it shows a list.
    page.get_by_label("Metadata contains").fill("")
    page.get_by_role("button", name="Apply").click()
    page.get_by_test_id("total").wait_for()
    assert page.get_by_role("alert").is_hidden()
    page.goto(f"{server.url}/ui/threads?{search}")
    page.get_by_role("link", name="clear the filters").click()
    page.wait_for_url(f"{server.url}/ui/threads")
    page.get_by_test_id("total").wait_for()


def test_integers_a_double_holds_exactly_are_sent_as_typed(page: Any, server: Server) -> None:
    # 2^53 and 10^20 are exact as doubles (only 2^53 + 1 and the like are refused).
    for n in ("9007199254740992", "100000000000000000000"):
        page.goto(f"{server.url}/ui/threads?metadata=%7B%22n%22%3A{n}%7D")
        page.get_by_test_id("total").wait_for()
        assert page.get_by_role("alert").is_hidden()


def test_a_socket_cut_under_a_live_run_resumes_after_the_last_event(
    page: Any, proxy: CuttableProxy, server: Server, watch: Watch
) -> None:
    """The connection is closed from the far end (the proxy hangs up, as a server that
    drops its sockets does), not by the page going offline."""
    # A reconnection the page tries while the proxy is still cut fails, and the browser
    # logs it (a page cannot silence that): on a loaded machine one can fall in the cut.
    # How it fails depends on when the proxy's hang-up lands (reset in the handshake,
    # or ERR_SOCKET_NOT_CONNECTED before it), so any failure through the proxy is allowed.
    watch.expected.append(f"WebSocket connection to 'ws://127.0.0.1:{proxy.port}/graphql' failed")
    subscribed = subscriptions_after(page)  # afterSeq of each runEvents the page sends
    via = Server(proxy.url, server.process)
    run_id = start_from_threads_page(
        page, via, "Build a Django model with a migration", graph="longhero"
    )
    page.locator(".message .text").first.wait_for()
    proxy.cut()
    page.get_by_test_id("live").filter(has_text="Connection lost").wait_for()
    seen = shown_seqs(page)[-1]
    proxy.heal()
    page.get_by_text("The run has ended").wait_for(timeout=60_000)
    shown = shown_seqs(page)
    assert shown == list(range(1, len(shown) + 1)) == all_seqs(server, run_id)
    assert page.get_by_test_id("run-status").inner_text() == "SUCCESS"
    assert subscribed == [0, seen]
