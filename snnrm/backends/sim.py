"""The ``sim`` backend: chips simulated in process by :mod:`sim_hw`, paced against the wall clock.

It is the embedded default (``make demo``, tests, benchmarks) and behaves like hardware would: frames are read
from cumulative counters, hard faults arrive as pushed events the moment the simulator applies them, and faults
can be injected through :meth:`SimBackend.inject` (the daemon's ``POST /sim/faults``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np
import structlog

import sim_hw
from snnrm.backends.base import BackendError
from snnrm.backends.base import FaultLimitError as FaultLimitError  # its old home; raised by inject()
from snnrm.core.telemetry import FaultKind, HardFault, TelemetryFrame
from snnrm.core.topology import ChipGeometry, Topology

log = structlog.get_logger(__name__)

MAX_CATCH_UP_STEPS = 200
"""If the loop falls behind (a stalled event loop, a debugger), skip ahead rather than burn CPU catching up."""


def topology_of(sim: sim_hw.Simulator) -> Topology:
    """The :class:`Topology` of a simulated machine (one NUMA node; nominal KEPS from the cores' service rate)."""
    s = sim.spec
    return Topology(
        geometry=ChipGeometry(cols=s.cols, rows=s.rows, cores_per_router=s.cores_per_router),
        chip_pos=np.asarray(sim.chip_pos, dtype=np.int64),
        chip_numa=np.zeros(sim.n_chips, dtype=np.int64),
        core_nominal_keps=np.asarray(sim.core_service_rate, dtype=np.float64) / 1e3,
        core_queue_capacity=np.asarray(sim.core_queue_capacity, dtype=np.float64),
    )


def inter_chip_weight(spec: sim_hw.MachineSpec) -> float:
    """Hops one chip-to-chip crossing costs on this machine: its inter-chip hop latency over its on-chip one.

    The one source of the weight every placement cost, summary and remap of a simulated node uses (about 18.9
    for the Loihi 2 preset); the daemon, the demo and the benchmarks all take it from here.
    """
    return float(spec.inter_chip_hop_latency) / float(spec.hop_latency)


def frame_of(sim: sim_hw.Simulator) -> TelemetryFrame:
    """A telemetry frame from the simulator's counters (telemetry glitches show up here, as on hardware)."""
    c = sim.counters()
    return TelemetryFrame(
        timestamp=float(c.time),
        queue_depth=c.queue_depth,
        events_in=c.events_in,
        events_processed=c.events_processed,
        events_dropped=c.events_dropped,
        spikes_sent=c.spikes_sent,
        spikes_delivered=c.spikes_delivered,
        link_utilization=c.link_utilization,
        core_failed=c.core_failed,
        link_failed=c.link_failed,
    )


MAX_LIVE_FAULTS = 256
"""Faults pending or active at once through :meth:`SimBackend.inject`: more is abuse, answered with 429."""
ENDED_FAULT_RETENTION = 300.0
"""Simulated seconds an ended fault stays in ``GET /sim/faults`` (with status "ended")."""


class SimBackend:
    """Hardware backend over an in-process :class:`sim_hw.Simulator`."""

    name = "sim"

    def __init__(
        self,
        *,
        preset: str = "loihi2",
        chips: int = 4,
        cores_per_chip: int | None = None,
        seed: int = 0,
        speed: float = 1.0,
        dt: float = 0.01,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        try:
            spec = sim_hw.load_preset(preset, chips=chips, cores_per_chip=cores_per_chip)
        except (KeyError, ValueError, OSError) as e:
            raise BackendError(f"cannot load simulator preset {preset!r}: {e}") from e
        self.sim = sim_hw.Simulator(spec, seed=seed, dt=dt)
        self.speed = speed
        self._clock = clock
        self._subscribers: set[asyncio.Queue[HardFault]] = set()
        self._topology: Topology | None = None
        self.faults: dict[int, dict[str, Any]] = {}
        """Faults injected through :meth:`inject` and not cleared, by id (for ``GET /sim/faults``)."""
        self.on_inject: list[Callable[[dict[str, Any]], None]] = []
        """Called with each injected fault's record (the daemon puts it on the status page's timeline)."""
        self.sim.on_hard_fault(self._on_hard_fault)

    @property
    def inter_chip_weight(self) -> float:
        """Hops a chip crossing costs on the simulated machine (:func:`inter_chip_weight` of its preset)."""
        return inter_chip_weight(self.sim.spec)

    # -- HardwareBackend -------------------------------------------------------------------------------------

    async def discover(self) -> Topology:
        """Translate the simulator's machine into a Topology and check both agree on every index."""
        if self._topology is None:
            s = self.sim
            topo = topology_of(s)
            if not (np.array_equal(topo.link_src, s.link_src) and np.array_equal(topo.link_dst, s.link_dst)):
                raise BackendError("simulator link order differs from snnrm's canonical mesh order")
            self._topology = topo
        return self._topology

    async def read_frame(self) -> TelemetryFrame:
        """Snapshot the simulator's counters (glitches injected into telemetry show up here)."""
        return frame_of(self.sim)

    async def hard_faults(self) -> AsyncIterator[HardFault]:
        """Pushed core/link failures and recoveries; each call subscribes independently."""
        q: asyncio.Queue[HardFault] = asyncio.Queue()
        self._subscribers.add(q)
        try:
            while True:
                yield await q.get()
        finally:
            self._subscribers.discard(q)

    async def run(self) -> None:
        """Advance simulated time in step with the wall clock (times ``speed``) until cancelled."""
        dt = self.sim.dt
        t0 = self._clock()
        sim0 = self.sim.time
        while True:
            target = sim0 + (self._clock() - t0) * self.speed
            steps = int((target - self.sim.time) / dt)
            if steps > MAX_CATCH_UP_STEPS:
                log.warning("sim_behind_wall_clock", skipped_steps=steps - MAX_CATCH_UP_STEPS)
                t0 += (steps - MAX_CATCH_UP_STEPS) * dt / self.speed
                steps = MAX_CATCH_UP_STEPS
            if steps > 0:
                self.sim.advance(steps)
            next_due = t0 + (self.sim.time + dt - sim0) / self.speed
            await asyncio.sleep(max(0.0, next_due - self._clock()))

    # -- simulator control -----------------------------------------------------------------------------------

    def inject(self, spec: dict[str, Any]) -> int:
        """Inject (or schedule, with ``at``/``duration``) a fault from plain JSON; ValueError on bad input,
        :class:`FaultLimitError` when ``MAX_LIVE_FAULTS`` are already pending or active.

        Accepts the HTTP API's spelling (``"core-failure"``, ``"chip": 0, "core": 3``) as well as the simulator's
        (``"core_failure"``, global ``"cores": [...]``).
        """
        request = self._normalise(spec)
        self._prune()
        if self.sim.live_faults >= MAX_LIVE_FAULTS:
            raise FaultLimitError(f"{MAX_LIVE_FAULTS} faults are pending or active; clear some first")
        fault_id = self.sim.submit(request)
        self.faults[fault_id] = {**request, "id": fault_id, "injected_at": self.sim.time}
        log.info("sim_fault_injected", id=fault_id, kind=request["kind"])
        for listener in self.on_inject:
            listener(self.faults[fault_id])
        return fault_id

    def clear(self, fault_id: int) -> None:
        """Reverse an injected fault; KeyError if there is no such fault."""
        if fault_id not in self.faults:
            raise KeyError(fault_id)
        self.sim.clear(fault_id)
        del self.faults[fault_id]
        log.info("sim_fault_cleared", id=fault_id)

    @property
    def sim_time(self) -> float:
        """Simulated seconds now."""
        return self.sim.time

    def fault_status(self, fault_id: int) -> str:
        """``pending``, ``active`` or ``ended``; KeyError for an id the simulator never issued."""
        return self.sim.fault_status(fault_id)

    def fault_list(self) -> list[dict[str, Any]]:
        """Injected faults that are pending, active, or ended within ``ENDED_FAULT_RETENTION`` simulated seconds."""
        self._prune()
        return [{**f, "status": self.sim.fault_status(fid)} for fid, f in self.faults.items()]

    def _prune(self) -> None:
        """Forget faults that ended (by their duration) longer than the retention ago, so the list stays bounded."""
        horizon = self.sim.time - ENDED_FAULT_RETENTION
        for fid in [fid for fid in self.faults if self.sim.fault_status(fid) == "ended"]:
            ended = self.sim.ended_at(fid)
            if ended is None or ended < horizon:
                del self.faults[fid]

    def _normalise(self, spec: dict[str, Any]) -> dict[str, Any]:
        """The HTTP API's spelling (``"core-failure"``, ``"chip"``, ``"core"``) in the simulator's words."""
        out = dict(spec)
        kind = out.get("kind")
        if isinstance(kind, str):
            out["kind"] = kind.replace("-", "_")
        field = sim_hw.index_field(out["kind"]) if isinstance(out.get("kind"), str) else None
        if "core" in out and "cores" in out:  # one of them would be dropped without a word
            raise ValueError("give 'core' or 'cores', not both")
        if field == "chips" and "chip" in out:  # a chip fault names its chip: "chip": 0 is "chips": [0]
            if "chips" in out:
                raise ValueError("give 'chip' or 'chips', not both")
            out["chips"] = [out.pop("chip")]
            return out
        if field != "cores":
            shorthand = sorted({"chip", "core"} & set(out))
            if shorthand and field is not None:
                raise ValueError(f"{out['kind']} takes '{field}', not {' or '.join(map(repr, shorthand))}")
            return out  # an unknown kind is named by the simulator's parser
        if "chip" in out:
            chip = out.pop("chip")
            per_chip = self.sim.spec.cores_per_chip
            if not isinstance(chip, int) or isinstance(chip, bool) or not 0 <= chip < self.sim.n_chips:
                raise ValueError(f"chip must be an integer in [0, {self.sim.n_chips}), got {chip!r}")
            local = [out.pop("core")] if "core" in out else out.pop("cores", None)
            if local is None:
                local = list(range(per_chip))  # the whole chip
            if not isinstance(local, list) or not all(
                isinstance(c, int) and not isinstance(c, bool) and 0 <= c < per_chip for c in local
            ):
                raise ValueError(f"core(s) must be integers in [0, {per_chip}) on chip {chip}, got {local!r}")
            out["cores"] = [chip * per_chip + c for c in local]
        elif "core" in out:
            out["cores"] = [out.pop("core")]
        return out

    def _on_hard_fault(self, kind: str, index: int, failed: bool, sim_time: float) -> None:
        fault = HardFault(kind=FaultKind(kind), index=int(index), failed=bool(failed), timestamp=float(sim_time))
        for q in self._subscribers:
            q.put_nowait(fault)
