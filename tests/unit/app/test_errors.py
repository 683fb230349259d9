"""One exception tree: the one Kubernetes client's errors are ApiErrors under SnnrmError with the one retry rule,
and missing credentials a CredentialsError."""

from __future__ import annotations

import pytest

from snnrm.core.errors import ApiError, CredentialsError, SnnrmError
from snnrm.kube.api import (
    ConflictError,
    GoneError,
    KubeConfigError,
    KubeError,
    NotFoundError,
    TooManyRequestsError,
    error_for,
)


@pytest.mark.parametrize(
    ("status", "retryable"),
    [
        (0, True),
        (400, False),
        (403, False),
        (404, False),
        (409, True),
        (410, False),
        (422, False),
        (429, True),
        (500, True),
        (503, True),
    ],
)
def test_every_api_error_shares_the_retry_rule(status: int, retryable: bool) -> None:
    e = error_for(status, "boom", method="GET", path="/api/v1/nodes")
    assert isinstance(e, KubeError)
    assert isinstance(e, ApiError)
    assert isinstance(e, SnnrmError)
    assert e.retryable is retryable
    assert str(e) == f"GET /api/v1/nodes -> {status or 'no answer'}: boom"


def test_credentials_errors_share_a_root() -> None:
    assert issubclass(KubeConfigError, CredentialsError)
    assert issubclass(KubeConfigError, SnnrmError)
    assert not issubclass(KubeConfigError, ApiError)


def test_the_statuses_callers_act_on_have_their_own_types() -> None:
    for status, cls in ((404, NotFoundError), (409, ConflictError), (410, GoneError), (429, TooManyRequestsError)):
        e = error_for(status, "x", reason="Why")
        assert type(e) is cls
        assert e.reason == "Why"
    assert type(error_for(500, "x")) is KubeError
    assert error_for(409, "x").retryable
