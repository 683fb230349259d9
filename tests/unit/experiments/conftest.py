"""The experiments live in benchmarks/ (not an installed package): make the repository root importable."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

ROOT = Path(__file__).resolve().parents[3]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture(autouse=True)
def _structlog_restored() -> Iterator[None]:
    """An experiment run quiets the daemon's logs (runner.quiet_logs, meant for its worker processes); run in this
    process it must not leave later tests (which capture log lines) with a filtering logger."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)
