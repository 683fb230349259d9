"""Where the Go-built tools live: the env files that scripts/build-tools.sh and build-observability-tools.sh write.

Each script writes ``$SNNRM_TOOLS_CACHE/checkouts/<sha256(repo path)[:12]>[.observability|.chart].env`` with lines
``export NAME=value`` (one file per checkout, so two worktrees sharing the cache never disagree). A variable set in
the process environment wins over the files, so ``SNNRM_PROMTOOL=/usr/bin/promtool pytest`` works too.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import NoReturn

REPO = Path(__file__).resolve().parents[2]
ENV_FILES = ("{checkout}.env", "{checkout}.observability.env", "{checkout}.chart.env")


def tools_cache() -> Path:
    """``$SNNRM_TOOLS_CACHE``, default ``~/.cache/snnrm-tools`` (the scripts' default too)."""
    return Path(os.environ.get("SNNRM_TOOLS_CACHE", Path.home() / ".cache" / "snnrm-tools"))


def tool_env(repo: Path = REPO) -> dict[str, str]:
    """NAME -> value from this checkout's env files, overridden by ``SNNRM_*`` process environment variables."""
    checkout = hashlib.sha256(str(repo).encode()).hexdigest()[:12]
    values: dict[str, str] = {}
    for pattern in ENV_FILES:
        envfile = tools_cache() / "checkouts" / pattern.format(checkout=checkout)
        if not envfile.is_file():
            continue
        for raw in envfile.read_text().splitlines():
            line = raw.strip()
            if line.startswith("export ") and "=" in line:
                name, _, value = line.removeprefix("export ").partition("=")
                values[name] = value
    values.update({k: v for k, v in os.environ.items() if k.startswith("SNNRM_")})
    return values


def find_tool(var: str) -> Path | None:
    """The executable named by ``var`` (e.g. ``SNNRM_PROMTOOL``), or None when it is not built."""
    value = tool_env().get(var)
    if value and os.access(value, os.X_OK):
        return Path(value)
    return None


def built_tool(var: str) -> Path:
    """The executable named by ``var`` for a benchmark (outside pytest): exit saying how to build it if missing."""
    found = find_tool(var)
    if found is None:
        raise SystemExit(f"${var} is not built: run `make tools` (scripts/build-tools.sh)")
    return found


def require_tool(var: str, what: str, script: str = "build-tools.sh") -> Path:
    """The path named by ``var`` for a test; when it is missing, skip saying how to build it, or fail when
    ``SNNRM_E2E_REQUIRE=1`` (what `make test` sets, so a missing tool never passes as a skip there).

    Paths that are directories (schema trees) count as present too.
    """
    value = tool_env().get(var)
    if not value or not (os.access(value, os.X_OK) or Path(value).is_dir()) or not Path(value).exists():
        missing(f"{what} is not built: run `make tools` (scripts/{script}); looked for ${var}")
    return Path(value)


def missing(reason: str) -> NoReturn:
    """A test cannot run here: skip with ``reason``, or fail when ``SNNRM_E2E_REQUIRE=1`` (what `make test` sets,
    so nothing a tier needs ever passes as a skip there)."""
    import pytest  # only tests call this

    if os.environ.get("SNNRM_E2E_REQUIRE") == "1":
        raise pytest.fail.Exception(reason)
    raise pytest.skip.Exception(reason, allow_module_level=True)
