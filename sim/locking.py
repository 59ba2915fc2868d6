"""Inter-process exclusive locks on lock files (pytest-xdist workers, parallel CI jobs)."""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path

__all__ = ["file_lock"]


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on *path* for the duration of the block.

    Parameters
    ----------
    path : pathlib.Path
        Lock file; created (with its parent directories) if missing and left
        in place afterwards, since deleting a lock file another process may be
        waiting on would let two holders in at once.

    Notes
    -----
    ``flock`` locks are released by the kernel when the holder dies, so a
    crashed build never leaves a stale lock behind.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
