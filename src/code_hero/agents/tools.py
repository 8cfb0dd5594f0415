"""Real tools the agents call: compile Python, count lines, check house style.

Each tool takes source text and returns JSON-friendly data, so a call and its
result can be kept in the graph state (`tool_calls`) and streamed as they are.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Final

__all__ = [
    "MAX_LINE_LENGTH",
    "TOOLS",
    "check_python",
    "count_lines",
    "extract_code",
    "style_check",
]

MAX_LINE_LENGTH: Final = 100
_FENCE = re.compile(r"```[ \t]*(?:python|py)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)
_CODE_START = re.compile(r"^(?:async\s+def|def|class|import|from|@)\s*\S", re.MULTILINE)


def extract_code(text: str) -> list[str]:
    """The Python snippets quoted in `text`: fenced blocks, else from the first `def`/`class`."""
    blocks = [block for block in _FENCE.findall(text) if block.strip()]
    if blocks:
        return blocks
    start = _CODE_START.search(text)
    return [text[start.start() :]] if start else []


def check_python(code: str) -> dict[str, Any]:
    """Compile `code` with `ast.parse`: {"ok": bool, "errors": [{line, col, message}]}."""
    try:
        ast.parse(code)
    except SyntaxError as exc:
        error = {"line": exc.lineno or 0, "col": exc.offset or 0, "message": exc.msg}
        return {"ok": False, "errors": [error]}
    except ValueError as exc:  # e.g. a NUL byte in the source
        return {"ok": False, "errors": [{"line": 0, "col": 0, "message": str(exc)}]}
    return {"ok": True, "errors": []}


def count_lines(code: str) -> dict[str, int]:
    """How many lines `code` has: total, code, blank and comment lines."""
    lines = code.splitlines()
    blank = sum(1 for line in lines if not line.strip())
    comment = sum(1 for line in lines if line.strip().startswith("#"))
    return {
        "total": len(lines),
        "code": len(lines) - blank - comment,
        "blank": blank,
        "comment": comment,
    }


def style_check(code: str, max_line_length: int = MAX_LINE_LENGTH) -> dict[str, Any]:
    """House-style issues in `code`: long lines, syntax errors, missing docstrings."""
    issues: list[dict[str, Any]] = []
    for number, line in enumerate(code.splitlines(), start=1):
        if len(line) > max_line_length:
            message = f"line is {len(line)} characters long (limit {max_line_length})"
            issues.append({"line": number, "rule": "line-length", "message": message})
    compiled = check_python(code)
    for error in compiled["errors"]:
        issues.append({"line": error["line"], "rule": "syntax", "message": error["message"]})
    if compiled["ok"]:
        issues.extend(_missing_docstrings(ast.parse(code)))
    return {"ok": not issues, "issues": issues, "lines": count_lines(code)}


def _missing_docstrings(tree: ast.Module) -> list[dict[str, Any]]:
    public = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    issues = []
    for node in ast.walk(tree):
        if isinstance(node, public) and not node.name.startswith("_"):
            if ast.get_docstring(node) is None:
                kind = "class" if isinstance(node, ast.ClassDef) else "function"
                message = f"public {kind} {node.name!r} has no docstring"
                issues.append({"line": node.lineno, "rule": "docstring", "message": message})
    return issues


TOOLS: Final[Mapping[str, Callable[[str], dict[str, Any]]]] = MappingProxyType(
    {
        "check_python": check_python,
        "count_lines": count_lines,
        "style_check": style_check,
    }
)
"""Every tool by name; each takes source text."""
