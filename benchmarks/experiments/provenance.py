"""Where and when a set of runs was made: interpreter, platform, package versions and the git commit.

Taken when the runs are made and kept with them (:class:`benchmarks.experiments.suite.SuiteResult`), so tables
rewritten later from the cache (``--rerender``) still name the code that produced the numbers.
"""

from __future__ import annotations

import platform
import subprocess
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def git_commit() -> str:
    """HEAD of the repository, marked when the tree has uncommitted changes; "unknown" without git."""
    try:
        res = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=5, check=False
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    commit = res.stdout.strip() or "unknown"
    return commit + (" (with uncommitted changes)" if dirty.stdout.strip() else "")


def versions() -> dict[str, str]:
    """Interpreter, platform, the packages that decide the numbers, and the git commit."""
    out = {"python": sys.version.split()[0], "platform": platform.platform(), "machine": platform.machine()}
    for pkg in ("snnrm", "numpy", "matplotlib", "PyYAML"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    out["git_commit"] = git_commit()
    return out


def now() -> dict[str, str]:
    """The provenance of runs finished now: their time (ISO 8601, UTC) and :func:`versions`."""
    return {"generated": datetime.now(UTC).isoformat(timespec="seconds"), **versions()}
