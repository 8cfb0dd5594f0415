"""Code Hero Gateway: a GraphQL gateway over LangGraph checkpoints and agent runs."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("code-hero")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0"

__all__ = ["__version__"]
