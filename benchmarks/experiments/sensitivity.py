"""Sensitivity of the headline outcomes to the assumed model parameters (docs/hardware-model.md).

Each parameter the hardware model *assumes* and that can decide an outcome is varied around its preset value,
one at a time, with everything else held at the default: the event-queue capacity, the chip-to-chip hop latency,
the per-core service rate, the telemetry period, the overflow behaviour (drop vs backpressure), and how far a hot
spot reaches (the daemon's reallocator avoids one router hop around saturated cores; a wider real region is not
something it can see). For every
variant the same scenarios, policies and seeds run through :func:`benchmarks.experiments.suite.run_suite`, and the
outcomes that carry the claims (victim p99 time per timestep, SLO-violation time, dropped events, energy per
timestep) are printed as a table, written as CSV and plotted (one panel per parameter and outcome).

    python -m benchmarks.experiments sensitivity [--seeds 2] [--duration 30] [--scenarios hot-spot] ...

Spec parameters are applied by writing a copy of the preset with the one value changed (``load_preset`` reads a
YAML path as well as a name), so the runner, the daemon's code and the policies see an ordinary machine.
"""

from __future__ import annotations

import argparse
import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from benchmarks.experiments.config import DEFAULT, ExperimentConfig
from benchmarks.experiments.report import RESULTS_DIR
from benchmarks.experiments.suite import SuiteResult, policy_names, run_suite, scenario_names
from sim_hw.spec import PRESET_DIR


@dataclass(frozen=True, slots=True)
class Parameter:
    """One assumed parameter and the values it takes (as factors of the preset value, or as literal values)."""

    name: str
    field: str
    """A preset field (``core_queue_capacity`` ...) or ``cfg.<field>`` of the experiment config."""
    values: tuple[float | str, ...]
    factors: bool
    """``values`` multiply the default (True) or replace it (False)."""
    why: str


PARAMETERS: dict[str, Parameter] = {
    p.name: p
    for p in (
        Parameter("queue", "core_queue_capacity", (0.25, 1.0, 4.0), True, "assumed FIFO depth (4,096 on Loihi 2)"),
        Parameter("inter-chip", "inter_chip_hop_latency", (0.2, 1.0, 5.0), True, "assumed SerDes hop (100 ns)"),
        Parameter("service", "core_service_rate", (0.5, 1.0, 2.0), True, "derived with an assumed fan-in"),
        Parameter("telemetry", "cfg.sample_period", (0.5, 1.0, 2.0), True, "daemon sample period (0.1 s)"),
        Parameter("overflow", "overflow", ("drop", "backpressure"), False, "router behaviour on a full queue"),
        Parameter("hot-radius", "cfg.hot_radius", (1, 2, 3), False, "hot region's radius in hops (daemon avoids 1)"),
    )
}

OUTCOMES: dict[str, str] = {
    "victim_step_p99_ms": "victim p99 time per timestep (ms)",
    "slo_violation_pct": "SLO-violation time (% of job-time)",
    "dropped_pct": "dropped events (%)",
    "energy_uj_per_step": "energy per job timestep (uJ)",
}
"""The outcomes the headline claims rest on: metric name -> axis label."""


@dataclass(frozen=True, slots=True)
class Point:
    parameter: str
    value: float | str
    label: str
    suite: SuiteResult


def _variant(cfg: ExperimentConfig, p: Parameter, value: float | str, tmp: Path) -> tuple[ExperimentConfig, str]:
    """The config for one value of ``p``, and its label."""
    if p.field.startswith("cfg."):
        key = p.field[4:]
        base = getattr(cfg, key)
        new = base * float(value) if p.factors else value
        return cfg.with_(**{key: new}), f"{key}={new:g}" if isinstance(new, float) else f"{key}={new}"
    path = PRESET_DIR / f"{cfg.preset}.yaml" if "/" not in cfg.preset else Path(cfg.preset)
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if p.factors:
        data[p.field] = float(data[p.field]) * float(value)
        label = f"{p.field}={data[p.field]:g}"
    else:
        data[p.field] = value
        label = f"{p.field}={value}"
    out = tmp / f"{cfg.preset.replace('/', '_')}-{p.name}-{value}.yaml"
    out.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return cfg.with_(preset=str(out)), label


def sweep(
    cfg: ExperimentConfig, parameters: Sequence[str], *, workers: int | None = None, verbose: bool = True
) -> list[Point]:
    """Run ``cfg`` once per value of each parameter (one at a time, the rest at their defaults)."""
    points: list[Point] = []
    with tempfile.TemporaryDirectory(prefix="snnrm-sensitivity-") as d:
        tmp = Path(d)
        for name in parameters:
            p = PARAMETERS[name]
            for value in p.values:
                variant, label = _variant(cfg, p, value, tmp)
                if verbose:
                    print(f"{name}: {label}", flush=True)
                suite = run_suite(variant, workers=workers, measure_memory=False)
                points.append(Point(name, value, label, suite))
    return points


def table(points: Sequence[Point]) -> list[str]:
    """One row per (parameter value, scenario, policy): mean over seeds of each outcome."""
    head = ["parameter", "value", "scenario", "policy", *OUTCOMES]
    rows = [",".join(head)]
    for pt in points:
        for sc in pt.suite.scenarios:
            for po in pt.suite.policies:
                cells = [pt.parameter, pt.label, sc, po]
                for m in OUTCOMES:
                    e = pt.suite.estimate(sc, po, m)
                    cells.append(f"{e.mean:.4g}" if e.n else "nan")
                rows.append(",".join(cells))
    return rows


def plot(points: Sequence[Point], out: Path) -> bool:
    """One panel per (outcome, parameter): the outcome against the parameter's value, a line per policy."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[bench]'): no plot written")
        return False
    params = list(dict.fromkeys(pt.parameter for pt in points))
    if not params:
        return False
    first = points[0].suite
    scenario = first.scenarios[-1]
    fig, axes = plt.subplots(
        len(OUTCOMES), len(params), figsize=(3.2 * len(params), 2.4 * len(OUTCOMES)), squeeze=False
    )
    for j, name in enumerate(params):
        pts = [pt for pt in points if pt.parameter == name]
        xs = list(range(len(pts)))
        for i, (metric, label) in enumerate(OUTCOMES.items()):
            ax = axes[i][j]
            for po in first.policies:
                ys = [pt.suite.estimate(scenario, po, metric).mean for pt in pts]
                ax.plot(xs, ys, marker="o", label=po)
            ax.set_xticks(xs, [str(pt.value) for pt in pts], fontsize=7)
            if i == len(OUTCOMES) - 1:
                ax.set_xlabel(f"{name} ({'x default' if PARAMETERS[name].factors else 'mode'})", fontsize=8)
            if j == 0:
                ax.set_ylabel(label, fontsize=7)
            ax.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=6)
    fig.suptitle(f"Sensitivity to assumed parameters, scenario {scenario} (mean over seeds)", fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return True


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.experiments sensitivity", description=__doc__)
    p.add_argument("--parameters", default=",".join(PARAMETERS), help="comma-separated subset of parameters")
    p.add_argument("--seeds", type=int, default=2, help="seeds 0..N-1 per variant (default 2)")
    p.add_argument("--duration", type=float, default=30.0, help="simulated seconds per run (default 30)")
    p.add_argument("--scenarios", default="hot-spot", help="comma-separated scenarios (default hot-spot)")
    p.add_argument("--policies", default="static,snnrm", help="comma-separated policies (default static,snnrm)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: min(2, CPUs))")
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "sensitivity", help="output directory")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plot")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the sweep, print the table, write ``sensitivity.csv`` (and ``sensitivity.png``) into ``--out``."""
    p = parser()
    a = p.parse_args(argv)
    names = [s for s in a.parameters.split(",") if s]
    unknown = [n for n in names if n not in PARAMETERS]
    if unknown:
        p.error(f"unknown parameters {', '.join(unknown)}; known: {', '.join(PARAMETERS)}")
    if a.seeds < 1 or not (math.isfinite(a.duration) and a.duration > 0):
        p.error("--seeds must be >= 1 and --duration > 0")
    cfg = DEFAULT.with_(
        name="sensitivity",
        seeds=tuple(range(a.seeds)),
        duration=float(a.duration),
        scenarios=tuple(s for s in a.scenarios.split(",") if s),
        policies=tuple(s for s in a.policies.split(",") if s),
    )
    try:
        scenario_names(cfg)
        policy_names(cfg)
    except ValueError as e:
        p.error(str(e))
    points = sweep(cfg, names, workers=a.workers)
    rows = table(points)
    print("\n".join(rows))
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "sensitivity.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    if not a.no_plots and plot(points, a.out / "sensitivity.png"):
        print(f"plot: {a.out / 'sensitivity.png'}")
    print(f"table: {a.out / 'sensitivity.csv'}")
    return 0
