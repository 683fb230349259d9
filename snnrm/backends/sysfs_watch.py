"""A minimal inotify binding (ctypes over libc) for watching the sysfs tree's ``events`` file.

Why not a library: we need three libc calls and a struct decoder; ``asyncinotify``/``inotify_simple`` would
add a dependency for ~80 lines. The fd is non-blocking and close-on-exec, meant for ``loop.add_reader``: the
event loop wakes only when the kernel has something to say (no thread, no timer). Linux only;
:func:`available` tells callers when to fall back.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import struct
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC

_HEADER = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len (then len bytes of name)
_READ_SIZE = 64 * 1024
"""Room for ~4,000 events per read; more just means another read in the same wake-up."""


@dataclass(frozen=True, slots=True)
class WatchEvent:
    wd: int
    mask: int
    name: str
    """Name of the entry inside a watched directory ('' for events on the watched path itself)."""


@cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def available() -> bool:
    """True if this platform's libc has inotify."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return hasattr(_libc(), "inotify_init1")
    except OSError:
        return False


class Inotify:
    """One inotify instance: an fd, watches on it, and a decoder for what it reads. Close it when done."""

    def __init__(self) -> None:
        fd = int(_libc().inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC))
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_init1: {os.strerror(err)}")
        self._fd: int | None = fd

    def fileno(self) -> int:
        if self._fd is None:
            raise ValueError("inotify instance is closed")
        return self._fd

    def add_watch(self, path: Path, mask: int) -> int:
        """Watch ``path``; returns the watch descriptor. Raises OSError (e.g. ENOENT) like the syscall."""
        wd = int(_libc().inotify_add_watch(self.fileno(), os.fsencode(path), ctypes.c_uint32(mask)))
        if wd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_add_watch: {os.strerror(err)}", str(path))
        return wd

    def read(self) -> list[WatchEvent]:
        """Everything queued now (non-blocking; empty if nothing)."""
        out: list[WatchEvent] = []
        while True:
            try:
                buf = os.read(self.fileno(), _READ_SIZE)
            except BlockingIOError:
                return out
            if not buf:
                return out
            offset = 0
            while offset + _HEADER.size <= len(buf):
                wd, mask, _cookie, length = _HEADER.unpack_from(buf, offset)
                start = offset + _HEADER.size
                name = buf[start : start + length].split(b"\0", 1)[0]
                out.append(WatchEvent(wd, mask, os.fsdecode(name)))
                offset = start + length

    def close(self) -> None:
        """Close the fd (which drops every watch on it). Idempotent."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)
