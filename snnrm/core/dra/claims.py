"""Prepared claims: the devices a ResourceClaim allocates on this node, tolerations and the claim's CDI spec."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from snnrm.core.devices import CDI_VERSION
from snnrm.core.dra.names import CLAIM_CDI_KIND
from snnrm.core.types import JSON


class ClaimError(ValueError):
    """A ResourceClaim cannot be prepared on this node; the message says why (it goes back to the kubelet)."""


@dataclass(frozen=True, slots=True)
class AllocatedDevice:
    """One allocation result of ours in a ResourceClaim."""

    request: str
    pool: str
    device: str
    share_id: str | None = None
    consumed: tuple[tuple[str, str], ...] = ()
    tolerations: tuple[JSON, ...] = ()


def allocated_devices(claim: Mapping[str, Any], *, driver: str, uid: str) -> list[AllocatedDevice]:
    """Our devices in a claim's ``status.allocation`` (raises :class:`ClaimError` if it cannot be prepared)."""
    meta = claim.get("metadata", {})
    if meta.get("uid") != uid:
        raise ClaimError(
            f"ResourceClaim {meta.get('namespace')}/{meta.get('name')} has UID {meta.get('uid')!r}, "
            f"the kubelet asked for {uid!r} (deleted and recreated?)"
        )
    allocation = claim.get("status", {}).get("allocation")
    if not allocation:
        raise ClaimError(f"ResourceClaim {meta.get('namespace')}/{meta.get('name')} is not allocated")
    out = []
    for r in allocation.get("devices", {}).get("results") or []:
        if r.get("driver") != driver:
            continue
        out.append(
            AllocatedDevice(
                request=str(r.get("request", "")),
                pool=str(r.get("pool", "")),
                device=str(r.get("device", "")),
                share_id=r.get("shareID") or None,
                consumed=tuple(sorted((str(k), str(v)) for k, v in (r.get("consumedCapacity") or {}).items())),
                tolerations=tuple(r.get("tolerations") or ()),
            )
        )
    return out


def tolerates(tolerations: Iterable[Mapping[str, Any]], *, key: str, value: str, effect: str) -> bool:
    """Whether a device request's tolerations tolerate a taint (core/v1 toleration semantics, no time limit)."""
    for t in tolerations:
        if t.get("effect") not in (None, "", effect):
            continue
        if t.get("key") not in (None, "", key):
            continue
        if not t.get("key") and t.get("operator") != "Exists":
            continue
        if t.get("operator", "Equal") == "Exists" or t.get("value", "") == value:
            return True
    return False


def _env_name(text: str) -> str:
    return re.sub(r"[^A-Z0-9_]", "_", text.upper())


def claim_cdi_device(uid: str, device: AllocatedDevice) -> str:
    """CDI device name inside a claim's spec: ``<claim uid>-<device>[-<share id>]`` (alphanumeric at both ends)."""
    name = f"{uid}-{device.device}"
    return f"{name}-{device.share_id}" if device.share_id else name


def claim_cdi_spec(uid: str, devices: Sequence[tuple[AllocatedDevice, Sequence[str]]]) -> JSON:
    """The CDI spec of one prepared claim: a device per allocation result whose edits tell the container which
    cores (or how much shared throughput) it got. Env names are per device, so claims never conflict."""
    out = []
    for dev, cores in devices:
        key = _env_name(dev.device if not dev.share_id else f"{dev.device}_{dev.share_id[:8]}")
        consumed = ",".join(f"{k.rsplit('/', 1)[-1]}={v}" for k, v in dev.consumed)
        value = consumed or ",".join(cores)
        out.append(
            {
                "name": claim_cdi_device(uid, dev),
                "containerEdits": {"env": [f"SNNRM_DRA_{key}={value}", f"SNNRM_DRA_CLAIM_{key}={uid}"]},
            }
        )
    return {"cdiVersion": CDI_VERSION, "kind": CLAIM_CDI_KIND, "devices": out}
