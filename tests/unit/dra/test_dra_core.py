"""The pure DRA rules: device layout, conditions and taints, headroom buckets, slices, pool plans, claims, CDI."""

from __future__ import annotations

import copy
import re
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from snnrm.core.dra import (
    CHIP,
    DRIVER,
    GROUP,
    MAX_COUNTER_SETS,
    MAX_DEVICES_ADVANCED,
    NO_EXECUTE,
    NO_SCHEDULE,
    TAINT_KEY,
    THROUGHPUT,
    ClaimError,
    DraFeatures,
    DraLayout,
    DraState,
    HardwareInfo,
    HeadroomSettings,
    LevelTracker,
    allocated_devices,
    build_slices,
    claim_cdi_device,
    claim_cdi_spec,
    comparable_spec,
    detect_features,
    device_conditions,
    parse_tile,
    plan_pool,
    probe_slice,
    quantity,
    slice_name,
    tolerates,
)
from snnrm.core.health import Health, HealthReason
from snnrm.core.topology import ChipGeometry, Topology
from snnrm.core.types import JSON

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
INFO = HardwareInfo(model="loihi2", generation=2, driver_version="0.1.0")


def topo(chips: int = 3, cols: int = 4, rows: int = 2, per_router: int = 2) -> Topology:
    return Topology.grid(
        chips=chips, geometry=ChipGeometry(cols=cols, rows=rows, cores_per_router=per_router), nominal_keps=1000.0
    )


def healthy_state(t: Topology) -> tuple[np.ndarray, np.ndarray]:
    return np.full(t.n_cores, int(Health.HEALTHY), dtype=np.int64), np.zeros(t.n_cores, dtype=np.int64)


def state_of(layout: DraLayout, *, state: np.ndarray | None = None, reasons: np.ndarray | None = None) -> DraState:
    t = layout.topology
    s = DraState(layout)
    st_, rs = healthy_state(t)
    s.update(
        core_state=st_ if state is None else state,
        core_reasons=rs if reasons is None else reasons,
        effective_keps=t.core_nominal_keps.copy(),
        healthy_blocks_per_chip=np.full(t.n_chips, 5),
        now=0.0,
    )
    return s


# --- layout ----------------------------------------------------------------------------------------------------


def test_layout_groups_are_router_domains_then_chips_then_throughput() -> None:
    t = topo()
    lay = DraLayout.build(t)
    assert lay.n_groups == 3 * 8  # 4x2 routers per chip
    assert lay.names[0] == "chip0-g0"
    assert lay.names[lay.n_groups] == "chip0"
    assert lay.names[-1] == "chip2-ev"
    assert lay.kinds.count(GROUP) == 24
    assert lay.kinds.count(CHIP) == 3
    assert lay.kinds.count(THROUGHPUT) == 3
    # Each group holds the cores of exactly one router.
    for i in range(lay.n_groups):
        cores = lay.cores_of(i)
        assert len(cores) == 2
        assert len(set(t.router[cores].tolist())) == 1
        assert int(t.router[cores[0]]) == int(lay.group_router[i])
    assert sorted(np.concatenate([lay.cores_of(i) for i in range(lay.n_groups)]).tolist()) == list(range(t.n_cores))
    assert len(lay.cores_of(lay.index_of["chip1"])) == 16
    assert all(DNS_LABEL.match(n) for n in lay.names)


def test_layout_tiles_group_several_routers() -> None:
    t = topo(chips=1, cols=5, rows=3, per_router=1)
    lay = DraLayout.build(t, tile=(2, 2))
    assert lay.n_groups == 3 * 2  # ceil(5/2) x ceil(3/2)
    assert lay.group_cores.tolist() == [4, 4, 2, 2, 2, 1]
    assert lay.group_gx.tolist() == [0, 2, 4, 0, 2, 4]
    assert lay.group_gy.tolist() == [0, 0, 0, 2, 2, 2]


def test_parse_tile() -> None:
    assert parse_tile("2x3") == (2, 3)
    assert parse_tile(" 1X1 ") == (1, 1)
    with pytest.raises(ValueError, match="tile"):
        parse_tile("0x1")
    with pytest.raises(ValueError, match="tile"):
        parse_tile("two")


# --- conditions and taints ---------------------------------------------------------------------------------------


def test_a_hard_failed_core_taints_its_group_and_chip_noexecute() -> None:
    t = topo()
    lay = DraLayout.build(t)
    state, reasons = healthy_state(t)
    core = 5  # chip0, router 2
    state[core], reasons[core] = Health.UNHEALTHY, HealthReason.FAILED
    c = device_conditions(lay, state, reasons, np.full(3, 4))
    g = int(lay.group_of_core[core])
    assert c.effect[g] == 2
    assert c.reason[g] == "failed"
    assert c.health[g] == Health.UNHEALTHY
    assert c.effect[lay.index_of["chip0"]] == 2
    assert c.effect[lay.index_of["chip1"]] == 0
    assert c.effect[lay.index_of["chip0-ev"]] == 0  # the chip still has throughput to share
    others = [i for i in range(lay.n_groups) if i != g]
    assert not c.effect[others].any()


def test_soft_degradation_and_unknown_taint_noschedule() -> None:
    t = topo()
    lay = DraLayout.build(t)
    state, reasons = healthy_state(t)
    state[0], reasons[0] = Health.UNHEALTHY, HealthReason.QUEUE_SATURATED | HealthReason.LINK_CONGESTED
    state[2], reasons[2] = Health.UNKNOWN, HealthReason.STALE
    c = device_conditions(lay, state, reasons, np.full(3, 4))
    g0, g1 = int(lay.group_of_core[0]), int(lay.group_of_core[2])
    assert (c.effect[g0], c.reason[g0], c.health[g0]) == (1, "queue-saturated", Health.UNHEALTHY)
    assert (c.effect[g1], c.reason[g1], c.health[g1]) == (1, "stale", Health.UNKNOWN)
    chip0 = lay.index_of["chip0"]
    assert c.reason[chip0] == "stale"  # stale outranks soft reasons
    assert c.health[chip0] == Health.UNHEALTHY


def test_a_healthy_core_with_leftover_reasons_is_not_tainted() -> None:
    t = topo()
    lay = DraLayout.build(t)
    state, reasons = healthy_state(t)
    # Flagged but still Healthy (inside the enter dwell): the plugin says Healthy.
    reasons[0] = HealthReason.QUEUE_SATURATED
    c = device_conditions(lay, state, reasons, np.full(3, 4))
    assert not c.effect.any()
    assert (c.health == Health.HEALTHY).all()


def test_throughput_device_tainted_when_chip_has_no_capacity_or_all_cores_failed() -> None:
    t = topo()
    lay = DraLayout.build(t)
    state, reasons = healthy_state(t)
    chip2 = np.flatnonzero(t.chip_of == 2)
    state[chip2], reasons[chip2] = Health.UNHEALTHY, HealthReason.FAILED
    c = device_conditions(lay, state, reasons, np.array([4, 0, 0]))
    assert (c.effect[lay.index_of["chip0-ev"]], c.reason[lay.index_of["chip0-ev"]]) == (0, "")
    assert (c.effect[lay.index_of["chip1-ev"]], c.reason[lay.index_of["chip1-ev"]]) == (1, "no-capacity")
    assert (c.effect[lay.index_of["chip2-ev"]], c.reason[lay.index_of["chip2-ev"]]) == (2, "failed")


def test_taints_follow_the_health_machine_dwell() -> None:
    """Taints come from HealthMachine state, so a soft condition shorter than enter_dwell never taints."""
    from snnrm.core.health import HealthMachine, HealthSettings, Observation

    t = topo(chips=1)
    lay = DraLayout.build(t)
    hm = HealthMachine(t.n_cores, HealthSettings(enter_dwell=0.5, recover_dwell=2.0))
    fill = np.zeros(t.n_cores)

    def step(now: float) -> int:
        hm.step(
            Observation(
                now=now,
                failed=np.zeros(t.n_cores, dtype=bool),
                last_valid=np.full(t.n_cores, now),
                queue_fill=fill,
                efficiency=np.ones(t.n_cores),
                router_link_utilization=np.zeros(t.n_cores),
            )
        )
        c = device_conditions(lay, hm.state, hm.reasons, np.array([4]))
        return int(c.effect[int(lay.group_of_core[0])])

    assert step(0.0) == 0
    fill[0] = 0.9
    assert step(0.1) == 0
    assert step(0.4) == 0  # still inside enter_dwell
    assert step(0.7) == 1
    fill[0] = 0.6  # between exit (0.5) and enter (0.8): still saturated
    assert step(1.5) == 1
    fill[0] = 0.1
    assert step(2.0) == 1
    assert step(3.9) == 1  # recover_dwell not over
    assert step(4.1) == 0


# --- headroom buckets -------------------------------------------------------------------------------------------


def test_level_tracker_starts_at_the_measurement_and_ignores_noise() -> None:
    lt = LevelTracker(HeadroomSettings(levels=4, slack=0.2, margin=0.5, shrink_dwell=2.0, grow_dwell=10.0))
    assert lt.update(np.array([0.99, 0.6, 0.0]), now=0.0)
    assert lt.level is not None
    assert lt.level.tolist() == [4, 2, 0]
    rng = np.random.default_rng(0)
    for k in range(1, 200):
        noise = rng.normal(0, 0.03, 3)
        assert not lt.update(np.array([0.97, 0.6, 0.02]) + noise, now=k * 0.1)
    assert lt.level.tolist() == [4, 2, 0]


def test_level_tracker_shrinks_after_dwell_and_grows_only_clear_of_the_margin() -> None:
    lt = LevelTracker(HeadroomSettings(levels=4, slack=0.2, margin=0.5, shrink_dwell=2.0, grow_dwell=10.0))
    lt.update(np.array([1.0]), now=0.0)
    assert not lt.update(np.array([0.3]), now=1.0)
    assert not lt.update(np.array([0.3]), now=2.9)
    assert lt.update(np.array([0.3]), now=3.0)
    assert lt.level is not None
    assert lt.level.tolist() == [1]
    # 0.6 would support level 2 (floor(2.4+0.2)), but growing needs 2 + margin - slack = 2.3 -> 0.575: ok after dwell
    assert not lt.update(np.array([0.6]), now=4.0)
    assert not lt.update(np.array([0.6]), now=13.9)
    assert lt.update(np.array([0.6]), now=14.0)
    assert lt.level.tolist() == [2]
    # 0.7 is not clear of the margin for level 3 (needs 0.825): stays
    for k in range(30):
        lt.update(np.array([0.7]), now=20.0 + k)
    assert lt.level.tolist() == [2]


# --- slices -----------------------------------------------------------------------------------------------------


def devices_of(slices: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for s in slices for d in s.get("devices", [])]


def test_slices_respect_api_limits_and_separate_counters_from_devices() -> None:
    t = topo(chips=10, cols=4, rows=4, per_router=1)
    lay = DraLayout.build(t)
    slices = build_slices(lay, state_of(lay).snapshot(), info=INFO, features=DraFeatures())
    counters = [s for s in slices if "sharedCounters" in s]
    assert len(counters) == 2  # 10 chips, 8 counter sets per slice
    assert all(len(s["sharedCounters"]) <= MAX_COUNTER_SETS for s in counters)
    assert all(set(s) == {"devices"} or set(s) == {"sharedCounters"} for s in slices)
    devs = devices_of(slices)
    assert len(devs) == 160 + 10 + 10
    assert all(len(s["devices"]) <= MAX_DEVICES_ADVANCED for s in slices if "devices" in s)
    assert len({d["name"] for d in devs}) == len(devs)
    for d in devs:
        assert DNS_LABEL.match(d["name"])
        assert len(d["attributes"]) + len(d["capacity"]) <= 32
        assert all(len(v.get("string", "")) <= 64 for v in d["attributes"].values())
        assert len(d.get("consumesCounters", [])) <= 2


def test_group_and_chip_devices_consume_the_chip_counter_set() -> None:
    t = topo()
    lay = DraLayout.build(t)
    devs = {
        d["name"]: d for d in devices_of(build_slices(lay, state_of(lay).snapshot(), info=INFO, features=DraFeatures()))
    }
    g = devs["chip1-g3"]
    assert g["consumesCounters"] == [{"counterSet": "chip1", "counters": {"cores": {"value": "2"}}}]
    assert devs["chip1"]["consumesCounters"] == [{"counterSet": "chip1", "counters": {"cores": {"value": "16"}}}]
    a = g["attributes"]
    assert a["type"] == {"string": GROUP}
    assert a["chip"] == {"int": 1}
    assert a["routerDomain"] == {"int": int(lay.group_router[lay.index_of["chip1-g3"]])}
    assert (a["meshX"], a["meshY"]) == ({"int": 4 + 3}, {"int": 0})  # chip1 sits right of chip0 on a 2x2 board
    assert a["model"] == {"string": "loihi2"}
    assert a["generation"] == {"int": 2}
    assert a["driverVersion"] == {"version": "0.1.0"}
    assert a["headroomPct"] == {"int": 100}
    assert a["kepsHeadroom"] == {"int": 2000}
    assert g["capacity"] == {"snnrm.io/cores": {"value": "2"}, "snnrm.io/keps": {"value": "2k"}}
    ev = devs["chip1-ev"]
    assert ev["allowMultipleAllocations"] is True
    assert ev["capacity"]["snnrm.io/keps"]["value"] == "16k"
    assert ev["capacity"]["snnrm.io/keps"]["requestPolicy"] == {
        "default": "1k",
        "validRange": {"min": "1k", "step": "1k"},
    }


def test_chip_pairs_are_adjacent_chips() -> None:
    t = Topology.grid(chips=6, geometry=ChipGeometry(cols=2, rows=2), board_cols=3)
    lay = DraLayout.build(t)
    devs = {
        d["name"]: d for d in devices_of(build_slices(lay, state_of(lay).snapshot(), info=INFO, features=DraFeatures()))
    }
    pair = {c: devs[f"chip{c}"]["attributes"]["chipPair"]["int"] for c in range(6)}
    assert pair[0] == pair[1] != pair[2]
    assert pair[3] == pair[4] != pair[5]
    assert pair[0] != pair[3]
    for c in range(6):
        for d in range(6):
            if c != d and pair[c] == pair[d]:
                assert int(np.abs(t.chip_pos[c] - t.chip_pos[d]).sum()) == 1


def test_taints_in_slices_and_withheld_devices_without_taint_support() -> None:
    t = topo()
    lay = DraLayout.build(t)
    state, reasons = healthy_state(t)
    state[5], reasons[5] = Health.UNHEALTHY, HealthReason.FAILED
    snap = state_of(lay, state=state, reasons=reasons).snapshot()
    g = lay.names[int(lay.group_of_core[5])]
    with_taints = build_slices(lay, snap, info=INFO, features=DraFeatures())
    devs = {d["name"]: d for d in devices_of(with_taints)}
    assert devs[g]["taints"] == [{"key": TAINT_KEY, "value": "failed", "effect": NO_EXECUTE}]
    assert devs["chip0"]["taints"][0]["effect"] == NO_EXECUTE
    assert "taints" not in devs["chip1"]
    without = build_slices(lay, snap, info=INFO, features=DraFeatures(taints=False))
    names = {d["name"] for d in devices_of(without)}
    assert g not in names
    assert "chip0" not in names
    # Withholding changes one slice's content, never the slice layout.
    assert len(without) == len(with_taints)
    diff = [k for k, (a, b) in enumerate(zip(with_taints, without, strict=True)) if a != b]
    assert diff == [1]  # the one device slice (after the counter slice) that holds both withheld devices


def test_features_off_drop_chips_and_throughput_devices() -> None:
    t = topo()
    lay = DraLayout.build(t)
    snap = state_of(lay).snapshot()
    plain = build_slices(
        lay, snap, info=INFO, features=DraFeatures(partitionable=False, consumable=False, taints=False)
    )
    devs = devices_of(plain)
    assert {d["attributes"]["type"]["string"] for d in devs} == {GROUP}
    assert not any("consumesCounters" in d for d in devs)
    assert not any("sharedCounters" in s for s in plain)
    assert len(plain) == 1  # 24 devices, 128 per slice without advanced features


def test_quantity_is_canonical() -> None:
    assert [quantity(n) for n in (0, 7, 1000, 1500, 256000, 2_000_000, 10**18)] == [
        "0",
        "7",
        "1k",
        "1500",
        "256k",
        "2M",
        "1E",
    ]


@settings(max_examples=40, deadline=None)
@given(
    chips=st.integers(1, 12),
    cols=st.integers(1, 6),
    rows=st.integers(1, 6),
    per_router=st.integers(1, 3),
    tile=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    bad=st.lists(st.integers(0, 10_000), max_size=20),
    feats=st.tuples(st.booleans(), st.booleans(), st.booleans()),
)
def test_every_published_device_appears_once_within_limits(
    chips: int, cols: int, rows: int, per_router: int, tile: tuple[int, int], bad: list[int], feats: tuple[bool, ...]
) -> None:
    t = topo(chips=chips, cols=cols, rows=rows, per_router=per_router)
    lay = DraLayout.build(t, tile=tile)
    state, reasons = healthy_state(t)
    for b in bad:
        state[b % t.n_cores], reasons[b % t.n_cores] = Health.UNHEALTHY, HealthReason.FAILED
    features = DraFeatures(*feats)
    slices = build_slices(lay, state_of(lay, state=state, reasons=reasons).snapshot(), info=INFO, features=features)
    devs = devices_of(slices)
    assert len({d["name"] for d in devs}) == len(devs)
    limit = MAX_DEVICES_ADVANCED if (features.partitionable or features.taints) else 128
    assert all(len(s.get("devices", [])) <= limit for s in slices)
    assert sum(len(s.get("sharedCounters", [])) for s in slices) == (chips if features.partitionable else 0)
    counters_per_set = {f"chip{c}": int(n) for c, n in enumerate(lay.chip_cores)}
    for d in devs:
        for cc in d.get("consumesCounters", []):
            assert int(cc["counters"]["cores"]["value"]) <= counters_per_set[cc["counterSet"]]
        if not features.taints:
            assert "taints" not in d


# --- pool plans -------------------------------------------------------------------------------------------------


def apply(plan: Any, store: dict[str, dict[str, Any]]) -> None:
    """Apply a plan to a dict of stored slices as an apiserver would (resourceVersion, timeAdded)."""
    for name, _ in plan.deletes:
        del store[name]
    for sent in [*plan.updates, *plan.creates]:
        obj = copy.deepcopy(sent)
        obj["metadata"]["resourceVersion"] = str(len(store) + 1000)
        for d in obj["spec"].get("devices", []):
            for t_ in d.get("taints", []):
                t_.setdefault("timeAdded", "2026-01-01T00:00:00Z")
        store[obj["metadata"]["name"]] = obj


def test_plan_creates_a_fresh_pool_at_generation_one_then_stays_quiet() -> None:
    desired: list[JSON] = [{"sharedCounters": [{"name": "chip0", "counters": {}}]}, {"devices": [{"name": "a"}]}]
    plan = plan_pool([], desired, driver=DRIVER, node="n1", pool="n1")
    assert plan.generation == 1
    assert len(plan.creates) == 2
    assert plan.creates[0]["metadata"]["name"] == "n1-snnrm.io-000"
    assert plan.creates[1]["spec"]["pool"] == {"name": "n1", "generation": 1, "resourceSliceCount": 2}
    assert plan.creates[1]["spec"]["nodeName"] == "n1"
    store: dict[str, dict[str, Any]] = {}
    apply(plan, store)
    again = plan_pool(list(store.values()), desired, driver=DRIVER, node="n1", pool="n1", last_generation=1)
    assert again.empty
    assert again.generation == 1


def test_plan_in_place_changes_keep_the_generation_moves_bump_it() -> None:
    desired: list[JSON] = [{"devices": [{"name": f"d{k}"}]} for k in range(3)]
    store: dict[str, dict[str, Any]] = {}
    apply(plan_pool([], desired, driver=DRIVER, node="n", pool="n"), store)
    one = [desired[0], {"devices": [{"name": "d1", "attributes": {"x": {"int": 1}}}]}, desired[2]]
    p1 = plan_pool(list(store.values()), one, driver=DRIVER, node="n", pool="n", last_generation=1)
    assert (p1.generation, len(p1.updates), len(p1.creates), len(p1.deletes)) == (1, 1, 0, 0)
    assert p1.updates[0]["metadata"]["resourceVersion"]
    apply(p1, store)
    # Two slices change in place (a taint here, a withheld device there): no device moves, no bump.
    two: list[JSON] = [
        {"devices": [{"name": "d0", "taints": [{"key": "k", "effect": NO_SCHEDULE}]}]},
        one[1],
        {"devices": []},
    ]
    p2 = plan_pool(list(store.values()), two, driver=DRIVER, node="n", pool="n", last_generation=1)
    assert (p2.generation, len(p2.updates)) == (1, 2)
    apply(p2, store)
    # d1 moves from slice 1 to slice 0: a consumer mixing old and new slices would see it twice, so bump and
    # rewrite every slice with the new generation.
    moved: list[JSON] = [{"devices": [{"name": "d0"}, {"name": "d1"}]}, {"devices": []}, {"devices": []}]
    p3 = plan_pool(list(store.values()), moved, driver=DRIVER, node="n", pool="n", last_generation=1)
    assert p3.generation == 2
    assert len(p3.updates) == 3
    assert all(u["spec"]["pool"]["generation"] == 2 for u in p3.updates)


def test_plan_shrinking_pool_deletes_and_bumps() -> None:
    desired: list[JSON] = [{"devices": [{"name": f"d{k}"}]} for k in range(3)]
    store: dict[str, dict[str, Any]] = {}
    apply(plan_pool([], desired, driver=DRIVER, node="n", pool="n"), store)
    p = plan_pool(list(store.values()), desired[:1], driver=DRIVER, node="n", pool="n", last_generation=1)
    # Obsolete slices are deleted first; the one remaining slice changes (its count), and, as in the upstream
    # controller, a single update does not need a new generation.
    assert {n for n, _ in p.deletes} == {"n-snnrm.io-001", "n-snnrm.io-002"}
    assert p.generation == 1
    assert len(p.updates) == 1
    assert p.updates[0]["spec"]["pool"]["resourceSliceCount"] == 1


def test_plan_obsoletes_lower_generations_and_strangers() -> None:
    def obj(name: str, gen: int) -> dict[str, Any]:
        return {
            "metadata": {"name": name, "resourceVersion": "7"},
            "spec": {
                "driver": DRIVER,
                "nodeName": "n",
                "pool": {"name": "n", "generation": gen, "resourceSliceCount": 1},
            },
        }

    existing = [obj("n-snnrm.io-000", 3), obj("n-snnrm.io-001", 2), obj("random-xyz", 3)]
    p = plan_pool(existing, [{"devices": []}], driver=DRIVER, node="n", pool="n")
    assert {n for n, _ in p.deletes} == {"n-snnrm.io-001", "random-xyz"}
    assert all(rv == "7" for _, rv in p.deletes)


def test_plan_after_a_wipe_comes_back_with_a_higher_generation() -> None:
    p = plan_pool([], [{"devices": []}], driver=DRIVER, node="n", pool="n", last_generation=5)
    assert p.generation == 6


def test_plan_keeps_taint_time_added_and_ignores_it_when_comparing() -> None:
    taint = {"key": TAINT_KEY, "value": "failed", "effect": NO_SCHEDULE}
    desired = [{"devices": [{"name": "a", "taints": [taint]}]}]
    store: dict[str, dict[str, Any]] = {}
    apply(plan_pool([], desired, driver=DRIVER, node="n", pool="n"), store)
    stored = next(iter(store.values()))
    assert stored["spec"]["devices"][0]["taints"][0]["timeAdded"]
    assert comparable_spec(stored["spec"])["devices"][0]["taints"] == [taint]
    assert plan_pool(list(store.values()), desired, driver=DRIVER, node="n", pool="n", last_generation=1).empty
    changed = [{"devices": [{"name": "a", "taints": [taint]}, {"name": "b"}]}]
    p = plan_pool(list(store.values()), changed, driver=DRIVER, node="n", pool="n", last_generation=1)
    assert p.updates[0]["spec"]["devices"][0]["taints"][0]["timeAdded"] == "2026-01-01T00:00:00Z"


def test_slice_names_are_bounded() -> None:
    long = "n" * 250
    name = slice_name(long, DRIVER, 3)
    assert len(name) <= 253
    assert name.endswith("-snnrm.io-003")
    assert slice_name(long, DRIVER, 3) == name
    assert slice_name("m" * 250, DRIVER, 3) != name


def test_detect_features_reads_what_survived() -> None:
    probe = probe_slice("n", DRIVER)
    assert detect_features(probe) == DraFeatures(True, True, True)
    stripped = {
        "spec": {"devices": [{"name": "probe-partition"}, {"name": "probe-shared", "capacity": {"snnrm.io/keps": {}}}]}
    }
    assert detect_features(stripped) == DraFeatures(False, False, False)


# --- claims and CDI ---------------------------------------------------------------------------------------------


def claim(uid: str = "u-1", **status: Any) -> dict[str, Any]:
    return {"metadata": {"namespace": "ns", "name": "c", "uid": uid}, "status": status}


def test_allocated_devices_reads_only_our_results() -> None:
    c = claim(
        allocation={
            "devices": {
                "results": [
                    {"request": "stage", "driver": DRIVER, "pool": "n", "device": "chip0-g1"},
                    {"request": "gpu", "driver": "gpu.example.com", "pool": "n", "device": "gpu0"},
                    {
                        "request": "ev",
                        "driver": DRIVER,
                        "pool": "n",
                        "device": "chip0-ev",
                        "shareID": "s-1",
                        "consumedCapacity": {"snnrm.io/keps": "5k"},
                        "tolerations": [{"key": TAINT_KEY, "operator": "Exists"}],
                    },
                ]
            }
        }
    )
    devs = allocated_devices(c, driver=DRIVER, uid="u-1")
    assert [d.device for d in devs] == ["chip0-g1", "chip0-ev"]
    assert devs[1].share_id == "s-1"
    assert devs[1].consumed == (("snnrm.io/keps", "5k"),)
    assert tolerates(devs[1].tolerations, key=TAINT_KEY, value="failed", effect=NO_EXECUTE)


def test_allocated_devices_rejects_other_uids_and_unallocated_claims() -> None:
    with pytest.raises(ClaimError, match="UID"):
        allocated_devices(claim(uid="other", allocation={}), driver=DRIVER, uid="u-1")
    with pytest.raises(ClaimError, match="not allocated"):
        allocated_devices(claim(), driver=DRIVER, uid="u-1")


@pytest.mark.parametrize(
    ("toleration", "ok"),
    [
        ({"key": TAINT_KEY, "operator": "Exists"}, True),
        ({"key": TAINT_KEY, "operator": "Equal", "value": "failed"}, True),
        ({"key": TAINT_KEY, "operator": "Equal", "value": "stale"}, False),
        ({"key": TAINT_KEY, "operator": "Exists", "effect": NO_SCHEDULE}, False),
        ({"operator": "Exists"}, True),
        ({"key": "other", "operator": "Exists"}, False),
    ],
)
def test_tolerations(toleration: dict[str, str], ok: bool) -> None:
    assert tolerates([toleration], key=TAINT_KEY, value="failed", effect=NO_EXECUTE) is ok


def test_claim_cdi_spec_has_valid_names_and_per_device_env() -> None:
    from snnrm.core.dra import AllocatedDevice

    uid = "3f2a9c1e-0000-4000-8000-000000000001"
    a = AllocatedDevice(request="s", pool="n", device="chip0-g1")
    b = AllocatedDevice(
        request="ev", pool="n", device="chip0-ev", share_id="abcd-ef", consumed=(("snnrm.io/keps", "5k"),)
    )
    spec = claim_cdi_spec(uid, [(a, ["chip0-core2", "chip0-core3"]), (b, [])])
    assert spec["kind"] == "snnrm.io/claim"
    names = [d["name"] for d in spec["devices"]]
    assert names == [claim_cdi_device(uid, a), claim_cdi_device(uid, b)]
    assert all(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*[A-Za-z0-9]", n) for n in names)
    env0 = spec["devices"][0]["containerEdits"]["env"]
    assert "SNNRM_DRA_CHIP0_G1=chip0-core2,chip0-core3" in env0
    assert spec["devices"][1]["containerEdits"]["env"][0] == "SNNRM_DRA_CHIP0_EV_ABCD_EF=keps=5k"


@settings(max_examples=30, deadline=None)
@given(
    steps=st.lists(st.lists(st.tuples(st.integers(0, 10_000), st.sampled_from([0, 1, 2])), max_size=6), max_size=6),
    feats=st.tuples(st.booleans(), st.booleans(), st.booleans()),
)
def test_incremental_builds_equal_fresh_builds(steps: list[list[tuple[int, int]]], feats: tuple[bool, ...]) -> None:
    """SliceBuilder reuses what did not change; what it returns is always what a fresh build would return."""
    from snnrm.core.dra import SliceBuilder

    t = topo(chips=5, cols=4, rows=4, per_router=1)
    lay = DraLayout.build(t)
    features = DraFeatures(*feats)
    builder = SliceBuilder(lay, info=INFO, features=features)
    state, reasons = healthy_state(t)
    s = DraState(lay)
    for k, changes in enumerate(steps):
        for core, what in changes:
            c = core % t.n_cores
            state[c] = (Health.HEALTHY, Health.UNHEALTHY, Health.UNKNOWN)[what]
            reasons[c] = (0, HealthReason.FAILED, HealthReason.STALE)[what]
        keps = t.core_nominal_keps * (1.0 if k % 2 else 0.3)
        s.update(
            core_state=state,
            core_reasons=reasons,
            effective_keps=keps,
            healthy_blocks_per_chip=np.full(5, 2),
            now=100.0 * k,
        )
        snap = s.snapshot()
        assert builder.build(snap) == build_slices(lay, snap, info=INFO, features=features)


def test_one_changed_device_rebuilds_one_slice() -> None:
    from snnrm.core.dra import SliceBuilder

    t = topo(chips=8, cols=4, rows=4, per_router=1)
    lay = DraLayout.build(t)
    builder = SliceBuilder(lay, info=INFO, features=DraFeatures())
    state, reasons = healthy_state(t)
    s = DraState(lay)
    args = {"effective_keps": t.core_nominal_keps, "healthy_blocks_per_chip": np.full(8, 2)}
    s.update(core_state=state, core_reasons=reasons, now=0.0, **args)
    first = builder.build(s.snapshot())
    state[100], reasons[100] = Health.UNHEALTHY, HealthReason.FAILED
    s.update(core_state=state, core_reasons=reasons, now=1.0, **args)
    second = builder.build(s.snapshot())
    same = [a is b for a, b in zip(first, second, strict=True)]
    assert same.count(False) == 2  # the slice of core 100's group and the slice of chip 6's device
