"""The import-linter contracts bite: a planted violation in a copy of the tree makes `lint-imports` fail."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from snnrm.testing.tools import REPO

LINT = Path(sys.executable).with_name("lint-imports")


def _copy(tmp: Path) -> Path:
    root = tmp / "tree"
    root.mkdir()
    for name in ("snnrm", "sim_hw"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    return root


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [str(LINT), "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("snnrm/core/planted.py", "import os\n", "The pure core does no I/O"),
        ("snnrm/core/planted.py", "import pathlib\n", "The pure core does no I/O"),
        ("snnrm/core/planted.py", "import pydantic\n", "The pure core does no I/O"),
        ("snnrm/core/planted.py", "import snnrm.testing.tools\n", "The pure core does no I/O"),
        ("snnrm/http/planted.py", "import snnrm.testing.tools\n", "The product never imports the test fakes"),
        ("snnrm/kubelet/planted.py", "import snnrm.http.server\n", "Layers"),
        ("snnrm/config_hooks.py", "import snnrm.app\n", "Layers"),
        ("snnrm/http/planted.py", "import snnrm.backends.sim\n", "The HTTP layer talks to backends"),
        ("snnrm/http/planted.py", "from kubernetes_asyncio import client\n", "The HTTP layer talks to backends"),
        ("snnrm/http/planted.py", "from snnrm.kube.client import KubeAsyncApi\n", "The HTTP layer talks to backends"),
        ("snnrm/kube/planted.py", "import snnrm.dra.publisher\n", "Layers"),
        ("snnrm/kube/planted.py", "import snnrm.testing.fake_cluster\n", "The product never imports the test fakes"),
        ("snnrm/controller_app.py", "import snnrm.app\n", "Layers"),
        ("snnrm/core/planted.py", "import asyncio\n", "The pure core does no I/O"),
        ("snnrm/core/planted.py", "import subprocess\n", "The pure core does no I/O"),
        ("snnrm/core/planted.py", "import kubernetes_asyncio\n", "The pure core does no I/O"),
    ],
)
def test_a_planted_violation_breaks_the_contracts(tmp_path: Path, module: str, line: str, contract: str) -> None:
    root = _copy(tmp_path)
    clean = _lint(root)
    assert clean.returncode == 0, clean.stdout[-2000:]
    target = root / module
    target.write_text((target.read_text() if target.exists() else "") + line)  # plant, or append to a module
    broken = _lint(root)
    assert broken.returncode != 0
    assert contract in broken.stdout
    assert "BROKEN" in broken.stdout
