"""The checked-in `schema.graphql` is what `code-hero schema` prints."""

from __future__ import annotations

import difflib
import subprocess
import sys
from pathlib import Path

SCHEMA_FILE = Path(__file__).resolve().parents[1] / "schema.graphql"
REGENERATE = "regenerate it with `.venv/bin/code-hero schema > schema.graphql` and commit it"


def test_schema_graphql_matches_the_served_schema() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "code_hero.cli", "schema"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert SCHEMA_FILE.exists(), f"{SCHEMA_FILE.name} is missing: {REGENERATE}"
    checked_in = SCHEMA_FILE.read_text()
    if done.stdout != checked_in:
        diff = difflib.unified_diff(
            checked_in.splitlines(),
            done.stdout.splitlines(),
            "schema.graphql",
            "served",
            lineterm="",
        )
        shown = "\n".join(list(diff)[:60])
        raise AssertionError(
            f"{SCHEMA_FILE.name} differs from the served schema: {REGENERATE}\n{shown}"
        )
