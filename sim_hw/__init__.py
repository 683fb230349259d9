"""sim_hw: a vectorised simulator of many-core neuromorphic chips on a mesh network-on-chip.

It stands in for real Loihi-, SpiNNaker- or Akida-class hardware so that snnrm's daemon and its experiments run
anywhere: per-core event queues, XY-routed spike traffic between the stages of split SNN jobs, and schedulable,
reversible faults. It never imports snnrm; it shares snnrm's index conventions instead (see :mod:`sim_hw.mesh`).
"""

from sim_hw import networks
from sim_hw.faults import (
    FAULT_KINDS,
    ChipFailure,
    CoreFailure,
    Fault,
    FaultRequest,
    HotSpot,
    LinkCongestion,
    LinkFailure,
    QueueSaturation,
    TelemetryGlitch,
    fault_from_dict,
    fault_kind,
    index_field,
)
from sim_hw.mesh import Mesh
from sim_hw.networks import Job, Stage
from sim_hw.simulator import Counters, HardFaultCallback, Simulator, StageMetrics, step_time
from sim_hw.spec import MachineSpec, factorise, load_preset, preset_names

__all__ = [
    "FAULT_KINDS",
    "ChipFailure",
    "CoreFailure",
    "Counters",
    "Fault",
    "FaultRequest",
    "HardFaultCallback",
    "HotSpot",
    "Job",
    "LinkCongestion",
    "LinkFailure",
    "MachineSpec",
    "Mesh",
    "QueueSaturation",
    "Simulator",
    "Stage",
    "StageMetrics",
    "TelemetryGlitch",
    "factorise",
    "fault_from_dict",
    "fault_kind",
    "index_field",
    "load_preset",
    "networks",
    "preset_names",
    "step_time",
]
