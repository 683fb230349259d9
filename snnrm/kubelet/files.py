"""Atomic file writes for files other processes read while we may be rewriting them (CDI specs, allocations)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomic(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` so that readers see either the old or the new file, never a partial one.

    The temporary file sits in the same directory (``rename`` is atomic only within a file system). No fsync: the
    CDI spec is rewritten at every start, and every allocation file the kubelet still holds a container to is
    verified at start and rewritten if torn or missing (:meth:`snnrm.app.Daemon.verify_allocation_files`).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def writable_problem(directory: Path) -> str | None:
    """Why files cannot be written in ``directory`` (created if missing), or None when a test file can be.

    Checked by writing and removing a file rather than with ``os.access``: as root, access() says yes to a
    read-only mount, a full disk or a path under a regular file.
    """
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".snnrm-probe-")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        return e.strerror or type(e).__name__
    return None
