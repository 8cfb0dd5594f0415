"""The served schema keeps every promise of the public contract."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from graphql import build_schema, find_breaking_changes

from code_hero.schema import schema

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[2] / "shared"  # ../shared beside the checkout
CHECK = SHARED / "tools" / "contract_check.py"
COPY = HERE / "contract.graphql"  # for a checkout without ../shared


def test_served_schema_has_no_breaking_change(tmp_path: Path) -> None:
    served = tmp_path / "served.graphql"
    served.write_text(schema.as_str())
    if CHECK.exists():
        done = subprocess.run(
            [sys.executable, str(CHECK), str(served)], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "0 breaking change(s)" in done.stdout
    else:
        breaking = find_breaking_changes(
            build_schema(COPY.read_text()), build_schema(schema.as_str())
        )
        assert not breaking, [c.description for c in breaking]


def test_the_copy_is_the_contract() -> None:
    contract = SHARED / "contract" / "schema.graphql"
    if contract.exists():
        assert COPY.read_text() == contract.read_text(), f"copy {contract} to {COPY}"
