"""A cursor is the client's input too: a forged one is BAD_USER_INPUT, never INTERNAL.

The keyset listings (`threads`, `runs`, `webhookDeliveries`) decode their cursor
(base64 of [kind, time, key, order]) and check its shape, but not the key or the
time: a key holding a lone surrogate (both backends) or NUL (PostgreSQL), or a
time whose offset takes it past year 9999 in UTC (SQLite), reached the database
and answered INTERNAL, with a traceback in the log.
"""

from __future__ import annotations

import base64

from tests.graphql.clients import codes, gql
from tests.graphql.conftest import Server

LISTINGS = {
    "thread": ("query($c: String) { threads(after: $c) { totalCount } }", "UPDATED_AT:DESC"),
    "run": ("query($c: String) { runs(after: $c) { totalCount } }", "CREATED_AT:DESC"),
    "delivery": (
        "query($c: String) { webhookDeliveries(after: $c) { edges { cursor } } }",
        "CREATED_AT:DESC",
    ),
}
WHEN = "2026-11-30T22:40:58+00:00"
FORGED = {
    "lone surrogate in the key": (WHEN, "\\ud800"),
    "NUL in the key": (WHEN, "a\\u0000b"),
    "time past year 9999 in UTC": ("9999-12-31T23:59:59-23:59", "k"),
    "time before year 1 in UTC": ("0001-01-01T00:00:00+23:59", "k"),
}


async def test_a_forged_cursor_is_bad_input(server: Server) -> None:
    # Every case on one server (a server a case cost the suite about 20 s).
    for kind, (query, order) in LISTINGS.items():
        for name, (when, key) in FORGED.items():
            raw = f'["{kind}","{when}","{key}","{order}"]'
            cursor = base64.urlsafe_b64encode(raw.encode()).decode()
            body = await gql(server.http, query, {"c": cursor})
            assert codes(body) == ["BAD_USER_INPUT"], (kind, name, body)
            assert "malformed cursor" in body["errors"][0]["message"]
        # json.loads raises RecursionError, no ValueError, at 100,000 levels (review).
        cursor = base64.urlsafe_b64encode(b"[" * 100_000).decode()
        body = await gql(server.http, query, {"c": cursor})
        assert codes(body) == ["BAD_USER_INPUT"], (kind, str(body)[:300])
        assert "malformed cursor" in body["errors"][0]["message"]
        assert len(body["errors"][0]["message"]) < 500  # the cursor is not echoed whole


async def test_a_forged_history_cursor_is_bad_input(server: Server) -> None:
    # `Thread.checkpoints` decodes base64 of `thread_id NUL namespace NUL checkpoint_id`
    # and checked only that the parts are there: an id of two NULs, which PostgreSQL's
    # text cannot hold (psycopg's DataError answered INTERNAL).
    await gql(server.http, 'mutation { createThread(input: {threadId: "forged-history"}) { id } }')
    query = """query($c: String) { thread(id: "forged-history") {
        checkpoints(first: 2, after: $c) { totalCount } } }"""
    for raw in ("\x00\x00\x00", "\x00a\x00b", "\x00\ud800".encode("utf-8", "surrogatepass")):
        data = b"forged-history\x00" + (raw if isinstance(raw, bytes) else raw.encode())
        cursor = base64.urlsafe_b64encode(data).decode().rstrip("=")
        body = await gql(server.http, query, {"c": cursor})
        assert codes(body) == ["BAD_USER_INPUT"], (raw, body)
        assert "invalid checkpoint cursor" in body["errors"][0]["message"]


async def test_a_history_cursor_of_another_thread_is_bad_input(server: Server) -> None:
    # A cursor names a checkpoint of one thread's history; on another thread's history
    # it was taken as a time and silently paged from there (skipping the newer items).
    query = """query($t: ID!, $c: String) { thread(id: $t) {
        checkpoints(first: 2, after: $c) { edges { cursor node { id } } } } }"""
    mutation = 'mutation { startRun(input: {message: "hi", wait: true}) { threadId } }'
    threads = [(await gql(server.http, mutation))["data"]["startRun"]["threadId"] for _ in "ab"]
    first, second = threads
    page = (await gql(server.http, query, {"t": first}))["data"]["thread"]["checkpoints"]
    cursor = page["edges"][0]["cursor"]
    body = await gql(server.http, query, {"t": second, "c": cursor})
    assert codes(body) == ["BAD_USER_INPUT"], body
    assert "another thread" in body["errors"][0]["message"]
    mine = await gql(server.http, query, {"t": first, "c": cursor})
    after = mine["data"]["thread"]["checkpoints"]["edges"]
    assert after[0]["node"]["id"] == page["edges"][1]["node"]["id"]


async def test_a_history_cursor_made_before_cursors_named_their_thread_still_pages(
    server: Server,
) -> None:
    # A dashboard paging across an upgrade holds a cursor of the older form, `namespace
    # NUL checkpoint_id`: it goes on from there, not BAD_USER_INPUT.
    query = """query($t: ID!, $c: String) { thread(id: $t) {
        checkpoints(first: 2, after: $c) { edges { node { id } } } } }"""
    mutation = 'mutation { startRun(input: {message: "hi", wait: true}) { threadId } }'
    thread = (await gql(server.http, mutation))["data"]["startRun"]["threadId"]
    page = (await gql(server.http, query, {"t": thread}))["data"]["thread"]["checkpoints"]
    newest, following = (edge["node"]["id"] for edge in page["edges"])
    older = base64.urlsafe_b64encode(f"\x00{newest}".encode()).decode().rstrip("=")
    body = await gql(server.http, query, {"t": thread, "c": older})
    assert body["data"]["thread"]["checkpoints"]["edges"][0]["node"]["id"] == following, body
