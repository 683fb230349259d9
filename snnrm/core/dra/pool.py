"""Reconciling a node's pool: which slices to delete, update and create (the upstream controller's generation rules)."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from snnrm.core.dra.slices import slice_name
from snnrm.core.types import JSON


def _strip_time(devices: Iterable[JSON]) -> list[JSON]:
    out = []
    for d in devices:
        if "taints" in d:
            d = {**d, "taints": [{k: v for k, v in t.items() if k != "timeAdded"} for t in d["taints"]]}
        out.append(d)
    return out


def comparable_spec(spec: Mapping[str, Any]) -> JSON:
    """The parts of a slice spec we own, in a form where sent and read-back specs compare equal."""
    out: JSON = {k: spec[k] for k in ("driver", "nodeName", "pool") if k in spec}
    if spec.get("devices"):
        out["devices"] = _strip_time(spec["devices"])
    if spec.get("sharedCounters"):
        out["sharedCounters"] = list(spec["sharedCounters"])
    for k in ("nodeSelector", "allNodes", "perDeviceNodeSelection"):
        if spec.get(k):
            out[k] = spec[k]
    return out


def _keep_time_added(desired: list[JSON], current: list[JSON]) -> list[JSON]:
    """Carry ``timeAdded`` of taints that are still there (same key, value, effect), as upstream does."""
    seen = {
        (d["name"], t.get("key"), t.get("value"), t.get("effect")): t["timeAdded"]
        for d in current
        for t in d.get("taints", ())
        if t.get("timeAdded")
    }
    out = []
    for d in desired:
        if "taints" in d:
            taints = []
            for t in d["taints"]:
                key = (d["name"], t.get("key"), t.get("value"), t.get("effect"))
                taints.append({**t, "timeAdded": seen[key]} if key in seen else t)
            d = {**d, "taints": taints}
        out.append(d)
    return out


@dataclass(frozen=True, slots=True)
class PoolPlan:
    """API writes that take the pool from what exists to what is desired, in the order to apply them."""

    generation: int
    deletes: tuple[tuple[str, str], ...]
    """(name, resourceVersion) of obsolete slices."""
    updates: tuple[JSON, ...]
    """Full objects (with ``metadata.resourceVersion``) to PUT."""
    creates: tuple[JSON, ...]

    @property
    def empty(self) -> bool:
        return not (self.deletes or self.updates or self.creates)


def plan_pool(
    existing: Sequence[Mapping[str, Any]],
    desired: Sequence[JSON],
    *,
    driver: str,
    node: str,
    pool: str,
    last_generation: int = 0,
    owner: JSON | None = None,
    unchanged: Collection[int] = (),
) -> PoolPlan:
    """Plan the writes for one pool, with the upstream ResourceSlice controller's generation rules, relaxed for
    in-place updates (see :func:`_moves`).

    ``existing`` are the slices the apiserver has for (node, driver); ``desired`` the specs of
    :func:`build_slices`; ``last_generation`` the highest generation this process wrote, so that a pool whose
    slices were wiped (the kubelet does that) comes back with a higher generation than any consumer saw.
    Slices of a lower generation than the highest, or whose names are not the desired ones, are obsolete.
    ``unchanged`` lists desired indices the caller knows equal what is stored (it wrote exactly that object and
    the stored resourceVersion is still the one it got back), so they are not compared again.
    """
    names = [slice_name(node, driver, i) for i in range(len(desired))]
    index = {n: i for i, n in enumerate(names)}
    top = max((int(s.get("spec", {}).get("pool", {}).get("generation", 0)) for s in existing), default=0)
    matched: dict[int, Mapping[str, Any]] = {}
    obsolete: list[Mapping[str, Any]] = []
    for s in existing:
        spec = s.get("spec", {})
        i = index.get(s.get("metadata", {}).get("name", ""), -1)
        if int(spec.get("pool", {}).get("generation", 0)) < top or i < 0 or i in matched:
            obsolete.append(s)
        else:
            matched[i] = s

    def spec_for(i: int, generation: int) -> JSON:
        return {
            "driver": driver,
            "nodeName": node,
            "pool": {"name": pool, "generation": generation, "resourceSliceCount": len(desired)},
            **desired[i],
        }

    changed = {
        i
        for i, s in matched.items()
        if i not in unchanged and comparable_spec(s.get("spec", {})) != comparable_spec(spec_for(i, top))
    }
    new = [i for i in range(len(desired)) if i not in matched]
    if last_generation > top:
        generation, bumped = last_generation + 1, True
    elif not new and (len(changed) <= 1 or not _moves(matched, desired, changed)):
        generation, bumped = top, False
    else:
        generation, bumped = top + 1, True
    generation = max(generation, 1)
    bumped = bumped or (generation != top and bool(matched))

    def obj(i: int, current: Mapping[str, Any] | None) -> JSON:
        spec = spec_for(i, generation)
        meta: JSON = {"name": names[i]}
        if owner is not None:
            meta["ownerReferences"] = [owner]
        if current is not None:
            meta["resourceVersion"] = current.get("metadata", {}).get("resourceVersion", "")
            if "devices" in spec:
                spec["devices"] = _keep_time_added(spec["devices"], current.get("spec", {}).get("devices") or [])
        return {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceSlice", "metadata": meta, "spec": spec}

    return PoolPlan(
        generation=generation,
        deletes=tuple(
            (str(s.get("metadata", {}).get("name", "")), str(s.get("metadata", {}).get("resourceVersion", "")))
            for s in obsolete
        ),
        updates=tuple(obj(i, s) for i, s in sorted(matched.items()) if bumped or i in changed),
        creates=tuple(obj(i, None) for i in new),
    )


def _moves(matched: Mapping[int, Mapping[str, Any]], desired: Sequence[JSON], changed: set[int]) -> bool:
    """Whether the changed slices move a device or a counter set from one slice to another.

    The upstream controller bumps the generation whenever two or more slices change, so that no consumer combines
    an old slice with a new one. Combining is only harmful when something moves (a consumer would see a device or
    counter set twice, or not at all); in-place changes of devices that stay in their slice (taints, headroom,
    a withheld device) are safe to see in any mix. Keeping the generation for those matters at scale: a bump
    rewrites every slice of the pool (276 at 16k cores) and leaves the pool incomplete, so unallocatable, until
    the last write lands.
    """

    def names(spec: Mapping[str, Any]) -> set[str]:
        return {str(d.get("name")) for d in spec.get("devices") or ()} | {
            f"counters:{c.get('name')}" for c in spec.get("sharedCounters") or ()
        }

    before = {i: names(s.get("spec", {})) for i, s in matched.items()}
    for i in changed:
        added = names(desired[i]) - before[i]
        if any(added & before[j] for j in before if j != i):
            return True
    return False
