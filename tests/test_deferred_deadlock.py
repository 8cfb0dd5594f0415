"""A deferred `__init__` and another thread's import of one of its submodules never hang.

Thread 1 reads a package name and runs the deferred `__init__`, which imports `heavy.a`;
thread 2 is importing `heavy.a` meanwhile and reads a package name the `__init__` has
not set yet. Under a lock of the finder's own this is a cycle nothing breaks (a hang);
under the package's import lock the import system finds the cycle and answers it as
it answers any import cycle between threads: a partially initialized module.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

INIT = """\
import builtins
builtins.RV[1].set()     # thread 1 runs the deferred init
builtins.RV[2].wait(5)   # until thread 2 reads a name
VERSION = "1"
from .a import A
"""

A = """\
import builtins, threading
builtins.RV[0].set()     # thread 2 imports heavy.a, holding its import lock
builtins.RV[1].wait(5)
threading.Timer(0.5, builtins.RV[2].set).start()
from heavy import VERSION
A = "a" + VERSION
"""

MAIN = """\
import builtins, threading
from code_hero.cli.deferred import defer_package_inits
defer_package_inits(["heavy"])
import heavy.leaf, heavy
builtins.RV = (threading.Event(), threading.Event(), threading.Event())
def t2():
    import heavy.a
def t1():
    builtins.RV[0].wait(5)
    heavy.A
threads = [threading.Thread(target=t2, daemon=True), threading.Thread(target=t1, daemon=True)]
for t in threads:
    t.start()
for t in threads:
    t.join(20)
print([t.is_alive() for t in threads])
"""


def test_an_init_and_a_submodule_import_in_two_threads_do_not_hang(tmp_path: Path) -> None:
    root = tmp_path / "heavy"
    root.mkdir()
    (root / "__init__.py").write_text(INIT)
    (root / "a.py").write_text(A)
    (root / "leaf.py").write_text("")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    out = subprocess.run(
        [sys.executable, "-c", MAIN], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["[False,", "False]"]
