"""Adopting another process's file: the journal and the spool both take over files whose writer
died, and must never take one whose writer is alive. An exclusive ``flock`` held for the file's
whole life says which is which (the kernel drops it when the holder dies, even by SIGKILL)."""

from __future__ import annotations

import fcntl
from pathlib import Path
from typing import IO


def try_lock(path: Path) -> IO[bytes] | None:
    """An open handle holding ``path``'s exclusive lock, or None when a live process holds it."""
    handle = open(path, "rb")  # noqa: SIM115 - returned to the caller, who closes it
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return None
    return handle
