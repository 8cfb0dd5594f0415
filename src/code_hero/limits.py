"""Request limits: one frozen dataclass, shared by every layer that enforces one.

It imports nothing of the package, so the schema, the resolvers, the gateway,
the manager and the CLI's argument parser can all take a limit from here
without loading the layers above them. `settings.py` fills it from the
environment.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_MAX_COST", "MAX_CACHED_TEXT", "Limits"]

DEFAULT_MAX_COST = 25_000  # query cost points (see code_hero.schema.cost)


@dataclass(frozen=True)
class Limits:
    """Request limits, each configurable; on by default.

    `Limits.max_page` (the class attribute) is the default page size limit for
    code that is not handed configured limits.
    """

    max_depth: int = 10
    max_aliases: int = 30
    max_tokens: int = 5000
    max_cost: int = DEFAULT_MAX_COST
    max_body_bytes: int = 1024 * 1024
    max_page: int = 100
    max_message_length: int = 100_000
    max_subscriptions: int = 20
    ws_init_timeout: float = 10.0
    introspection: bool = True
    field_suggestions: bool = True


# The caches keyed by a document's text (parsed and validated documents, shareable
# subscriptions) keep texts up to this long (a dashboard's documents are a few KB):
# bigger ones are parsed and validated each time, so that no client can make them
# hold hundreds of texts of a megabyte each.
MAX_CACHED_TEXT = 16_384
