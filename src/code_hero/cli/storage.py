"""What the commands share: settings from the options, the store, the operator's gateway.

Every command that opens storage takes --database-url and --sqlite-path and
otherwise follows the environment (see `code_hero.settings.ENVIRONMENT`).
A command acts through a `Gateway` like any resolver, as the `OPERATOR`: an
administrator at the console, who needs no credentials.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from code_hero.auth.caller import Caller
from code_hero.cli.display import jsonable
from code_hero.errors import ConfigurationError

if TYPE_CHECKING:  # the heavy modules load only once a command needs them
    from code_hero.config import CheckpointerConfig
    from code_hero.gateway import Gateway
    from code_hero.settings import AppSettings

__all__ = [
    "OPERATOR",
    "operator_gateway",
    "print_json",
    "require_file",
    "settings_of",
    "storage_flags",
]

OPERATOR = Caller(user_id=None, is_admin=True)
"""Who a command acts as: the store's operator, an administrator of every thread."""


def settings_of(args: argparse.Namespace, *, serving: bool = False, **options: Any) -> AppSettings:
    """The settings the environment and the command's options give.

    The durable fallback file is `serve`'s alone (`serving`): any other command
    beside a server (a `health` probe, `threads list`) would take a file of its
    own, or resume and copy back a dead server's outage; it falls back in memory.
    """
    from code_hero.settings import settings_from_env

    settings = settings_from_env(
        database_url=getattr(args, "database_url", None),
        sqlite_path=getattr(args, "sqlite_path", None),
        graphs=getattr(args, "graphs", None),
        langgraph_json=getattr(args, "langgraph_json", None),
        **options,
    )
    if serving or settings.gateway.checkpointer.fallback_path is None:
        return settings
    checkpointer = settings.gateway.checkpointer.with_options(fallback_path=None)
    return replace(settings, gateway=replace(settings.gateway, checkpointer=checkpointer))


def require_file(
    config: CheckpointerConfig, hint: str = "pass --sqlite-path or --database-url"
) -> None:
    """A SQLite store must exist already: a command that reads it creates no empty file."""
    if config.kind == "sqlite" and not Path(config.database_path or "").exists():
        raise ConfigurationError(
            f"no SQLite database at {config.database_path}: nothing is stored there yet ({hint})"
        )


@contextlib.asynccontextmanager
async def operator_gateway(
    args: argparse.Namespace, *, runs: bool = False
) -> AsyncIterator[Gateway]:
    """A gateway on the configured store or not at all, executing only the runs it
    starts: against a shared database the servers' runs are theirs to execute.

    Without `runs` (the commands that look after stored threads) the store must
    exist already (no empty SQLite file is made), there is no memory fallback
    to fall back on, and no graph but the built-in one is loaded. With `runs`,
    a run outlives an outage of the store on the fallback, as a server's does.
    """
    from code_hero.gateway import Gateway

    settings = settings_of(args).gateway
    if not runs:
        require_file(settings.checkpointer)
        settings = replace(
            settings,
            checkpointer=settings.checkpointer.with_options(enable_fallback=False),
            graphs={},
            default_graph=None,
        )
    # The durable fallback is a server's: a command beside it would take a file of its
    # own, or resume a dead server's outage; its runs' fallback is in memory.
    one_shot = replace(
        settings,
        checkpointer=settings.checkpointer.with_options(fallback_path=None),
        claim_others=False,
        require_primary=True,
    )
    async with Gateway(one_shot) as gateway:
        yield gateway


def print_json(value: Any) -> None:
    """`value` as indented JSON on stdout."""
    print(json.dumps(jsonable(value), indent=2))


def storage_flags(args: argparse.Namespace) -> list[str]:
    """The storage and graph options the command was given, to repeat in a hint."""
    flags = []
    for name in ("database_url", "sqlite_path", "graphs", "langgraph_json"):
        value = getattr(args, name, None)
        if value:
            flags += [f"--{name.replace('_', '-')}", value]
    return flags
