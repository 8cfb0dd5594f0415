"""The exit codes of `code-hero`: 0 done, 1 an error, 2 bad arguments, 3 a run that waits."""

from __future__ import annotations

__all__ = ["EXIT_ERROR", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "RUN_EXIT"]

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 3
RUN_EXIT = {"SUCCESS": EXIT_OK, "INTERRUPTED": EXIT_INTERRUPTED}  # any other end: EXIT_ERROR
