"""Names and API limits of the DRA driver: the driver, device kinds, capacities, taints and their reasons."""

from __future__ import annotations

from typing import Final

from snnrm.core.health import HealthReason

DRIVER: Final = "snnrm.io"
"""DRA driver name (a DNS subdomain ≤63): ``device.driver`` in CEL, unqualified attributes live in its domain."""
TAINT_KEY: Final = "snnrm.io/unhealthy"
NO_SCHEDULE: Final = "NoSchedule"
NO_EXECUTE: Final = "NoExecute"
GROUP: Final = "core-group"
CHIP: Final = "chip"
THROUGHPUT: Final = "event-throughput"
CLAIM_CDI_KIND: Final = "snnrm.io/claim"

KEPS: Final = f"{DRIVER}/keps"
"""Capacity names are fully qualified: a claim's ``capacity.requests`` key must equal the device's capacity key
exactly (the allocator does not add the driver's domain the way CEL and ``matchAttribute`` do for attributes)."""
CORES: Final = f"{DRIVER}/cores"

MAX_DEVICES: Final = 128
MAX_DEVICES_ADVANCED: Final = 64
"""A slice with any device using taints or counters holds at most 64 devices (``ResourceSliceMaxDevicesWith…``)."""
MAX_COUNTER_SETS: Final = 8
SLICE_NAME_MAX: Final = 253

_EFFECT_NONE, _EFFECT_NO_SCHEDULE, _EFFECT_NO_EXECUTE = 0, 1, 2
EFFECTS: Final = (None, NO_SCHEDULE, NO_EXECUTE)
_REASON_ORDER: Final = (
    (HealthReason.FAILED, "failed"),
    (HealthReason.STALE, "stale"),
    (HealthReason.QUEUE_SATURATED, "queue-saturated"),
    (HealthReason.LOW_EFFICIENCY, "low-efficiency"),
    (HealthReason.LINK_CONGESTED, "link-congested"),
)
REASON_LABELS: Final = ("", *(label for _, label in _REASON_ORDER), "unknown", "no-capacity")
"""Taint values by reason code (0: no taint)."""
_UNKNOWN_CODE, _NO_CAPACITY_CODE = len(_REASON_ORDER) + 1, len(_REASON_ORDER) + 2
