"""What a user mistake raises while a process starts, found and said in one line (shared by the daemon's and the
controller's command lines)."""

from __future__ import annotations

import errno
import socket

import click


class UserError(click.ClickException):
    """A mistake the user fixes by changing a flag, a variable or a file: one line on stderr, exit code 2."""

    exit_code = 2


def find(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    """The first ``kind`` in ``exc`` or in the exception groups a TaskGroup wraps it in."""
    if isinstance(exc, kind):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = find(inner, kind)
            if found is not None:
                return found
    return None


def bind_problem(exc: BaseException, *, http: str, env: str = "SNNRM_HTTP") -> str | None:
    """One line naming ``--http`` when ``exc`` holds a failure to resolve or bind its address, else None."""
    bind = find(exc, OSError)
    if isinstance(bind, socket.gaierror):
        return f"--http {http}: cannot resolve the host ({bind.strerror}); use an IP address or a known name"
    if isinstance(bind, OSError) and bind.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES):
        why = {errno.EADDRINUSE: "address already in use", errno.EADDRNOTAVAIL: "address not available here"}
        return f"--http {http}: {why.get(bind.errno, 'permission denied')}; choose another address with --http or {env}"
    return None
