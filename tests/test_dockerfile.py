"""What the image's `ENV` lines give the interpreter that serves the gateway."""

from __future__ import annotations

import os
import py_compile
import shlex
import subprocess
import sys
from pathlib import Path

DOCKERFILE = Path(__file__).resolve().parent.parent / "Dockerfile"


def image_env() -> dict[str, str]:
    """The variables the Dockerfile's `ENV` instructions set (KEY=VALUE forms)."""
    env: dict[str, str] = {}
    for line in DOCKERFILE.read_text().replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if words[:1] == ["ENV"]:
            env.update(word.split("=", 1) for word in words[1:])  # type: ignore[misc]
    return env


def test_the_image_keeps_no_column_tables_in_code_objects(tmp_path: Path) -> None:
    # Column tables (the `^^^` under a traceback's line) take about 0.8 MiB of a
    # server's memory. pip compiles the image's .pyc files with them; the interpreter
    # drops them as it loads each. A module imported from a .pyc compiled here (its
    # source replaced by one that refuses to run: the .pyc is what loads):
    source = tmp_path / "compiled.py"
    source.write_text("def f(x):\n    return x.a + x.b\n")
    py_compile.compile(str(source), invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
    source.write_text("raise SystemExit('loaded from its source, not its .pyc')\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONNODEBUGRANGES"}
    env |= image_env() | {"PYTHONPATH": str(tmp_path)}
    probe = "import compiled; print(sorted({p[2:] for p in compiled.f.__code__.co_positions()}))"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, env=env
    ).stdout.strip()
    assert out == "[(None, None)]"
