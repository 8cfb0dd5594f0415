"""What the image's `ENV` lines give the interpreter that serves the gateway."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

DOCKERFILE = Path(__file__).resolve().parent.parent / "Dockerfile"


def image_env() -> dict[str, str]:
    """The variables the Dockerfile's `ENV` instructions set (KEY=VALUE forms)."""
    env: dict[str, str] = {}
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    for line in text.splitlines():
        words = shlex.split(line, comments=True)
        if words[:1] == ["ENV"]:
            env.update(word.split("=", 1) for word in words[1:])  # type: ignore[misc]
    return env


def test_the_image_keeps_no_column_tables_in_code_objects() -> None:
    # Column tables (the `^^^` markers of a traceback) take about 0.8 MiB of a
    # server's memory. pip compiles the image's .pyc files with them: the interpreter
    # drops them as it loads each, which this checks on a library loaded from its .pyc.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONNODEBUGRANGES"}
    env |= image_env()
    probe = (
        "import os, json.decoder as m; "
        "assert m.__spec__.cached and os.path.exists(m.__spec__.cached), m.__spec__; "
        "print(sorted({p[2:] for p in m.JSONDecoder.decode.__code__.co_positions()}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, env=env
    ).stdout.strip()
    assert out == "[(None, None)]"
