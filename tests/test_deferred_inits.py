"""A package whose `__init__` is deferred works as if it had run at import (cli/deferred.py).

Each case runs in a fresh interpreter: the finder, once installed, stays for the
life of the process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

INIT = """\
import pathlib
RUNS = pathlib.Path(__file__).with_name("runs")
RUNS.write_text(RUNS.read_text() + "x" if RUNS.exists() else "x")
from . import other  # a name the module lacks, read as the init runs
from .leaf import VALUE
GREETING = "hello " + VALUE
"""


@pytest.fixture
def package(tmp_path: Path) -> Path:
    """`heavy`: an `__init__` that counts its runs in heavy/runs and imports its modules."""
    root = tmp_path / "heavy"
    root.mkdir()
    (root / "__init__.py").write_text(INIT)
    (root / "leaf.py").write_text("VALUE = 'leaf'\n")
    (root / "other.py").write_text("")
    return tmp_path


def run(code: str, path: Path) -> list[str]:
    """The lines `code` prints, with `heavy` deferred and on the path."""
    prologue = "from code_hero.cli.deferred import defer_package_inits as d; d(['heavy'])\n"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(path), *sys.path])}
    out = subprocess.run(
        [sys.executable, "-c", prologue + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_a_leaf_imports_without_running_the_init(package: Path) -> None:
    runs = package / "heavy" / "runs"
    out = run(
        f"""
        import pathlib
        from heavy.leaf import VALUE
        import heavy
        print(VALUE, pathlib.Path({str(runs)!r}).exists(), type(heavy).__name__)
        """,
        package,
    )
    assert out == ["leaf", "False", "_DeferredPackage"]


def test_the_first_missing_name_runs_the_init_once(package: Path) -> None:
    out = run(
        """
        import heavy.leaf, heavy
        from heavy import GREETING
        print(GREETING.replace(" ", "_"), heavy.GREETING.replace(" ", "_"))
        print(type(heavy).__name__, type(heavy.__loader__).__name__)
        print(heavy.RUNS.read_text())
        try:
            heavy.missing
        except AttributeError as exc:
            print("AttributeError", "missing" in str(exc))
        """,
        package,
    )
    assert out == [
        *("hello_leaf", "hello_leaf"),
        *("module", "SourceFileLoader"),
        "x",  # once, though its own `from . import other` read a name it lacked
        *("AttributeError", "True"),
    ]


def test_dir_runs_the_init(package: Path) -> None:
    assert run("import heavy.leaf, heavy\nprint('GREETING' in dir(heavy))", package) == ["True"]


def test_an_init_that_fails_raises_at_first_use_and_is_tried_again(package: Path) -> None:
    init = package / "heavy" / "__init__.py"
    init.write_text(
        "import pathlib\n"
        "if not pathlib.Path(__file__).with_name('ok').exists():\n"
        "    raise RuntimeError('broken init')\n" + INIT
    )
    out = run(
        f"""
        import pathlib, heavy.leaf, heavy
        try:
            heavy.GREETING
        except RuntimeError as exc:
            print(exc.args[0].replace(" ", "_"))
        pathlib.Path({str(package / "heavy" / "ok")!r}).touch()
        print(heavy.GREETING.replace(" ", "_"))
        """,
        package,
    )
    assert out == ["broken_init", "hello_leaf"]


def test_threads_reading_at_once_wait_for_one_init(package: Path) -> None:
    init = package / "heavy" / "__init__.py"
    # The first reader holds the init open until every reader has started.
    init.write_text("import time\ntime.sleep(0.3)\n" + INIT)
    out = run(
        """
        import threading, heavy.leaf, heavy
        seen = []
        readers = [threading.Thread(target=lambda: seen.append(heavy.GREETING)) for _ in range(8)]
        for r in readers:
            r.start()
        for r in readers:
            r.join()
        print(len(seen), set(seen) == {"hello leaf"}, heavy.RUNS.read_text())
        """,
        package,
    )
    assert out == ["8", "True", "x"]


def test_a_re_exported_name_is_read_from_its_submodule_without_the_init(package: Path) -> None:
    out = run(
        """
        from code_hero.cli.deferred import defer_package_inits
        defer_package_inits(['heavy'], {'heavy': {'VALUE': 'heavy.leaf'}})
        import heavy, heavy.leaf
        from heavy import VALUE
        print(VALUE, heavy.VALUE is heavy.leaf.VALUE, type(heavy).__name__)
        print(heavy.GREETING.replace(" ", "_"), heavy.VALUE, heavy.RUNS.read_text())
        """,
        package,
    )
    assert out == ["leaf", "True", "_DeferredPackage", "hello_leaf", "leaf", "x"]


def test_the_re_exports_are_the_installed_packages_own() -> None:
    # What a deferred package hands out before its `__init__` runs is what the
    # `__init__` itself binds, for the library versions installed.
    probe = textwrap.dedent(
        """
        import importlib
        from code_hero.cli.deferred import RE_EXPORTS
        for package, names in RE_EXPORTS.items():
            init = importlib.import_module(package)
            for name, submodule in names.items():
                assert getattr(init, name) is getattr(importlib.import_module(submodule), name)
                print(f"{package}.{name}")
        """
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [
        "uvicorn.Config",
        "uvicorn.Server",
        "charset_normalizer.__version__",
        "dateutil.parser.isoparse",
    ]


def test_models_defined_in_the_window_build_at_first_use(tmp_path: Path) -> None:
    out = run(
        """
        import pydantic
        from code_hero.cli.deferred import deferred_model_builds
        with deferred_model_builds():
            class Early(pydantic.BaseModel):
                n: int
        class Late(pydantic.BaseModel):
            n: int
        print(Early.__pydantic_complete__, Late.__pydantic_complete__)
        print(Early(n="3").n, Early.__pydantic_complete__)
        try:
            Early(n="three")
        except pydantic.ValidationError:
            print("ValidationError")
        """,
        tmp_path,
    )
    assert out == ["False", "True", "3", "True", "ValidationError"]


def test_a_submodule_imported_first_that_imports_a_sibling_from_the_package(
    tmp_path: Path,
) -> None:
    # idna's shape: `core` does `from . import idnadata`, and the `__init__` does
    # `from .core import encode`. Imported first (`import idna.core`, `import idna.codec`),
    # the sibling read ran the `__init__` inside `core`'s own import: ImportError.
    root = tmp_path / "heavy"
    root.mkdir()
    (root / "__init__.py").write_text("from .core import encode\n")
    (root / "core.py").write_text("from . import data\ndef encode():\n    return data.X\n")
    (root / "data.py").write_text("X = 'x'\n")
    out = run(
        """
        import heavy.core, heavy
        print(heavy.core.encode(), type(heavy).__name__, heavy.encode(), type(heavy).__name__)
        """,
        tmp_path,
    )
    assert out == ["x", "_DeferredPackage", "x", "module"]
