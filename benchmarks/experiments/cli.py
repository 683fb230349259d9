"""Entry points: ``snnrm bench``, ``python -m benchmarks.experiments`` and the ``experiments`` entry of
``python -m benchmarks`` all end up in :func:`execute`."""

from __future__ import annotations

import argparse
import gzip
import hashlib
import math
import os
import pickle
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks.experiments.config import DEFAULT, FULL, ExperimentConfig
from benchmarks.experiments.plots import make_plots
from benchmarks.experiments.report import RESULTS_DIR, SNNRM, headline_lines, write_all
from benchmarks.experiments.suite import SuiteResult, default_workers, policy_names, run_suite, scenario_names

NOTES = (
    "Every policy sees the same workload, the same faults on the same job and stage (chosen from the "
    "seed, never from a placement), the same simulator noise and the same telemetry: every frame with 5% noise, "
    "read 0.1 s late, every 0.1 s (the daemon's sample period). snnrm is the daemon's own NodeReallocator with its "
    "default settings (a pass on each telemetry frame, health dwell 0.5 s, stage dwell 2 s or 0.1 s (two readings) "
    "for a full queue, cooldown 60 s per job, per stage for a failed core or a saturated queue, margin 20%), not "
    "tuned for these experiments. The reactive baseline reads the same device health and acts on a 0.5 s tick (a "
    "descheduler's default interval is minutes). Every move "
    "is charged: the stage stops while its weights load (cores x 937,500 synapses x 1 B / 1 GB/s, assumed), and a "
    "rescheduled pod also restarts (6 s). A move of a stage that was not degraded in truth is a false move.",
)


def config_for(
    *,
    full: bool = False,
    seeds: int | None = None,
    duration: float | None = None,
    scenarios: Sequence[str] = (),
    policies: Sequence[str] = (),
) -> ExperimentConfig:
    """The default (or ``--full``) set with the command line's overrides."""
    cfg = FULL if full else DEFAULT
    changes: dict[str, object] = {}
    if seeds is not None:
        if seeds < 1:
            raise ValueError("--seeds must be >= 1")
        changes["seeds"] = tuple(range(seeds))
    if duration is not None:
        if not 0 < duration <= 86_400:  # False for NaN too
            raise ValueError(f"--duration must be a number of simulated seconds in (0, 86400], got {duration}")
        changes["duration"] = float(duration)
    if scenarios:
        changes["scenarios"] = tuple(scenarios)
    if policies:
        changes["policies"] = tuple(policies)
    if changes:
        changes["name"] = f"{cfg.name} (custom)"
    out = cfg.with_(**changes) if changes else cfg
    scenario_names(out)  # ValueError naming the unknown ones
    policy_names(out)
    return out


def _summary(suite: SuiteResult) -> list[str]:
    pols = suite.policies
    width = max(len(p) for p in pols) + 1
    out = [
        "SLO-violation time, % of job-time (mean over seeds):",
        f"{'scenario':<18}" + "".join(f"{p:>{width}}" for p in pols),
    ]
    for sc in suite.scenarios:
        cells = []
        for p in pols:
            e = suite.estimate(sc, p, "slo_violation_pct")
            cells.append(f"{e.mean:>{width}.2f}" if e.n else f"{'n/a':>{width}}")
        out.append(f"{sc:<18}" + "".join(cells))
    return out


def cache_path(out: Path) -> Path:
    """Where the last suite written to ``out`` is kept (outside the repository: it holds every sample)."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "snnrm-bench"
    return base / f"{hashlib.sha256(str(out.resolve()).encode()).hexdigest()[:16]}.pkl.gz"


def _quoted_set(out: Path) -> Path | None:
    """The set whose headlines ``out``'s results.md quotes: the default set quotes the longer ``--full`` one."""
    return RESULTS_DIR / "full" if out.resolve() == RESULTS_DIR.resolve() else None


def rerender(out: Path, *, plots: bool = True, readme: bool = False) -> int:
    """Rewrite the tables, plots (and README section) of ``out`` from its cached suite, without running anything."""
    path = cache_path(out)
    try:
        with gzip.open(path, "rb") as f:
            suite = pickle.load(f)
    except OSError:
        print(f"no cached results for {out} ({path}): run the experiments first")
        return 1
    if not isinstance(suite, SuiteResult):
        print(f"{path} does not hold experiment results")
        return 1
    items = write_all(
        suite, out, plots=make_plots if plots else None, readme=readme, notes=NOTES, quote=_quoted_set(out)
    )
    for line in headline_lines(items):
        print(f"  {line}")
    return 0


def execute(
    cfg: ExperimentConfig,
    *,
    out: Path | None = None,
    workers: int | None = None,
    plots: bool = True,
    readme: bool | None = None,
) -> int:
    """Run the set, write the results, print the summary and the headline targets; 0 on success."""
    out = out or (RESULTS_DIR if cfg.name == "default" else RESULTS_DIR / cfg.name.split()[0])
    complete = not cfg.scenarios and not cfg.policies
    if readme is None:
        readme = complete and out == RESULTS_DIR
    n_cells = len(cfg.seeds) * len(scenario_names(cfg)) * len(policy_names(cfg))
    print(
        f"experiments ({cfg.name}): {n_cells} runs of {cfg.duration:.0f} simulated s, seeds "
        f"{list(cfg.seeds)}, {workers or default_workers()} processes -> {out}",
        flush=True,
    )
    t0 = time.perf_counter()
    suite = run_suite(cfg, workers=workers, progress=lambda s: print(s, flush=True))
    cache = cache_path(out)  # first: a report that fails can be rewritten with --rerender, without running again
    cache.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(cache, "wb", compresslevel=3) as f:
        pickle.dump(suite, f, protocol=pickle.HIGHEST_PROTOCOL)
    items = write_all(
        suite, out, plots=make_plots if plots else None, readme=readme, notes=NOTES, quote=_quoted_set(out)
    )
    print("\n".join(_summary(suite)))
    if SNNRM in suite.policies:
        print("\nheadline targets (from the issue / hardware reference; targets, not promises):")
        for line in headline_lines(items):
            print(f"  {line}")
    wall = time.perf_counter() - t0
    sim_s = len(suite.runs) * cfg.duration
    print(
        f"\n{len(suite.runs)} runs, {sim_s:.0f} simulated s in {wall:.0f} s wall "
        f"({sim_s / wall if wall > 0 else math.nan:.0f}x real time over {suite.workers} processes); "
        f"results in {out}{' and README.md' if readme else ''}"
    )
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.experiments", description=__doc__)
    p.add_argument("--full", action="store_true", help="20 seeds, 180 s runs (default: 10 seeds, 60 s)")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds (0..N-1)")
    p.add_argument("--duration", type=float, default=None, help="simulated seconds per run")
    p.add_argument("--scenarios", default="", help="comma-separated subset of scenarios")
    p.add_argument("--policies", default="", help="comma-separated subset of policies")
    p.add_argument("--workers", type=int, default=None, help="processes (default: min(2, CPUs))")
    p.add_argument("--out", type=Path, default=None, help="output directory (default: benchmarks/results)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument(
        "--rerender",
        action="store_true",
        help="rewrite the tables and plots in --out from the last run's cached samples (runs nothing)",
    )
    p.add_argument(
        "--readme",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="rewrite README.md's Experiments section (default: for a complete default-set run)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    if argv and argv[0] == "sensitivity":  # the assumed-parameter sweep has its own options
        from benchmarks.experiments import sensitivity

        return sensitivity.main(argv[1:])
    if argv and argv[0] == "ablations":  # each seed claim switched off on its own
        from benchmarks.experiments import ablations

        return ablations.main(argv[1:])
    p = parser()
    a = p.parse_args(argv)
    if a.rerender:
        out = a.out or (RESULTS_DIR / "full" if a.full else RESULTS_DIR)
        return rerender(out, plots=not a.no_plots, readme=bool(a.readme))
    try:
        cfg = config_for(
            full=a.full,
            seeds=a.seeds,
            duration=a.duration,
            scenarios=[s for s in a.scenarios.split(",") if s],
            policies=[s for s in a.policies.split(",") if s],
        )
    except ValueError as e:
        p.error(str(e))
    return execute(cfg, out=a.out, workers=a.workers, plots=not a.no_plots, readme=a.readme)
