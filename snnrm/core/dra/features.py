"""Which optional DRA fields the cluster keeps (a probe slice created as a dry run, and what came back)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from snnrm.core.dra.layout import DraFeatures
from snnrm.core.dra.names import KEPS, NO_SCHEDULE, TAINT_KEY
from snnrm.core.dra.slices import slice_name
from snnrm.core.types import JSON


def probe_slice(node: str, driver: str) -> JSON:
    """A slice using every optional feature, for a dry-run create: what comes back shows what the cluster keeps."""
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceSlice",
        "metadata": {"name": slice_name(node, driver, 999)},
        "spec": {
            "driver": driver,
            "nodeName": node,
            "pool": {"name": node, "generation": 1, "resourceSliceCount": 1},
            "devices": [
                {
                    "name": "probe-partition",
                    "consumesCounters": [{"counterSet": "probe", "counters": {"cores": {"value": "1"}}}],
                    "taints": [{"key": TAINT_KEY, "value": "probe", "effect": NO_SCHEDULE}],
                },
                {
                    "name": "probe-shared",
                    "allowMultipleAllocations": True,
                    "capacity": {
                        KEPS: {
                            "value": "2",
                            "requestPolicy": {"default": "1", "validRange": {"min": "1", "step": "1"}},
                        }
                    },
                },
            ],
        },
    }


def detect_features(returned: Mapping[str, Any]) -> DraFeatures:
    """Which optional fields of :func:`probe_slice` survived the apiserver's dropping of disabled fields."""
    devices = {d.get("name"): d for d in returned.get("spec", {}).get("devices") or []}
    part = devices.get("probe-partition", {})
    shared = devices.get("probe-shared", {})
    return DraFeatures(
        partitionable=bool(part.get("consumesCounters")),
        consumable=bool(shared.get("allowMultipleAllocations"))
        and "requestPolicy" in shared.get("capacity", {}).get(KEPS, {}),
        taints=bool(part.get("taints")),
    )
