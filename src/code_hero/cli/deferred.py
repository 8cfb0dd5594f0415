"""Library packages whose `__init__` a server runs on first use instead of at import.

Something a server needs imports a leaf module of each, and importing a leaf
runs its package's `__init__`, which loads far more than the leaf:

- `langgraph_sdk`: `langgraph.runtime` needs only `langgraph_sdk.auth.types`;
  the package's `__init__` loads the SDK's whole HTTP client, with httpx (and
  httpx's command line: rich, pygments), and `langgraph_sdk.auth`'s its `Auth`
  class and exceptions.
- `langsmith.types`: langsmith's run trees need one `Literal` alias,
  `langsmith.types.run_select_field`; the package's `__init__` loads its 164
  generated pydantic models.
- `uvicorn`: `serve` needs its `Config` and `Server` (and `uvicorn.lifespan.on`
  reads `from uvicorn import Config`); the package's `__init__` loads its
  command line: click, watchfiles, the reload and worker supervisors.
- `charset_normalizer`: `requests` (which langchain-core and langsmith import)
  reads its `__version__`; the package's `__init__` loads its encoding detector
  (its language tables and mypyc-compiled modules), which only a `requests`
  response without a declared encoding uses.
- `dateutil.parser`: Strawberry's `DateTime` scalar reads its `isoparse` (a
  re-export of `dateutil.parser.isoparser`); the package's `__init__` loads the
  free-form parser too, with `dateutil.relativedelta`.
- `dateutil.tz` (Strawberry's date parser uses it only to parse a time zone),
  `idna` (httpx's, for a non-ASCII host name) and `strawberry.federation`
  (Strawberry's `__init__` imports it; this gateway is no federated subgraph).

Deferred, a server on SQLite holds about 18 MiB less (README, "Where a run's
time and the server's memory go"). For these packages only, the finder below
makes the package module as the import system would (`__path__`, `__spec__`,
`__file__`), so its submodules import as usual, but runs its `__init__` the
first time a name the module lacks is read: `from langgraph_sdk import
get_client`, `langsmith.types.Run`, `dir(langsmith.types)`. A name the
`__init__` only re-exports from a submodule (`RE_EXPORTS`: `uvicorn.Config` is
`uvicorn.config.Config`) is read from that submodule, and the `__init__` still
waits. Every use works; only the moment its `__init__` runs moves. The `code-hero`
command installs it before anything else: a server holds less, and a command
that opens the store starts in about 1.2 s of CPU instead of 1.7.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from importlib import _bootstrap
from importlib.abc import Loader, MetaPathFinder
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Any

__all__ = ["DEFERRED_PACKAGES", "RE_EXPORTS", "defer_package_inits", "deferred_model_builds"]

DEFERRED_PACKAGES = (
    "langgraph_sdk",
    "langgraph_sdk.auth",
    "langsmith.types",
    "uvicorn",
    "charset_normalizer",
    "dateutil.parser",
    "dateutil.tz",
    "idna",
    "strawberry.federation",
)

# Names a deferred package's `__init__` only re-exports from one of its submodules
# (a test checks each against the installed package).
RE_EXPORTS: Mapping[str, Mapping[str, str]] = {
    "uvicorn": {"Config": "uvicorn.config", "Server": "uvicorn.server"},
    "charset_normalizer": {"__version__": "charset_normalizer.version"},
    "dateutil.parser": {"isoparse": "dateutil.parser.isoparser"},
}
# Those of the packages deferred in this process.
_re_exports: dict[str, Mapping[str, str]] = {}

# The `__init__` runs under the package's own import lock, as at import: a thread that
# reads a name meanwhile waits for it, and a cycle with another thread's import is the
# import system's (`_DeadlockError`, answered as a partially initialized module).
_running: set[str] = set()
# Private to importlib (since 3.3), untyped in typeshed.
_ModuleLockManager: Any = getattr(_bootstrap, "_ModuleLockManager")  # noqa: B009
_DeadlockError: Any = getattr(_bootstrap, "_DeadlockError")  # noqa: B009


class _DeferredPackage(ModuleType):
    """A package whose `__init__` has not run: it runs at the first missing name."""

    def __getattr__(self, name: str) -> Any:
        submodule = _re_exports.get(self.__name__, {}).get(name)
        if submodule is not None:
            value = getattr(importlib.import_module(submodule), name)
            setattr(self, name, value)  # as the `__init__` would bind it
            return value
        try:
            _run_init(self, name)
        except ImportError as exc:
            # Read by one of its submodules as it imports (`from . import sibling`),
            # whose module the `__init__` imports from: answered as at import, with
            # a partially initialized package; the `__init__` runs at a later read.
            prefix = f"{self.__name__}."
            if any(
                key.startswith(prefix) and getattr(mod.__spec__, "_initializing", False)
                for key, mod in list(sys.modules.items())
            ):
                raise AttributeError(
                    f"partially initialized module {self.__name__!r} has no attribute {name!r}"
                ) from exc
            raise
        return getattr(self, name)

    def __dir__(self) -> list[str]:
        _run_init(self, "__dir__")
        return dir(self)


def _run_init(module: ModuleType, name: str) -> None:
    try:
        lock = _ModuleLockManager(module.__name__)
        lock.__enter__()
    except _DeadlockError:
        raise AttributeError(
            f"partially initialized module {module.__name__!r} has no attribute {name!r}"
        ) from None
    try:
        if not _is_deferred(module):  # another thread ran it meanwhile
            return
        if module.__name__ in _running:  # read by its own `__init__`, as it runs
            raise AttributeError(
                f"partially initialized module {module.__name__!r} has no attribute {name!r}"
            )
        _running.add(module.__name__)
        try:
            loader = module.__spec__.loader if module.__spec__ else None
            assert loader is not None
            loader.exec_module(module)
            # Done: an ordinary module again. On an error it stays deferred, and the
            # next read tries again, as a failed import is tried again.
            module.__class__ = ModuleType
        finally:
            _running.discard(module.__name__)
    finally:
        lock.__exit__(None, None, None)


def _is_deferred(module: ModuleType) -> bool:
    return type(module) is _DeferredPackage


class _DeferringLoader(Loader):
    """Makes the module with the package's own loader; runs nothing."""

    def __init__(self, loader: Loader) -> None:
        self.loader = loader

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        # The package's own loader again, for its `__init__` later and for anyone who
        # asks (importlib.resources, inspect, reloading).
        assert module.__spec__ is not None
        module.__spec__.loader = module.__loader__ = self.loader
        module.__class__ = _DeferredPackage


class _DeferringFinder(MetaPathFinder):
    """Finds the deferred packages with the finders after it, then defers their `__init__`."""

    def __init__(self) -> None:
        self.names: set[str] = set()

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname not in self.names:
            return None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            if finder is self or find is None:
                continue
            spec: ModuleSpec | None = find(fullname, path, target)
            if spec is None:
                continue
            # Only a package with a loader that runs code; anything else as found.
            if spec.submodule_search_locations is not None and hasattr(spec.loader, "exec_module"):
                spec.loader = _DeferringLoader(spec.loader)  # type: ignore[arg-type]
            return spec
        return None


def defer_package_inits(
    names: Sequence[str] = DEFERRED_PACKAGES,
    re_exports: Mapping[str, Mapping[str, str]] = RE_EXPORTS,
) -> None:
    """Defer the `__init__` of `names` not yet imported, in this process from now on;
    `re_exports` names, per package, what its `__init__` re-exports from which submodule."""
    _re_exports.update(re_exports)
    finder = next((f for f in sys.meta_path if isinstance(f, _DeferringFinder)), None)
    if finder is None:
        finder = _DeferringFinder()
        sys.meta_path.insert(0, finder)
    finder.names.update(name for name in names if name not in sys.modules)


@contextmanager
def deferred_model_builds() -> Iterator[None]:
    """Pydantic models defined meanwhile build their validators at first use."""
    # The libraries' modules define about 120 pydantic models (langsmith's run schemas,
    # langchain-core's messages and tools...) that a server seldom or never validates
    # with; built at import they hold ~2 MiB. `defer_build=True` is pydantic's own
    # (public per model), set here as the default of the models defined in the window
    # through pydantic's private defaults; a model outside it (a graph's own, loaded
    # later) builds at definition as usual. Without that private name, nothing changes.
    try:
        from pydantic._internal._config import config_defaults
    except ImportError:
        yield
        return
    if config_defaults.get("defer_build") is not False:
        yield
        return
    config_defaults["defer_build"] = True
    try:
        yield
    finally:
        config_defaults["defer_build"] = False
