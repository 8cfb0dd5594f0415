"""The agents' tools: compiling Python, counting lines, checking style."""

from __future__ import annotations

from code_hero.agents.tools import check_python, count_lines, extract_code, style_check


def test_check_python_accepts_valid_code() -> None:
    assert check_python("def f(x):\n    return x + 1\n") == {"ok": True, "errors": []}


def test_check_python_reports_line_col_and_message() -> None:
    result = check_python("x = 1\ndef broken(:\n    pass\n")
    assert result["ok"] is False
    [error] = result["errors"]
    assert error["line"] == 2
    assert error["col"] > 0
    assert error["message"]


def test_count_lines() -> None:
    code = "# header\n\nx = 1\ny = 2\n"
    assert count_lines(code) == {"total": 4, "code": 2, "blank": 1, "comment": 1}


def test_style_check_finds_long_lines_and_missing_docstrings() -> None:
    code = 'def documented():\n    """Doc."""\n\n\ndef bare():\n    return "' + "x" * 100 + '"\n'
    result = style_check(code)
    assert result["ok"] is False
    rules = {(issue["rule"], issue["line"]) for issue in result["issues"]}
    assert rules == {("line-length", 6), ("docstring", 5)}


def test_style_check_passes_clean_code_and_reports_syntax_errors() -> None:
    assert style_check('def f():\n    """Doc."""\n')["ok"] is True
    broken = style_check("def f(:\n")
    assert [issue["rule"] for issue in broken["issues"]] == ["syntax"]


def test_extract_code_prefers_fenced_blocks() -> None:
    text = "Look:\n```python\na = 1\n```\nand\n```\nb = 2\n```\n"
    assert extract_code(text) == ["a = 1\n", "b = 2\n"]
    assert extract_code("Review this:\ndef f():\n    pass") == ["def f():\n    pass"]
    assert extract_code("no code here") == []
