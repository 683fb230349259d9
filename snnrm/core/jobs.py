"""The split-learning job contract: how a pod says it is stage ``i`` of job ``j``, and what snnrm writes back.

A user marks each stage pod (from any workload controller) with two labels and a few annotations::

    metadata:
      labels:
        snnrm.io/job: dvs-gesture            # the job (gang) this pod is a stage of
        snnrm.io/stage: "1"                  # 0-based position in the pipeline
      annotations:
        snnrm.io/stages: "4"                 # how many stages the job has (the gang size)
        snnrm.io/spike-rate-keps: "112.1"    # spikes/s this stage sends to the next one, in KEPS (0 for the last)
        snnrm.io/input-rate-keps: "3276.8"   # optional, stage 0 only: sensor events/s into the job, in KEPS
        snnrm.io/latency-slo: "500us"        # optional: end-to-end spike latency this stage may add
        snnrm.io/live-remap: "true"          # optional: its runtime follows a rewritten allocation file
    spec:
      schedulingGates: [{name: snnrm.io/placement}]   # gang placement: wait for the planner
      containers: [{resources: {limits: {snnrm.io/neuron-core: 16}}}]

The number of cores is what the pod requests of ``snnrm.io/neuron-core``. Everything read here is untrusted:
:func:`stage_of` returns None for a pod that is not a stage and raises :class:`ContractError` (with a message
fit for a Kubernetes Event) for a pod that tries to be one but gets the contract wrong.

What snnrm writes back (annotations): the plan (:data:`PLANNED_NODE`, :data:`PLANNED_CORES`, :data:`PLAN_ID`),
the cores a stage holds now on its node (:data:`CORES`, after admission or a live remap), the node's verdict on
the stage's cores (:data:`STAGE_HEALTH`), the time of its last move (:data:`LAST_MOVE`), and the descheduler
opt-out (:data:`DESCHEDULER_PREFER_NO_EVICTION`), so a generic descheduler leaves pipelines to us.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from snnrm.core.devices import NEURON_CORE

JOB = "snnrm.io/job"
STAGE = "snnrm.io/stage"
STAGES = "snnrm.io/stages"
SPIKE_RATE = "snnrm.io/spike-rate-keps"
INPUT_RATE = "snnrm.io/input-rate-keps"
LATENCY_SLO = "snnrm.io/latency-slo"
LIVE_REMAP = "snnrm.io/live-remap"
GATE = "snnrm.io/placement"
"""The scheduling gate stage pods wait behind until the planner has reserved the whole job."""

PLANNED_NODE = "snnrm.io/planned-node"
PLANNED_CORES = "snnrm.io/planned-cores"
PLAN_ID = "snnrm.io/plan-id"
CORES = "snnrm.io/cores"
STAGE_HEALTH = "snnrm.io/stage-health"
LAST_MOVE = "snnrm.io/last-move"
DESCHEDULER_PREFER_NO_EVICTION = "descheduler.alpha.kubernetes.io/prefer-no-eviction"

MAX_STAGES = 64
"""A pipeline longer than this is a typo, not a model (the published splits have 2-8 stages)."""
MAX_KEPS = 1e9
"""Rates beyond a tera-event per second are a typo (a whole Hala Point moves ~4e8 KEPS of synaptic events)."""

_NAME = re.compile(r"^[a-z0-9A-Z]([-a-zA-Z0-9_.]{0,61}[a-zA-Z0-9])?$")
_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(ns|us|µs|ms|s)?\s*$")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, None: 1e-6}


class ContractError(ValueError):
    """A pod labelled as a stage breaks the contract; the message says which field and why."""


@dataclass(frozen=True, slots=True)
class StageHealth:
    """What a node's daemon reports about a stage it runs (:data:`STAGE_HEALTH`, JSON)."""

    state: str
    """``ok`` or ``degraded``."""
    reasons: tuple[str, ...] = ()
    since: float = 0.0
    """Unix time the degradation became active (after the node's dwell)."""
    remap: str = "none"
    """What the node did about it: ``done`` (live remap), ``unavailable`` (no better home on the node),
    ``not-opted-in`` (the runtime does not follow remaps), ``none`` (nothing to do: for a degraded stage, its
    condition is only held by hysteresis while its signals read good again, and nobody moves it)."""
    cost: float = 0.0
    """The stage's placement cost now, in the node's degraded view (KEPS x hops)."""

    @property
    def degraded(self) -> bool:
        return self.state == "degraded"

    def encode(self) -> str:
        body = {
            "state": self.state,
            "reasons": list(self.reasons),
            "since": round(self.since, 3),
            "remap": self.remap,
            "cost": round(self.cost, 3),
        }
        return json.dumps(body, separators=(",", ":"))

    @classmethod
    def decode(cls, raw: str | None) -> StageHealth | None:
        """None for anything that is not a well-formed report (a garbled annotation is no report)."""
        if not raw:
            return None
        try:
            d = json.loads(raw)
        except ValueError:
            return None
        if not isinstance(d, dict) or d.get("state") not in ("ok", "degraded"):
            return None
        reasons = d.get("reasons") or []
        try:
            since, cost = float(d.get("since") or 0.0), float(d.get("cost") or 0.0)
        except (TypeError, ValueError):
            return None
        if not (isinstance(reasons, list) and all(isinstance(r, str) for r in reasons)) or not (
            math.isfinite(since) and math.isfinite(cost)
        ):
            return None
        return cls(str(d["state"]), tuple(reasons), since, str(d.get("remap") or "none"), cost)


@dataclass(frozen=True, slots=True)
class StageRef:
    """One stage pod as the contract describes it."""

    namespace: str
    pod: str
    uid: str
    job: str
    index: int
    stages: int
    cores: int
    """``snnrm.io/neuron-core`` the pod requests."""
    out_keps: float
    in_keps: float = 0.0
    latency_slo_s: float | None = None
    live_remap: bool = False
    gated: bool = False
    """The pod still waits behind :data:`GATE`."""
    node: str | None = None
    """``spec.nodeName`` once bound."""
    planned_node: str | None = None
    planned_cores: tuple[str, ...] = ()
    cores_held: tuple[str, ...] = ()
    """What the node reports the stage holds now (:data:`CORES`)."""
    terminating: bool = False
    created: str = ""
    """``metadata.creationTimestamp`` (RFC 3339 sorts as text)."""
    health: StageHealth | None = None
    """The node's report on the stage (:data:`STAGE_HEALTH`)."""
    last_move: float | None = None
    """Unix time of the stage's last move (:data:`LAST_MOVE`)."""
    phase: str = ""

    @property
    def job_key(self) -> tuple[str, str]:
        return (self.namespace, self.job)


def _float(raw: Any, what: str, *, lo: float = 0.0, hi: float = MAX_KEPS) -> float:
    try:
        v = float(raw)
    except (TypeError, ValueError):
        raise ContractError(f"{what} must be a number, got {raw!r}") from None
    if not math.isfinite(v) or not lo <= v <= hi:
        raise ContractError(f"{what} must be within [{lo:g}, {hi:g}], got {raw!r}")
    return v


def _int(raw: Any, what: str, *, lo: int, hi: int) -> int:
    if isinstance(raw, bool):
        raise ContractError(f"{what} must be an integer, got {raw!r}")
    try:
        v = int(str(raw).strip())
    except (TypeError, ValueError):
        raise ContractError(f"{what} must be an integer, got {raw!r}") from None
    if not lo <= v <= hi:
        raise ContractError(f"{what} must be within [{lo}, {hi}], got {v}")
    return v


def parse_duration(raw: str) -> float:
    """``"500us"``, ``"2ms"``, ``"0.5s"`` (a bare number is microseconds) in seconds; ContractError otherwise."""
    m = _DURATION.match(str(raw))
    if not m:
        raise ContractError(f"{LATENCY_SLO} must look like 500us, 2ms or 0.5s, got {raw!r}")
    v = float(m.group(1)) * _UNIT_S[m.group(2)]
    if not v > 0:
        raise ContractError(f"{LATENCY_SLO} must be > 0, got {raw!r}")
    return v


QUANTITY_MAX = 2**63 - 1
"""Where :func:`quantity_int` saturates: a larger request cannot fit any node, and int64 keeps numpy exact."""
MAX_QUANTITY_CHARS = 64
"""A longer quantity is junk, not a number (Kubernetes serialises its largest in about 20 characters)."""
_QUANTITY = re.compile(r"([+-]?)([0-9]*)(?:\.([0-9]*))?(?:[eE]([+-]?[0-9]+)|(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]))?")
_DECIMAL_SI = {"n": -9, "u": -6, "m": -3, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_BINARY_SI = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}


class QuantityError(ContractError):
    """Not a whole resource quantity (a ContractError too, so a stage pod carrying one breaks the contract)."""


def _short(raw: Any) -> str:
    """``repr(raw)``, cut short: the value comes from a request and the message goes into a response and a log."""
    text = repr(raw)
    return text if len(text) <= 40 else text[:37] + "..."


def quantity_int(raw: Any) -> int:
    """A whole resource quantity in Kubernetes' syntax (``k8s.io/apimachinery`` ``resource.Quantity``): a JSON
    number or a string ``[+-]digits[.digits]`` with an exponent (``e3``, ``E3``) or a suffix (``m``, ``k``,
    ``M``, ``G``, ``T``, ``P``, ``E``, ``Ki`` .. ``Ei``), so ``"1e3"``, ``"1k"`` and ``"2000m"`` are all 1000 or 2.
    Magnitudes beyond :data:`QUANTITY_MAX` saturate there; :class:`QuantityError` if ``raw`` is not a quantity
    or not a whole number."""
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        raise QuantityError(f"not a quantity: {_short(raw)}")
    if isinstance(raw, int):
        return max(-QUANTITY_MAX, min(raw, QUANTITY_MAX))
    text = str(raw).strip()  # a JSON number is read as its text, as the apiserver does
    m = _QUANTITY.fullmatch(text) if len(text) <= MAX_QUANTITY_CHARS else None
    if m is None or not (m.group(2) or m.group(3)):
        raise QuantityError(f"not a quantity: {_short(raw)}")
    sign, whole, frac, exp, suffix = m.group(1), m.group(2), m.group(3) or "", m.group(4), m.group(5)
    # value = digits * 10**e10 * 2**e2, with digits free of leading and trailing zeros.
    digits = (whole + frac).lstrip("0")
    if not digits:
        return 0
    stripped = digits.rstrip("0")
    e10 = len(digits) - len(stripped) - len(frac)
    digits = stripped
    e2 = 0
    if exp is not None:
        e10 += int(exp)
    elif suffix in _BINARY_SI:
        e2 = _BINARY_SI[suffix]
    elif suffix:
        e10 += _DECIMAL_SI[suffix]
    n = int(digits)
    if e10 >= 0:
        # Past 10**40 it saturates anyway: never build 10**e10 for a huge exponent.
        value = QUANTITY_MAX if len(digits) + e10 > 40 else min(n * 10**e10 * 2**e2, QUANTITY_MAX)
    else:
        # n has no factor 10, so 10**-e10 divides n * 2**e2 only if 5**-e10 divides n: -e10 < 1.5 * len(digits).
        scaled = n * 2**e2
        div = 10**-e10 if -e10 <= 2 * len(digits) else 0
        if not div or scaled % div:
            raise QuantityError(f"not a whole number: {_short(raw)}")
        value = min(scaled // div, QUANTITY_MAX)
    return -value if sign == "-" else value


def device_count(raw: Any, resource: str) -> int:
    """How many devices of an extended resource a container asks for: Kubernetes takes only whole, non-negative
    counts (``null`` is 0); :class:`QuantityError` naming the resource and the value otherwise."""
    if raw is None:
        return 0
    try:
        n = quantity_int(raw)
    except QuantityError:
        raise QuantityError(f"{resource} must be a whole number of devices, got {_short(raw)}") from None
    if n < 0:
        raise QuantityError(f"{resource} must not be negative, got {_short(raw)}")
    return n


def requested(pod: Mapping[str, Any], resource: str = NEURON_CORE) -> int:
    """What a pod requests of an extended resource: the sum over app containers, or the largest init container
    if that is more (the kubelet's effective request). Limits win where both are given (they must be equal).
    At most :data:`QUANTITY_MAX`; :class:`QuantityError` for a count Kubernetes would refuse."""
    spec = pod.get("spec") or {}

    def one(c: Any) -> int:
        res = (c or {}).get("resources") or {}
        raw = (res.get("limits") or {}).get(resource, (res.get("requests") or {}).get(resource))
        return device_count(raw, resource)

    app = sum(one(c) for c in spec.get("containers") or [])
    init = max((one(c) for c in spec.get("initContainers") or []), default=0)
    return min(max(app, init), QUANTITY_MAX)


def ids_csv(raw: str | None) -> tuple[str, ...]:
    """Device IDs from a comma-separated annotation (blank entries dropped)."""
    if not raw:
        return ()
    return tuple(x.strip() for x in str(raw).split(",") if x.strip())


def stage_of(pod: Mapping[str, Any]) -> StageRef | None:
    """The stage a pod declares, None if it declares none; :class:`ContractError` if it declares one badly."""
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    job = labels.get(JOB)
    if job is None:
        return None
    ann = meta.get("annotations") or {}
    if not isinstance(job, str) or not _NAME.match(job):
        raise ContractError(f"label {JOB} must be a DNS-label-like name, got {job!r}")
    if STAGE not in labels:
        raise ContractError(f"a pod with {JOB} needs the label {STAGE} (its 0-based stage index)")
    stages = _int(ann.get(STAGES), f"annotation {STAGES}", lo=1, hi=MAX_STAGES)
    index = _int(labels.get(STAGE), f"label {STAGE}", lo=0, hi=stages - 1)
    out_keps = _float(ann.get(SPIKE_RATE, 0.0), f"annotation {SPIKE_RATE}")
    in_keps = _float(ann.get(INPUT_RATE, 0.0), f"annotation {INPUT_RATE}")
    slo = parse_duration(ann[LATENCY_SLO]) if LATENCY_SLO in ann else None
    cores = requested(pod)
    if cores < 1:
        raise ContractError(f"a stage pod must request {NEURON_CORE} (limits), it requests none")
    spec = pod.get("spec") or {}
    gates = spec.get("schedulingGates") or []
    return StageRef(
        namespace=str(meta.get("namespace") or "default"),
        pod=str(meta.get("name") or ""),
        uid=str(meta.get("uid") or ""),
        job=job,
        index=index,
        stages=stages,
        cores=cores,
        out_keps=out_keps if index + 1 < stages else 0.0,
        in_keps=in_keps,
        latency_slo_s=slo,
        live_remap=str(ann.get(LIVE_REMAP, "")).strip().lower() == "true",
        gated=any(isinstance(g, dict) and g.get("name") == GATE for g in gates),
        node=spec.get("nodeName") or None,
        planned_node=ann.get(PLANNED_NODE) or None,
        planned_cores=ids_csv(ann.get(PLANNED_CORES)),
        cores_held=ids_csv(ann.get(CORES)),
        terminating=bool(meta.get("deletionTimestamp")),
        created=str(meta.get("creationTimestamp") or ""),
        health=StageHealth.decode(ann.get(STAGE_HEALTH)),
        last_move=_maybe_float(ann.get(LAST_MOVE)),
        phase=str((pod.get("status") or {}).get("phase") or ""),
    )


def _maybe_float(raw: Any) -> float | None:
    try:
        v = float(raw)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None
