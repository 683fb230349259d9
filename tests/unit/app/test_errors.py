"""One exception tree: every API client's error is an ApiError under SnnrmError with the one retry rule, and the
adapters' classes stay distinct (an ``except`` in one layer does not catch another's failures)."""

from __future__ import annotations

import pytest

from snnrm.cluster.kube import KubeApiError, KubeConfigError
from snnrm.core.errors import ApiError, CredentialsError, SnnrmError
from snnrm.dra.kube import DraApiError
from snnrm.kube.api import ConflictError, GoneError, KubeError, error_for
from snnrm.kube.api import KubeConfigError as ApiConfigError

CLIENT_ERRORS = (KubeError, KubeApiError, DraApiError)


@pytest.mark.parametrize("cls", CLIENT_ERRORS)
@pytest.mark.parametrize(
    ("status", "retryable"),
    [(0, True), (400, False), (403, False), (404, False), (409, True), (410, False), (422, False), (429, True),
     (500, True), (503, True)],
)  # fmt: skip
def test_every_client_error_shares_the_retry_rule(cls: type[ApiError], status: int, retryable: bool) -> None:
    e = cls(status, "boom", method="GET", path="/api/v1/nodes")
    assert isinstance(e, ApiError)
    assert isinstance(e, SnnrmError)
    assert e.retryable is retryable
    assert str(e) == f"GET /api/v1/nodes -> {status or 'no answer'}: boom"


def test_credentials_errors_share_a_root() -> None:
    for cls in (ApiConfigError, KubeConfigError):
        assert issubclass(cls, CredentialsError)
        assert issubclass(cls, SnnrmError)


def test_the_adapters_errors_stay_distinct() -> None:
    # A KubeError handler must not swallow the DRA client's failure, nor the hooks' client's.
    assert not issubclass(DraApiError, KubeError)
    assert not issubclass(KubeApiError, KubeError)
    assert not issubclass(KubeError, (DraApiError, KubeApiError))
    assert isinstance(error_for(409, "x"), ConflictError)
    assert isinstance(error_for(410, "x"), GoneError)
    assert error_for(409, "x").retryable
