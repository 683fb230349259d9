"""Pure decisions of the DRA driver: which devices a node publishes, with which attributes and taints, in which
ResourceSlices, and what to write to the apiserver to get there.

Devices (``resource.k8s.io/v1``, one pool per node, named after the node):

* **core groups** (``chip0-g5``): the cores behind one router (a router domain, or a tile of ``WxH`` routers),
  the asynchronous unit a split-SNN stage runs on;
* **chips** (``chip0``): a whole chip as a *partitionable* device. Each chip has a counter set (``chip0``:
  ``cores``) in the pool; a group consumes its cores from it and the chip consumes all of them, so the scheduler
  never hands out a chip together with one of its groups (KEP-4815). Groups are disjoint and each is allocated
  at most once, so one aggregate counter is exact for these two levels;
* **event throughput** (``chip0-ev``): a chip's event throughput as *consumable capacity* (KEP-5075):
  ``allowMultipleAllocations`` and a ``keps`` capacity with a ``requestPolicy``, shared by many claims.

Attributes are what SNN workloads select on (CEL) and align (``matchAttribute``): ``chip``, board position,
``chipPair`` (chips ``2k`` and ``2k+1`` of a board row are neighbours, so matching it keeps stages on one chip
or two adjacent ones), mesh coordinates, ``routerDomain``, NUMA node, model/generation, and measured headroom
(``headroomPct``, ``kepsHeadroom``) in coarse buckets with hysteresis so that noise never rewrites slices.

Health becomes device taints (KEP-5055) from the same per-core health state machine as the device plugin's
``Healthy``/``Unhealthy`` (so the same dwell and hysteresis): a device with any core that is not Healthy gets
``snnrm.io/unhealthy``; ``NoExecute`` when a core hard-failed (work there is broken), else ``NoSchedule``.

Slices respect the API limits (≤64 devices when counters or taints are used, ≤8 counter sets per slice, devices
and counters in separate slices) and the pool generation follows the rules of the upstream ResourceSlice
controller (k8s.io/dynamic-resource-allocation/resourceslice): it is bumped whenever more than one slice must be
written or a slice is added, and every slice of the pool is rewritten with it.

Everything here takes data and returns data (JSON-ready dicts); :mod:`snnrm.dra` does the I/O.

The package splits these by concern: :mod:`.names` (driver, kinds, limits), :mod:`.layout` (settings and the
static device layout), :mod:`.conditions` (health, taints, headroom), :mod:`.slices` (ResourceSlice bodies),
:mod:`.pool` (reconciling the pool), :mod:`.features` (probing optional fields) and :mod:`.claims` (prepared
claims and CDI). Everything public is re-exported here.
"""

from __future__ import annotations

from snnrm.core.dra.claims import (
    AllocatedDevice,
    ClaimError,
    allocated_devices,
    claim_cdi_device,
    claim_cdi_spec,
    tolerates,
)
from snnrm.core.dra.conditions import (
    DeviceConditions,
    DraSnapshot,
    DraState,
    LevelTracker,
    device_conditions,
    health_message,
    reason_label,
)
from snnrm.core.dra.features import detect_features, probe_slice
from snnrm.core.dra.layout import DraFeatures, DraLayout, HardwareInfo, HeadroomSettings, parse_tile
from snnrm.core.dra.names import (
    CHIP,
    CLAIM_CDI_KIND,
    CORES,
    DRIVER,
    EFFECTS,
    GROUP,
    KEPS,
    MAX_COUNTER_SETS,
    MAX_DEVICES,
    MAX_DEVICES_ADVANCED,
    NO_EXECUTE,
    NO_SCHEDULE,
    REASON_LABELS,
    SLICE_NAME_MAX,
    TAINT_KEY,
    THROUGHPUT,
)
from snnrm.core.dra.pool import PoolPlan, comparable_spec, plan_pool
from snnrm.core.dra.slices import (
    SliceBuilder,
    SliceSettings,
    build_slices,
    counter_sets,
    device_body,
    quantity,
    slice_name,
)

__all__ = [
    "CHIP",
    "CLAIM_CDI_KIND",
    "CORES",
    "DRIVER",
    "EFFECTS",
    "GROUP",
    "KEPS",
    "MAX_COUNTER_SETS",
    "MAX_DEVICES",
    "MAX_DEVICES_ADVANCED",
    "NO_EXECUTE",
    "NO_SCHEDULE",
    "REASON_LABELS",
    "SLICE_NAME_MAX",
    "TAINT_KEY",
    "THROUGHPUT",
    "AllocatedDevice",
    "ClaimError",
    "DeviceConditions",
    "DraFeatures",
    "DraLayout",
    "DraSnapshot",
    "DraState",
    "HardwareInfo",
    "HeadroomSettings",
    "LevelTracker",
    "PoolPlan",
    "SliceBuilder",
    "SliceSettings",
    "allocated_devices",
    "build_slices",
    "claim_cdi_device",
    "claim_cdi_spec",
    "comparable_spec",
    "counter_sets",
    "detect_features",
    "device_body",
    "device_conditions",
    "health_message",
    "parse_tile",
    "plan_pool",
    "probe_slice",
    "quantity",
    "reason_label",
    "slice_name",
    "tolerates",
]
