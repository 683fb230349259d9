"""Fixtures of the real-node tier: ``node`` (session; brings the node up with scripts/cluster.sh) and ``ns``.

``scripts/cluster.sh up`` (``make cluster``) brings the node up; the session fixture runs it, and takes the node
down again at the end unless it was already up when the session started (then it is left as it was). Needs root;
without it the tier skips, or fails under ``SNNRM_E2E_REQUIRE=1`` (what ``make test`` sets).
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from snnrm.testing.real_node import SCRIPT, Node, cluster_running
from snnrm.testing.tools import missing


@pytest.fixture(scope="session")
def node() -> Iterator[Node]:
    if os.geteuid() != 0:
        missing("the real-node tier needs root (a kubelet and containerd run here): run `make test` as root")
    was_up = cluster_running()
    try:
        # Always run `up`: it is idempotent, and rebuilds and reinstalls the image when the sources changed. A
        # failing `up` is taken down too: what it had started (etcd, the apiserver on its port) made every later
        # run fail to start its own.
        subprocess.run(["bash", str(SCRIPT), "up"], check=True, timeout=2400)
        yield Node()
    finally:
        if not was_up:
            subprocess.run(["bash", str(SCRIPT), "down"], check=False, timeout=600)


@pytest.fixture
def ns(node: Node) -> Iterator[str]:
    """A namespace of the test's own, deleted (with its pods) afterwards."""
    name = f"node-e2e-{uuid.uuid4().hex[:6]}"
    node.kubectl("create", "namespace", name)
    try:
        yield name
    finally:
        node.kubectl("delete", "namespace", name, "--wait=true", "--timeout=120s", check=False)
