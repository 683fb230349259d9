"""The native gang API (``scheduling.k8s.io`` Workload/PodGroup, KEP-4671), detected at run time.

Where the apiserver serves it, the planner also creates a PodGroup per job with ``minCount`` = the number of
stages, so kube-scheduler's GangScheduling plugin holds the stage pods back until all of them can be placed.
Pods join a PodGroup only through a field set at creation (``spec.schedulingGroup.podGroupName`` in v1alpha2,
``spec.workloadRef`` in v1alpha1), which a controller cannot add later; so the manifest (or the chart's mutating
webhook) names the group ``snnrm-<job>``, and our scheduling gate stays in place as well: the gate gives our
planner the whole job before any member binds, the native group makes the scheduler refuse a partial one.

Shapes follow the v1alpha1 (1.35) and v1alpha2 (1.36) APIs described in the KEP; on clusters that do not serve
the group (the default until it leaves alpha), :func:`detect` returns None and the gate is the mechanism.
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog

from snnrm.core.types import JSON
from snnrm.kube.api import ClusterApi, ConflictError, KubeError, Resource

log = structlog.get_logger(__name__)

GROUP = "scheduling.k8s.io"
PREFERRED = ("v1", "v1beta1", "v1alpha2", "v1alpha1")


@dataclass(frozen=True, slots=True)
class NativeGang:
    version: str
    resource: Resource
    """``podgroups`` where served (v1alpha2 and later), else ``workloads`` (v1alpha1)."""


def group_name(job: str) -> str:
    return f"snnrm-{job}"[:63]


async def detect(api: ClusterApi) -> NativeGang | None:
    """The newest served version that has PodGroups (or Workloads); None when the API is not served."""
    try:
        served = await api.served_versions(GROUP)
    except KubeError as e:
        log.warning("native_gang_discovery_failed", error=str(e))
        return None
    for version in PREFERRED:
        plurals = served.get(version, [])
        if "podgroups" in plurals:
            return NativeGang(version, Resource(GROUP, version, "podgroups"))
        if "workloads" in plurals:
            return NativeGang(version, Resource(GROUP, version, "workloads"))
    return None


def group_body(gang: NativeGang, namespace: str, job: str, min_count: int) -> JSON:
    name = group_name(job)
    meta = {"name": name, "namespace": namespace, "labels": {"snnrm.io/job": job}}
    api_version = f"{GROUP}/{gang.version}"
    if gang.resource.plural == "podgroups":
        spec: JSON = {"schedulingPolicy": {"gang": {"minCount": min_count}}}
        return {"apiVersion": api_version, "kind": "PodGroup", "metadata": meta, "spec": spec}
    spec = {"podGroups": [{"name": "stages", "policy": {"gang": {"minCount": min_count}}}]}
    return {"apiVersion": api_version, "kind": "Workload", "metadata": meta, "spec": spec}


async def ensure_group(api: ClusterApi, gang: NativeGang, namespace: str, job: str, min_count: int) -> bool:
    """Create the job's group if it does not exist; True if it exists afterwards. Never raises."""
    try:
        await api.create(gang.resource, group_body(gang, namespace, job, min_count), namespace=namespace)
    except ConflictError:
        return True
    except KubeError as e:
        log.warning("native_gang_group_failed", job=job, error=str(e))
        return False
    log.info("native_gang_group_created", job=job, kind=gang.resource.plural, min_count=min_count)
    return True
