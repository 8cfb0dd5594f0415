"""Every docstring of the package is text UTF-8 can hold.

Python 3.13 cleans docstrings as it compiles (it strips their indentation) and
encodes them as UTF-8 on the way: a lone surrogate in one (a `"\\ud800"`
written in a docstring that is not raw is one) makes the module fail to import
there, `UnicodeEncodeError` at `import code_hero...`, though 3.11 imports it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "code_hero"
MODULES = sorted(SRC.rglob("*.py"))
DOCUMENTED = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SRC)))
def test_docstrings_are_utf8(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, DOCUMENTED) and (doc := ast.get_docstring(node, clean=False)):
            try:
                doc.encode("utf-8")
            except UnicodeEncodeError as exc:
                where = getattr(node, "lineno", 1)
                pytest.fail(f"{path.relative_to(SRC)}:{where}: a docstring holds {exc.reason}")
