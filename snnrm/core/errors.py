"""The root of snnrm's own exceptions, and the Kubernetes API error with the one retry rule.

The one Kubernetes client (:mod:`snnrm.kube`) translates every failure at its boundary into ``KubeError`` (a
subclass of :class:`ApiError`, with ``NotFoundError``, ``ConflictError``, ``GoneError`` and ``TooManyRequestsError``
below it) and missing credentials into ``KubeConfigError`` (a :class:`CredentialsError`); the message format and
which statuses are worth retrying live here once. ``except SnnrmError`` catches anything snnrm raised on purpose.
"""

from __future__ import annotations


class SnnrmError(Exception):
    """Base of every exception snnrm defines."""


class CredentialsError(SnnrmError):
    """No usable cluster credentials (kubeconfig unreadable or incomplete, not in a cluster)."""


class ApiError(SnnrmError):
    """A Kubernetes API call failed. ``status`` is the HTTP status, 0 when no answer came (network, timeout);
    ``reason`` the ``Status`` reason when the apiserver gave one."""

    def __init__(self, status: int, message: str, *, method: str = "", path: str = "", reason: str = "") -> None:
        super().__init__(f"{method} {path} -> {status or 'no answer'}: {message}".strip())
        self.status = status
        self.message = message
        self.reason = reason

    @property
    def retryable(self) -> bool:
        """Network errors, conflicts, throttling and server errors may pass on retry; other 4xx will not."""
        return is_retryable(self.status)


def is_retryable(status: int) -> bool:
    """The retry rule of every API client: no answer (0), 409, 429 or 5xx."""
    return status in (0, 409, 429) or status >= 500
