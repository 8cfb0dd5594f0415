"""Persistence: checkpoint backends, fallback, the thread/run registry, the manager."""

from code_hero.persistence.manager import EnhancedCheckpointerManager, PruneReport, ThreadDeletion
from code_hero.persistence.transfer import MigrationReport, migrate

__all__ = [
    "EnhancedCheckpointerManager",
    "MigrationReport",
    "PruneReport",
    "ThreadDeletion",
    "migrate",
]
