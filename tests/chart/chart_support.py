"""Helpers of the Helm chart tests: where helm/kubeconform/promtool and the schemas are, and rendering the chart.

Paths come from the env files the build scripts write for this checkout (``$SNNRM_TOOLS_CACHE/checkouts/<id>.env``,
``.observability.env`` via :func:`snnrm.testing.tools.tool_env`, and ``.chart.env`` from
scripts/build-chart-tools.sh); a ``SNNRM_*`` variable in the environment wins.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from snnrm.testing.tools import REPO, require_tool, tool_env

CHART = REPO / "charts" / "snnrm"
ALL_FEATURES = CHART / "ci" / "all-features-values.yaml"
SCHEMA_TEMPLATE = "{{ .Group }}-{{ .ResourceKind }}-{{ .ResourceAPIVersion }}.json"
OPERATOR_API = "monitoring.coreos.com/v1"


def chart_env() -> dict[str, str]:
    """The tool paths of this checkout (build, observability and chart env files; SNNRM_* variables win)."""
    return tool_env()


def need(var: str, what: str, script: str) -> Path:
    """The path in ``var``, or skip (fail under SNNRM_E2E_REQUIRE=1, as `make test` sets) saying how to build it."""
    return require_tool(var, what, script)


@dataclass(frozen=True)
class Helm:
    """The real helm binary (built from helm.sh/helm/v3 by scripts/build-tools.sh)."""

    path: Path

    def run(
        self, *args: str, check: bool = True, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        # HELM_* dirs in a throwaway place: no user config or repository cache leaks in or out.
        base = Path(os.environ.get("TMPDIR", "/tmp")) / "snnrm-chart-tests-helm"
        full_env = {
            **os.environ,
            "HELM_CONFIG_HOME": str(base / "config"),
            "HELM_CACHE_HOME": str(base / "cache"),
            "HELM_DATA_HOME": str(base / "data"),
            **(env or {}),
        }
        r = subprocess.run([str(self.path), *args], capture_output=True, text=True, env=full_env, timeout=300)
        if check and r.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} exited {r.returncode}:\n{r.stdout}\n{r.stderr}")
        return r

    def template(
        self,
        *values: Path,
        set_: tuple[str, ...] = (),
        api_versions: tuple[str, ...] = (),
        release: str = "snnrm",
        namespace: str = "snnrm",
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        args = ["template", release, str(CHART), "--namespace", namespace, "--kube-version", "1.37.2"]
        for v in values:
            args += ["--values", str(v)]
        for s in set_:
            args += ["--set", s]
        for a in api_versions:
            args += ["--api-versions", a]
        return self.run(*args, check=check)

    def render(self, *values: Path, **kw: Any) -> list[dict[str, Any]]:
        """Rendered manifests (test hooks included), as dicts."""
        return docs(self.template(*values, **kw).stdout)


def docs(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def by_kind(manifests: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [m for m in manifests if m["kind"] == kind]


def one(manifests: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [m for m in by_kind(manifests, kind) if name is None or m["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {[m['metadata']['name'] for m in found]}"
    return found[0]
