"""The access hook of the auth tests (CODE_HERO_AUTH_HOOK=tests.graphql.auth_hook:authorize).

It records what it is asked and denies three things: deleting a thread
unless an administrator asks, runs of the `slow` graph for bob, and reading
checkpoints for bob (a read: denied reads look like missing data).
"""

from __future__ import annotations

from code_hero.auth import AccessRequest

ASKED: list[tuple[str, str | None, str | None]] = []


async def authorize(request: AccessRequest) -> bool | None:
    ASKED.append((str(request.action), request.caller.user_id, request.thread_id))
    user = request.caller.user_id
    if request.action == "thread.delete" and not request.caller.is_admin:
        return False
    if request.action == "run.create" and user == "bob" and request.value.get("graph") == "slow":
        return False
    if request.action == "checkpoint.read" and user == "bob":
        return False
    return None
