"""The node's timeline: bounded, repeats folded, and filled by the health transitions with their reasons (a core
lent to a live remap is "withheld", never a fault)."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from snnrm.core.devices import EVENT_THROUGHPUT, NEURON_CORE, DeviceSet
from snnrm.core.health import HealthReason
from snnrm.obs.timeline import MAX_IDS, Timeline
from snnrm.obs.transitions import WITHHELD, HealthTransitions


def _devices(resource: str, healthy: list[bool]) -> DeviceSet:
    prefix = "chip0-core" if resource == NEURON_CORE else "chip0-ev"
    n = len(healthy)
    return DeviceSet(resource, tuple(f"{prefix}{i}" for i in range(n)), np.array(healthy), np.zeros(n, dtype=np.int64))


def test_the_timeline_keeps_the_newest_entries_in_order() -> None:
    clock = [100.0]
    tl = Timeline(capacity=3, clock=lambda: clock[0])
    for i in range(5):
        clock[0] += 1
        tl.add("fault", "injected", f"fault {i}")
    body = tl.body()
    assert [e["message"] for e in body["events"]] == ["fault 2", "fault 3", "fault 4"]
    assert [e["seq"] for e in body["events"]] == [3, 4, 5]
    assert body["dropped"] == 2
    assert body["events"][0]["time"] == 103.0


def test_a_repeated_decision_is_folded_but_a_flap_is_news() -> None:
    clock = [0.0]
    tl = Timeline(clock=lambda: clock[0])
    for _ in range(4):  # the reallocator defers every half second while the job's cooldown runs
        clock[0] += 0.5
        tl.add("reallocation", "deferred", "j stage 1: queue-saturated: cooldown", job="j", stage=1, pod="p1")
        tl.add("health", "unhealthy", "1 neuron cores turned unhealthy (failed=1)", resource=NEURON_CORE)
        tl.add("health", "healthy", "1 neuron cores advertised healthy again", resource=NEURON_CORE)
    entries = tl.entries()
    deferred = [e for e in entries if e.action == "deferred"]
    assert len(deferred) == 1
    assert (deferred[0].repeats, deferred[0].time, deferred[0].last) == (4, 0.5, 2.0)
    # A core that goes down and up again is a flap each time: every transition is kept, in order.
    assert [e.action for e in entries if e.kind == "health"] == ["unhealthy", "healthy"] * 4


def test_device_ids_are_capped_but_counted() -> None:
    tl = Timeline()
    ids = [f"c{i}" for i in range(MAX_IDS + 5)]
    e = tl.add("health", "unhealthy", "many", devices=ids)
    assert len(e.devices) == MAX_IDS
    assert e.count == MAX_IDS + 5
    with pytest.raises(ValueError, match="at least one"):
        Timeline(capacity=0)


def test_health_transitions_are_recorded_with_their_reasons() -> None:
    tl = Timeline()
    reasons = np.array([0, int(HealthReason.FAILED), int(HealthReason.QUEUE_SATURATED), 0])
    withheld = np.array([False, False, False, True])
    ht = HealthTransitions(
        registry=CollectorRegistry(),
        node="n",
        core_reasons=lambda: reasons,
        core_withheld=lambda: withheld,
        timeline=tl,
    )
    ht.observe(_devices(NEURON_CORE, [True] * 4))  # the baseline records nothing
    ht.observe(_devices(EVENT_THROUGHPUT, [True] * 2))
    assert len(tl) == 0
    ht.observe(_devices(NEURON_CORE, [True, False, False, False]))
    ht.observe(_devices(EVENT_THROUGHPUT, [True, False]))
    ht.observe(_devices(NEURON_CORE, [True, True, False, False]))
    lent, down, blocks, up = tl.entries()
    assert (lent.action, lent.reasons, lent.devices) == ("withheld", (WITHHELD,), ("chip0-core3",))
    assert "withheld for a live remap" in lent.message
    assert (down.action, down.devices) == ("unhealthy", ("chip0-core1", "chip0-core2"))
    assert down.reasons == ("failed=1", "queue-saturated=1")
    assert down.message == "2 neuron cores turned unhealthy (failed=1, queue-saturated=1)"
    assert (blocks.resource, blocks.devices) == (EVENT_THROUGHPUT, ("chip0-ev1",))
    assert "measured capacity" in blocks.message
    assert (up.action, up.devices, up.message) == (
        "healthy",
        ("chip0-core1",),
        "1 neuron cores advertised healthy again",
    )


def test_a_lent_core_with_a_fault_of_its_own_is_a_fault() -> None:
    tl = Timeline()
    reasons = np.array([int(HealthReason.FAILED), 0])
    ht = HealthTransitions(
        registry=CollectorRegistry(),
        node="n",
        core_reasons=lambda: reasons,
        core_withheld=lambda: np.array([True, True]),
        timeline=tl,
    )
    ht.observe(_devices(NEURON_CORE, [True, True]))
    ht.observe(_devices(NEURON_CORE, [False, False]))
    assert [(e.action, e.devices) for e in tl.entries()] == [
        ("withheld", ("chip0-core1",)),
        ("unhealthy", ("chip0-core0",)),
    ]
