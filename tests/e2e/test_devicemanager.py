"""``snnrm run`` against the upstream kubelet device manager (k8s.io/kubernetes/pkg/kubelet/cm/devicemanager).

Nothing on the kubelet side is ours: registration, ListAndWatch, GetPreferredAllocation, Allocate, the
checkpoint and the restart behaviour are the kubelet's own code (tests/e2e/devicemanager/main.go only calls
its exported methods), so these tests also prove our hand-written ``.proto`` files are wire-compatible.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from e2e_support import EVENT_THROUGHPUT, NEURON_CORE, SIM_CHIPS, SIM_CORES, Daemon, DeviceManagerHarness

from snnrm.kubelet.wire import plugin_socket_name

pytestmark = pytest.mark.e2e

TOTAL_CORES = SIM_CHIPS * SIM_CORES
CDI_NAME = re.compile(r"^snnrm\.io/chip=chip(\d+)$")


async def registered(dm: DeviceManagerHarness) -> dict[str, Any]:
    """Wait until both resources registered with the kubelet; return the capacity snapshot."""
    await dm.wait(NEURON_CORE, "capacity", "==", TOTAL_CORES, within=30)
    return await dm.wait(EVENT_THROUGHPUT, "capacity", ">", 0, within=10)


async def agree(dm: DeviceManagerHarness, daemon: Daemon, within: float = 10) -> tuple[dict[str, Any], Any]:
    """Wait until the kubelet's capacity/allocatable equal what the daemon says it advertises."""
    deadline = time.monotonic() + within
    while True:
        snap = await dm.capacity()
        node = await daemon.get("/api/v1/node")
        kubelet = {r: (snap["capacity"].get(r), snap["allocatable"].get(r)) for r in node["resources"]}
        ours = {r: (v["total"], v["healthy"]) for r, v in node["resources"].items()}
        if kubelet == ours:
            return snap, node
        if time.monotonic() > deadline:
            pytest.fail(f"kubelet (capacity, allocatable) {kubelet} != daemon (total, healthy) {ours}")
        await asyncio.sleep(0.1)


def chip_of(device_id: str) -> str:
    return device_id.split("-", 1)[0]


async def test_capacity_and_allocatable_match_what_the_daemon_advertises(
    devicemanager: DeviceManagerHarness, daemon: Daemon
) -> None:
    await registered(devicemanager)
    snap, node = await agree(devicemanager, daemon)
    assert set(node["resources"]) == {NEURON_CORE, EVENT_THROUGHPUT}
    assert snap["capacity"][NEURON_CORE] == TOTAL_CORES == node["cores"]
    # Healthy simulated hardware: every device is allocatable.
    assert snap["allocatable"] == snap["capacity"]
    assert snap["removed"] == []


async def test_allocate_neuron_cores_returns_env_and_cdi_devices(
    devicemanager: DeviceManagerHarness, daemon: Daemon
) -> None:
    await registered(devicemanager)
    r = await devicemanager.admit((NEURON_CORE, 4))
    cores = r["devices"][NEURON_CORE]
    assert len(cores) == 4
    assert sorted(r["envs"]["SNNRM_CORES"].split(",")) == sorted(cores)
    assert r["cdi_devices"], r
    assert all(CDI_NAME.match(name) for name in r["cdi_devices"]), r["cdi_devices"]
    # The CDI devices name exactly the chips the cores are on.
    assert {f"snnrm.io/chip={chip_of(c)}" for c in cores} == set(r["cdi_devices"])
    for m in r["mounts"]:
        assert m["read_only"], m


async def test_allocate_event_throughput(devicemanager: DeviceManagerHarness, daemon: Daemon) -> None:
    await registered(devicemanager)
    r = await devicemanager.admit((EVENT_THROUGHPUT, 2))
    blocks = r["devices"][EVENT_THROUGHPUT]
    assert len(blocks) == 2
    assert r["cdi_devices"], r
    assert all(CDI_NAME.match(name) for name in r["cdi_devices"]), r["cdi_devices"]
    assert {f"snnrm.io/chip={chip_of(b)}" for b in blocks} == set(r["cdi_devices"])


async def test_no_core_is_handed_out_twice(devicemanager: DeviceManagerHarness, daemon: Daemon) -> None:
    """Fill the node through GetPreferredAllocation/Allocate; the next pod is refused until one is released."""
    await registered(devicemanager)
    per_pod = TOTAL_CORES // 4
    seen: set[str] = set()
    pods = []
    for _ in range(4):
        r = await devicemanager.admit((NEURON_CORE, per_pod))
        got = set(r["devices"][NEURON_CORE])
        assert len(got) == per_pod
        assert not got & seen, f"devices handed out twice: {sorted(got & seen)}"
        seen |= got
        pods.append(r["pod"])
    full = await devicemanager.admit((NEURON_CORE, 1), check=False)
    assert not full["ok"], full
    assert "requested number of devices unavailable" in full["error"]
    await devicemanager.cmd(f"release {pods[0]}")
    again = await devicemanager.admit((NEURON_CORE, 1))
    assert len(again["devices"][NEURON_CORE]) == 1


async def test_capacity_returns_after_kubelet_restart(devicemanager: DeviceManagerHarness, daemon: Daemon) -> None:
    """Kubelet restart: the socket dir is wiped, the daemon re-registers, allocations survive in the checkpoint."""
    before = await registered(devicemanager)
    held = await devicemanager.admit((NEURON_CORE, 4))
    r = await devicemanager.cmd("restart")
    # Right after the restart the kubelet knows the resources only from its checkpoint.
    assert r["capacity"].get(NEURON_CORE, 0) == 0
    await devicemanager.wait(NEURON_CORE, "capacity", "==", TOTAL_CORES, within=30)
    after = await devicemanager.wait(
        EVENT_THROUGHPUT, "capacity", "==", before["capacity"][EVENT_THROUGHPUT], within=30
    )
    assert after["allocatable"][NEURON_CORE] == TOTAL_CORES
    pods = {p["pod"]: p for p in (await devicemanager.cmd("pods"))["pods"]}
    assert pods[held["pod"]]["devices"] == held["devices"]
    new = await devicemanager.admit((NEURON_CORE, 4))
    assert not set(new["devices"][NEURON_CORE]) & set(held["devices"][NEURON_CORE])


async def test_core_failure_drops_allocatable(devicemanager: DeviceManagerHarness, daemon: Daemon) -> None:
    """POST /sim/faults -> the daemon marks the cores Unhealthy on ListAndWatch -> the kubelet's allocatable drops."""
    await registered(devicemanager)
    snap, _ = await agree(devicemanager, daemon)
    healthy = snap["allocatable"][NEURON_CORE]
    await daemon.post("/sim/faults", {"kind": "core_failure", "cores": [0, 1, 2, 3]})
    dropped = await devicemanager.wait(NEURON_CORE, "allocatable", "<=", healthy - 4, within=10)
    assert dropped["allocatable"][NEURON_CORE] == healthy - 4
    assert dropped["capacity"][NEURON_CORE] == TOTAL_CORES  # unhealthy devices still count in capacity
    _, node = await agree(devicemanager, daemon)
    failed = {c["id"] for c in node["unhealthy_cores"]}
    assert len(failed) == 4
    # The kubelet now refuses to hand out the failed cores: all healthy ones fit, one more does not.
    r = await devicemanager.admit((NEURON_CORE, healthy - 4))
    assert not set(r["devices"][NEURON_CORE]) & failed
    over = await devicemanager.admit((NEURON_CORE, 1), check=False)
    assert not over["ok"], over
    assert "requested number of devices unavailable" in over["error"]


async def test_daemon_restart_while_pods_hold_devices(devicemanager: DeviceManagerHarness, daemon: Daemon) -> None:
    """The daemon goes away and comes back: the kubelet keeps capacity but nothing is allocatable meanwhile, the
    plugin re-registers, and the cores a running pod holds are never handed to another pod."""
    await registered(devicemanager)
    held = await devicemanager.admit((NEURON_CORE, 4))
    held_cores = set(held["devices"][NEURON_CORE])

    await daemon.stop()
    down = await devicemanager.wait(NEURON_CORE, "allocatable", "==", 0, within=15)
    assert down["capacity"][NEURON_CORE] == TOTAL_CORES  # endpoint stopped, devices kept as unhealthy
    refused = await devicemanager.admit((NEURON_CORE, 1), check=False)
    assert not refused["ok"], refused
    assert "no healthy devices present" in refused["error"]

    await daemon.start()
    await devicemanager.wait(NEURON_CORE, "allocatable", "==", TOTAL_CORES, within=30)
    await agree(devicemanager, daemon)
    rest = await devicemanager.admit((NEURON_CORE, TOTAL_CORES - 4))
    assert not set(rest["devices"][NEURON_CORE]) & held_cores
    over = await devicemanager.admit((NEURON_CORE, 1), check=False)
    assert not over["ok"], over
    assert "requested number of devices unavailable" in over["error"]


# --- kubelet restarts of every kind (issue 16) ------------------------------------------------------------------

RESOURCES = (NEURON_CORE, EVENT_THROUGHPUT)
RESTARTS_PER_KIND = 5
REGISTRATION_REQUEST = re.compile(
    r'"Got registration request from device plugin with resource".*resourceName="([^"]+)"'
)


async def spawn_harness(binary: Path, socket_dir: Path, pods_file: Path, log: Path) -> DeviceManagerHarness:
    """A harness process keeping its pods in ``pods_file``, so the next process after a SIGKILL knows them (as a
    restarted kubelet learns its pods from the API server); devices come back from the manager's checkpoint."""
    with log.open("ab") as err:
        proc = await asyncio.create_subprocess_exec(
            str(binary),
            f"--socket-dir={socket_dir}",
            f"--pods-file={pods_file}",
            "-v=2",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=err,
        )
    h = DeviceManagerHarness(proc, socket_dir, log)
    await h.start()
    return h


async def until(predicate: Callable[[], bool], what: str, within: float = 30) -> None:
    """Wait for an observable state (the bound is for liveness, nothing asserts how long it took)."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {within}s: {what}")
        await asyncio.sleep(0.02)


def registrations_per_generation(log: Path) -> list[Counter[str]]:
    """Registration requests the kubelet received, per manager generation (harness processes in order)."""
    generations: list[Counter[str]] = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("harness: generation "):
            generations.append(Counter())
        elif m := REGISTRATION_REQUEST.search(line):
            generations[-1][m.group(1)] += 1
    return generations


async def test_every_kind_of_kubelet_restart_reregisters_once_and_keeps_allocations(
    harness_bin: Path, short_tmp: Path, tmp_path: Path
) -> None:
    """Clean stop/start, SIGKILL (a dead kubelet.sock left behind) and back-to-back restarts, 5 of each, against
    the upstream device manager: after every one both resources register again, exactly once each, both plugin
    sockets are there, and the pods' devices survive (from the kubelet's checkpoint); at the end the held devices
    are still never handed to another pod. Timings are in ``python -m benchmarks restarts``."""
    socket_dir = short_tmp / "dp"
    sockets = [socket_dir / plugin_socket_name(r) for r in RESOURCES]
    log = tmp_path / "devicemanager-harness.log"
    dm = await spawn_harness(harness_bin, socket_dir, tmp_path / "pods.json", log)
    daemon = Daemon(socket_dir, tmp_path)
    try:
        await daemon.start()
        before = await registered(dm)
        held = await dm.admit((NEURON_CORE, 4))
        held_tp = await dm.admit((EVENT_THROUGHPUT, 1))
        kinds = ("clean", "killed", "back-to-back")
        for kind in kinds:
            for _ in range(RESTARTS_PER_KIND):
                if kind == "clean":
                    await dm.cmd("stop")
                    # The plugin gives the stopped kubelet up: it stops serving and removes its sockets.
                    await until(lambda: not any(s.exists() for s in sockets), "plugin sockets removed after stop")
                    await dm.cmd("start")
                elif kind == "killed":
                    assert dm.proc.returncode is None
                    dm.proc.kill()
                    await dm.proc.wait()
                    assert (socket_dir / "kubelet.sock").exists()  # left behind, dead
                    await until(lambda: not any(s.exists() for s in sockets), "plugin sockets removed after kill")
                    dm = await spawn_harness(harness_bin, socket_dir, tmp_path / "pods.json", log)
                else:
                    await dm.cmd("restart")
                for r in RESOURCES:
                    await dm.cmd(f"registered {r} 30", within=60)
                assert all(s.exists() for s in sockets), kind
                pods = {p["pod"]: p["devices"] for p in (await dm.cmd("pods"))["pods"]}
                assert pods[held["pod"]] == held["devices"], kind
                assert pods[held_tp["pod"]] == held_tp["devices"], kind
        await dm.wait(NEURON_CORE, "allocatable", "==", TOTAL_CORES, within=30)
        after = await dm.wait(EVENT_THROUGHPUT, "capacity", "==", before["capacity"][EVENT_THROUGHPUT], within=30)
        assert after["allocatable"][NEURON_CORE] == TOTAL_CORES
        rest = await dm.admit((NEURON_CORE, TOTAL_CORES - 4))
        assert not set(rest["devices"][NEURON_CORE]) & set(held["devices"][NEURON_CORE])
        over = await dm.admit((NEURON_CORE, 1), check=False)
        assert not over["ok"], over
        # One registration request per resource per kubelet: none against a dead or stopping kubelet, no doubles.
        per_generation = registrations_per_generation(log)
        assert len(per_generation) == 1 + RESTARTS_PER_KIND * len(kinds)
        assert all(g == Counter(RESOURCES) for g in per_generation), per_generation
        # ... and none against a dead one either (the kubelet never sees those: the plugin's log does).
        assert "registration failed" not in daemon.log.read_text(errors="replace"), daemon.log_tail()
    finally:
        await dm.close()
        await daemon.stop()
