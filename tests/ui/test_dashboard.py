"""The dashboard walked the way a person uses it, in Chromium, against `code-hero serve`.

No timed assertions: every wait is for something to appear. First paint is logged.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.ui.conftest import Server, Shot, Watch, subscriptions_after

pytestmark = pytest.mark.browser

STEPS = """query Steps($id: ID!) {
  run(id: $id) { usage { totalTokens } steps { node durationMs } }
}"""

EVENTS = """query Events($id: ID!, $after: Int!) {
  run(id: $id) { status events(afterSeq: $after, first: 100) { seq } }
}"""


NOTE_FIRST_TOKEN = """() => new MutationObserver((_, observer) => {
    const text = document.querySelector('.message .text');
    if (text && text.textContent.length > 0) {
        window.statusAtFirstToken =
            document.querySelector('[data-testid=run-status]').textContent;
        observer.disconnect();
    }
}).observe(document.body, {subtree: true, childList: true, characterData: true})"""


def all_seqs(server: Server, run_id: str) -> list[int]:
    """Every recorded event's seq, paged through the API."""
    seqs: list[int] = []
    while True:
        page = server.gql(EVENTS, id=run_id, after=seqs[-1] if seqs else 0)["run"]["events"]
        if not page:
            return seqs
        seqs += [e["seq"] for e in page]


def shown_seqs(page: Any) -> list[int]:
    """The seqs the run view's event log shows, in order."""
    values = page.locator("[data-testid=events] [data-seq]").evaluate_all(
        "items => items.map(i => Number(i.dataset.seq))"
    )
    return list(values)


def start_from_threads_page(
    page: Any, server: Server, message: str, graph: str = "slowhero"
) -> str:
    """Start a run of `graph` with the Threads page's form; the run's id (from the URL)."""
    page.goto(f"{server.url}/ui/threads")
    # Note the run's status when the first token shows, at that very change of the page
    # (the page stays loaded: the form's navigation to the run is in-page).
    page.evaluate(NOTE_FIRST_TOKEN)
    form = page.locator("form.start")
    form.get_by_label("Message").fill(message)
    form.get_by_label("Graph").select_option(graph)
    form.get_by_role("button", name="Start run").click()
    page.wait_for_url("**/ui/runs/*")
    return str(page.url.rsplit("/", 1)[1])


def test_a_run_streams_tokens_lists_its_thread_and_shows_its_checkpoints(
    page: Any, server: Server, shot: Shot
) -> None:
    page.goto(f"{server.url}/ui")
    page.get_by_role("heading", name="Storage health").wait_for()
    paint = page.evaluate(
        "() => Object.fromEntries(performance.getEntriesByType('paint')"
        ".map(e => [e.name, Math.round(e.startTime)]))"
    )
    page.reload()  # warm: the server and the browser's cache have seen the page
    page.get_by_role("heading", name="Storage health").wait_for()
    warm = page.evaluate(
        "() => Object.fromEntries(performance.getEntriesByType('paint')"
        ".map(e => [e.name, Math.round(e.startTime)]))"
    )
    # Logged, not asserted (issue 14 asks for under 300 ms on loopback, warm).
    print(f"first paint of /ui (ms): cold {paint}, warm {warm}")
    assert page.locator("[data-backend=primary]").count() == 1
    assert page.locator("[data-fact='Pending sync']").inner_text() == "0"
    assert page.locator("[data-fact='Status']").inner_text() == "HEALTHY"
    shot(page, "overview-first")  # docs/ui-overview.png is test_views' (more runs in its chart)

    page.get_by_role("link", name="Threads").click()
    before = int(page.get_by_test_id("total").get_attribute("data-count"))
    review = "Review this code for bugs:\n```python\ndef add(a, b):\n    return a + b\n```"
    run_id = start_from_threads_page(page, server, review)

    # Tokens appear while the run is still going (the status noted at the first token).
    page.wait_for_function("() => window.statusAtFirstToken")
    assert page.evaluate("() => window.statusAtFirstToken") == "RUNNING"
    shot(page, "run-live")
    page.get_by_text("The run has ended").wait_for(timeout=60_000)
    assert page.get_by_test_id("run-status").inner_text() == "SUCCESS"
    assert shown_seqs(page) == all_seqs(server, run_id) == list(range(1, len(shown_seqs(page)) + 1))
    assert page.locator(".transitions li").count() == 2
    assert page.get_by_text("No agent handed over").count() == 0
    assert page.get_by_text("No message").count() == 0
    assert page.locator(".tools li", has_text="check_python").count() == 1
    page.locator("[data-fact=Finished]").filter(has_not_text="—").wait_for()  # filled in
    # The steps chart: one bar per Run.steps entry (read once more at the end), the usage.
    timeline = server.gql(STEPS, id=run_id)["run"]
    assert len(timeline["steps"]) >= 2
    chart = page.get_by_test_id("steps")
    assert chart.locator("g.task").count() == len(timeline["steps"])
    assert chart.locator("g.task").evaluate_all("gs => gs.map(g => g.dataset.node)") == [
        s["node"] for s in timeline["steps"]
    ]
    assert chart.locator("rect.bar.done").count() == len(timeline["steps"])
    title = chart.locator("svg title").first.text_content() or ""
    assert title.startswith(f"The {len(timeline['steps'])} steps")
    tokens = f"{timeline['usage']['totalTokens']:,}"
    assert timeline["usage"]["totalTokens"] > 0
    assert page.locator("[data-fact=Tokens]").inner_text().startswith(tokens)
    assert page.locator("[data-fact=Duration]").inner_text() != "—"
    shot(page, "run")
    shot(page, "run-steps", page.locator("section", has=chart))

    thread_id = server.gql(f'{{ run(id: "{run_id}") {{ threadId }} }}')["run"]["threadId"]
    page.get_by_role("link", name="Threads").click()
    page.locator(f"[data-thread='{thread_id}']").wait_for()
    assert int(page.get_by_test_id("total").get_attribute("data-count")) == before + 1
    shot(page, "threads")

    page.locator(f"[data-thread='{thread_id}'] a").click()
    page.get_by_role("heading", name="Checkpoints").wait_for()
    assert page.locator("details.checkpoint").count() >= 2
    page.locator("details.checkpoint summary").first.click()
    page.get_by_role("heading", name="Values").wait_for()
    assert page.locator(".cp-body .key", has_text="messages").count() >= 1
    shot(page, "thread")

    page.set_viewport_size({"width": 390, "height": 800})  # a narrow window
    page.reload()
    page.get_by_role("heading", name="Checkpoints").wait_for()
    shot(page, "thread-narrow")


def test_a_graphql_error_shows_as_a_banner_with_its_code(page: Any, server: Server) -> None:
    # (A refused threads filter keeps its form: see test_views.)
    page.goto(f"{server.url}/ui/runs/nope")  # not a run id
    banner = page.get_by_role("alert")
    banner.get_by_text("id must be a run id").wait_for()
    assert banner.locator(".code").inner_text() == "BAD_USER_INPUT"
    assert page.get_by_role("heading", name="Could not load this view").is_visible()


@pytest.mark.parametrize("kind", ["threads", "runs"])
def test_an_id_with_a_malformed_escape_is_not_found(page: Any, server: Server, kind: str) -> None:
    # decodeURIComponent throws on %ff: the page showed "URI malformed" as an error.
    page.goto(f"{server.url}/ui/{kind}/%ff")
    page.get_by_role("heading", name="Not found").wait_for()
    assert "malformed %-escape" in page.locator("#view").inner_text()
    assert page.get_by_role("alert").count() == 0  # no error banner: the address is at fault


def test_every_control_has_a_label_and_is_reachable_by_keyboard(page: Any, server: Server) -> None:
    page.goto(f"{server.url}/ui/threads")
    page.get_by_test_id("total").wait_for()
    unlabelled = page.evaluate(
        """() => [...document.querySelectorAll('input, select, textarea, button')]
            .filter(c => !(c.labels && c.labels.length) && !c.getAttribute('aria-label')
                         && !c.textContent.trim())
            .map(c => c.outerHTML)"""
    )
    assert unlabelled == []
    page.keyboard.press("Tab")  # from the top: the first link, then on through the page
    focused = set()
    for _ in range(16):
        page.keyboard.press("Tab")
        focused.add(page.evaluate("() => document.activeElement.getAttribute('name')"))
    assert {"status", "user", "metadata", "keys", "sort", "first"} <= focused


def test_a_run_of_a_graph_without_agents_says_none_handed_over(page: Any, server: Server) -> None:
    run_id = server.gql(
        'mutation { startRun(input: {message: "hi", graph: "plain", wait: true}) { id } }'
    )["startRun"]["id"]
    page.goto(f"{server.url}/ui/runs/{run_id}")
    page.get_by_text("The run has ended").wait_for()
    agents = page.get_by_role("region", name="Agent transitions")
    # Once the run has ended, the empty panels say what happened, not "yet".
    agents.get_by_text("No agent handed over (a graph without agents has none).").wait_for()
    assert agents.locator("li").count() == 0
    messages = page.get_by_role("region", name="Messages")
    assert messages.get_by_text("No message was streamed").count() == 1
    assert messages.locator(".message").count() == 0
    tools = page.get_by_role("region", name="Tool calls")
    assert tools.get_by_text("No tool was called.").count() == 1
    assert page.get_by_text("yet", exact=False).count() == 0


def test_cancel_a_slow_run(page: Any, server: Server) -> None:
    run_id = start_from_threads_page(page, server, "Write a long React component")
    page.locator(".message .text").first.wait_for()
    page.get_by_role("button", name="Cancel run").click()
    page.get_by_text("The run has ended").wait_for(timeout=60_000)
    assert page.get_by_test_id("run-status").inner_text() == "CANCELLED"
    assert server.gql(f'{{ run(id: "{run_id}") {{ status }} }}')["run"]["status"] == "CANCELLED"
    assert page.get_by_role("button", name="Cancel run").is_hidden()


def test_delete_a_thread_after_confirming(page: Any, server: Server, shot: Shot) -> None:
    started = server.gql(
        'mutation { startRun(input: {message: "hello", wait: true}) { threadId status } }'
    )["startRun"]
    thread_id = started["threadId"]
    page.goto(f"{server.url}/ui/threads/{thread_id}")
    page.get_by_role("button", name="Delete thread…").click()
    page.get_by_text("Delete this thread, its checkpoints and its runs everywhere?").wait_for()
    shot(page, "delete-confirm")
    page.get_by_role("button", name="Yes, delete").click()
    page.wait_for_url(f"{server.url}/ui/threads")
    page.get_by_test_id("total").wait_for()
    assert page.locator(f"[data-thread='{thread_id}']").count() == 0
    assert server.gql(f'{{ thread(id: "{thread_id}") {{ id }} }}') == {"thread": None}


def test_resume_an_interrupt_from_the_inbox(page: Any, server: Server, shot: Shot) -> None:
    started = server.gql(
        'mutation { startRun(input: {message: "Add a FastAPI route", wait: true,'
        " config: {require_approval: true}}) { threadId status } }"
    )["startRun"]
    assert started["status"] == "INTERRUPTED"
    thread_id = started["threadId"]
    asked = server.gql(f'{{ thread(id: "{thread_id}") {{ interrupts {{ id node }} }} }}')
    [interrupt] = asked["thread"]["interrupts"]
    page.goto(f"{server.url}/ui/threads")
    page.get_by_role("link", name="Waiting for a human").click()
    page.wait_for_url("**/ui/inbox")
    item = page.locator(f".inbox-item[data-thread='{thread_id}']")
    form = item.locator(f"form.resume[data-interrupt='{interrupt['id']}']")
    form.get_by_text("approval_request").wait_for()
    assert form.get_by_role("heading").inner_text().startswith(f"Waiting at {interrupt['node']}")
    shot(page, "inbox")
    # A number JSON.parse would turn into Infinity (sent as null) is refused in the page.
    form.get_by_label("Answer (JSON or text)").fill('{"approved": 1e400}')
    form.get_by_role("button", name="Resume").click()
    banner = page.get_by_role("alert")
    banner.get_by_text("1e400 is out of range for a JSON number").wait_for()
    assert banner.locator(".code").inner_text() == "BAD_USER_INPUT"
    assert page.url.endswith("/ui/inbox")
    assert server.gql(f'{{ thread(id: "{thread_id}") {{ status }} }}') == {
        "thread": {"status": "INTERRUPTED"}
    }
    form.get_by_label("Answer (JSON or text)").fill("yes")
    form.get_by_role("button", name="Resume").click()
    page.wait_for_url("**/ui/runs/*")
    page.get_by_text("The run has ended").wait_for(timeout=60_000)
    assert page.get_by_test_id("run-status").inner_text() == "SUCCESS"
    page.get_by_role("link", name="Inbox").click()
    page.get_by_test_id("total").wait_for()
    assert page.locator(f".inbox-item[data-thread='{thread_id}']").count() == 0


def test_losing_the_network_mid_run_resumes_without_duplicates_or_gaps(
    page: Any, context: Any, server: Server, watch: Watch
) -> None:
    subscribed = subscriptions_after(page)  # afterSeq of each runEvents the page sends
    run_id = start_from_threads_page(
        page, server, "Build a Django model with a migration", graph="longhero"
    )
    page.locator(".message .text").first.wait_for()
    page.reload()  # a reload mid-run shows the run from its first event again
    page.locator(".message .text").first.wait_for()
    context.set_offline(True)
    page.get_by_test_id("live").filter(has_text="ffline").wait_for()
    seen = shown_seqs(page)[-1]
    # Let events be recorded while the page is offline: it must fetch them when back.
    query = f'{{ run(id: "{run_id}") {{ status }} }}'
    while all_seqs(server, run_id)[-1] <= seen + 5:
        if server.gql(query)["run"]["status"] != "RUNNING":
            break
        page.wait_for_timeout(100)
    context.set_offline(False)
    page.get_by_text("The run has ended").wait_for(timeout=60_000)
    shown = shown_seqs(page)
    assert shown == list(range(1, len(shown) + 1))
    assert shown == all_seqs(server, run_id)
    assert page.get_by_test_id("run-status").inner_text() == "SUCCESS"
    # From the start twice (the page, then its reload), then after the last event shown.
    assert subscribed == [0, 0, seen]
