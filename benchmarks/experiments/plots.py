"""PNG plots of a suite: latency CDFs per policy, a timeline of faults and reallocations, mesh heat maps.

matplotlib is an optional dependency (the ``bench`` extra); without it :func:`make_plots` says so and returns.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.experiments.runner import RunResult
from benchmarks.experiments.scenarios import SCENARIOS
from benchmarks.experiments.suite import SuiteResult
from sim_hw import Simulator, load_preset
from snnrm.backends.sim import topology_of

COLORS = {
    "first-fit": "#d62728",
    "random": "#ff7f0e",
    "static": "#8c564b",
    "snnrm": "#1f77b4",
    "snnrm-no-hysteresis": "#17becf",
    "reactive": "#9467bd",
}
STYLES = {"random": ":", "static": "-.", "snnrm-no-hysteresis": "--", "reactive": (0, (1, 1))}
WIDTH = {"snnrm": 2.2}
DPI = 110


def _order(policies: list[str]) -> list[str]:
    """Draw snnrm last, so that identical curves of its ablations never hide it."""
    return [p for p in policies if p != "snnrm"] + [p for p in policies if p == "snnrm"]


def _style(p: str) -> dict[str, Any]:
    return {"color": COLORS.get(p), "ls": STYLES.get(p, "-"), "lw": WIDTH.get(p, 1.2), "label": p}


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _sparse_log_formatter(marks: tuple[float, ...] = (2.0, 5.0)) -> Any:
    """Minor log ticks labelled only at ``marks`` x 10^k (none: unlabelled), so labels never overlap."""
    from matplotlib.ticker import FuncFormatter

    def fmt(x: float, _pos: int) -> str:
        if x <= 0:
            return ""
        m = x / 10 ** math.floor(math.log10(x))
        return f"{x:g}" if any(abs(m - k) < 1e-6 for k in marks) else ""

    return FuncFormatter(fmt)


def _job_colors(n: int) -> Any:
    """A categorical colour map of ``n`` jobs without greys (grey marks board positions with no chip)."""
    from matplotlib.colors import ListedColormap

    plt = _plt()
    base = [c for k, c in enumerate(plt.get_cmap("tab20").colors) if k not in (14, 15)]
    base += list(plt.get_cmap("Set2").colors)
    return ListedColormap([base[k % len(base)] for k in range(max(n, 1))])


def available() -> bool:
    try:
        _plt()
    except ImportError:
        return False
    return True


def make_plots(suite: SuiteResult, out: Path) -> list[str]:
    """Write every plot into ``out``; returns the file names written (empty without matplotlib)."""
    if not available():
        print("matplotlib is not installed (pip install -e '.[bench]'): no plots written")
        return []
    written = []
    for name, fn in (("latency_cdf.png", latency_cdfs), ("timeline.png", timeline), ("heatmap.png", heatmap)):
        if fn(suite, out / name):
            written.append(name)
    return written


def latency_cdfs(suite: SuiteResult, path: Path) -> bool:
    """One panel per scenario: CDF of the victim's post-fault time per timestep / the 1 ms budget, one line per
    policy, pooled seeds."""
    plt = _plt()
    scs = suite.scenarios
    cols = min(4, len(scs))
    rows = math.ceil(len(scs) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.9 * rows), squeeze=False, sharey=True)
    for k, sc in enumerate(scs):
        ax = axes[k // cols][k % cols]
        for p in _order(suite.policies):
            runs = suite.cell(sc, p)
            parts = [r.victim_latency_post.astype(np.float64) / r.victim_slo for r in runs if r.victim_slo > 0]
            if not parts:
                continue
            x = np.sort(np.concatenate(parts))
            if len(x) == 0:
                continue
            y = np.arange(1, len(x) + 1) / len(x)
            ax.step(x, y, where="post", **_style(p))
        ax.axvline(1.0, color="k", ls=":", lw=0.8)
        ax.set_xscale("log")
        lo, hi = ax.get_xlim()
        if lo > 0 and math.log10(hi / lo) < 1.5:  # a narrow range: label 2x and 5x so the axis is readable
            ax.xaxis.set_minor_formatter(_sparse_log_formatter())
        else:
            ax.xaxis.set_minor_formatter(_sparse_log_formatter(()))
        ax.set_title(sc, fontsize=9)
        ax.tick_params(which="both", labelsize=7)
        ax.grid(alpha=0.3)
        if k % cols == 0:
            ax.set_ylabel("CDF", fontsize=8)
        if k // cols == rows - 1:
            ax.set_xlabel("timestep / 1 ms budget (victim, after T/3)", fontsize=8)
    for k in range(len(scs), rows * cols):
        axes[k // cols][k % cols].axis("off")
    handles, labels = _legend(axes[0][0], suite.policies)
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.suptitle("Time per SNN timestep of the victim job, relative to the 1 ms budget (dotted)", fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 0.96))
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return True


def timeline(suite: SuiteResult, path: Path) -> bool:
    """Seed 0, per fault scenario: the victim's time per timestep / 1 ms budget and lost-event share over time,
    with moves."""
    plt = _plt()
    preferred: tuple[str, ...] = ("core-failure", "hot-spot", "link-congestion", "telemetry-glitch")
    wanted = [s for s in preferred if s in suite.scenarios]
    if not wanted:
        wanted = [s for s in suite.scenarios if SCENARIOS[s].faults][:4]
    if not wanted:
        return False
    fault_t = suite.cfg.fault_time
    t_lo, t_hi = fault_t - 3.0, min(fault_t + 20.0, suite.cfg.duration)
    fig, axes = plt.subplots(len(wanted), 2, figsize=(11, 2.5 * len(wanted)), squeeze=False, sharex=True)
    for row, sc in enumerate(wanted):
        ax_l, ax_d = axes[row]
        seed = timeline_seed(suite, sc)
        for p in _order(suite.policies):
            runs = [r for r in suite.cell(sc, p) if r.seed == seed]
            if not runs:
                continue
            r = runs[0]
            win = (r.times >= t_lo) & (r.times <= t_hi)
            lat = r.victim_latency.astype(np.float64) / r.victim_slo
            lat = np.where(np.isinf(lat), np.nan, lat)
            ax_l.plot(r.times[win], lat[win], **_style(p))
            ax_d.plot(r.times[win], 100.0 * r.victim_loss[win], **_style(p))
            for m in r.moves:
                if t_lo <= m.t <= t_hi and m.victim:
                    for ax in (ax_l, ax_d):
                        ax.axvline(m.t, color=COLORS.get(p), ls="--", lw=0.9, alpha=0.8)
        victim = _victim_label(suite, sc, seed)
        for ax in (ax_l, ax_d):
            ax.axvline(fault_t, color="k", lw=1.0)
            ax.grid(alpha=0.3)
            ax.tick_params(which="both", labelsize=7)
        ax_l.axhline(1.0, color="k", ls=":", lw=0.8)
        ax_l.set_yscale("log")
        ax_l.set_ylabel("timestep / budget", fontsize=8)
        ax_d.set_ylabel("events lost, %", fontsize=8)
        ax_l.set_title(f"{sc}, seed {seed}: {victim}", fontsize=9)
        ax_d.set_title(f"{sc}, seed {seed}: lost events (fault at {fault_t:.0f} s, black)", fontsize=9)
    for ax in axes[-1]:
        ax.set_xlabel("simulated time, s", fontsize=8)
    handles, labels = _legend(axes[0][0], suite.policies)
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.suptitle(
        "A fault and its reallocation (dashed: a policy moved a victim stage); per scenario the first seed "
        "in which snnrm moved one, else the first seed",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.04, 1, 0.97))
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return True


def timeline_seed(suite: SuiteResult, scenario: str) -> int:
    """The first seed in which snnrm moved a victim stage (to show a reallocation), else the first seed."""
    for r in suite.cell(scenario, "snnrm"):
        if any(m.victim for m in r.moves):
            return r.seed
    return suite.cfg.seeds[0]


def _legend(ax: Any, policies: list[str]) -> tuple[list[Any], list[str]]:
    """Legend entries in the suite's policy order (the drawing order puts snnrm last)."""
    handles, labels = ax.get_legend_handles_labels()
    by = dict(zip(labels, handles, strict=True))
    names = [p for p in policies if p in by]
    return [by[p] for p in names], names


def _victim_label(suite: SuiteResult, scenario: str, seed: int) -> str:
    for r in suite.runs:
        if r.scenario == scenario and r.seed == seed and r.victims:
            job, stage, kind = r.victims[0]
            return f"{job}, stage {stage} ({kind})"
    return "victim"


def heatmap(suite: SuiteResult, path: Path) -> bool:
    """Which job holds each core (seed 0, core failure): first-fit and snnrm at the fault, snnrm at the end."""
    plt = _plt()
    sc = "core-failure" if "core-failure" in suite.scenarios else suite.scenarios[0]
    seed = suite.cfg.seeds[0]
    picks: list[tuple[str, RunResult, str]] = []
    for p, when in (("first-fit", "at"), ("snnrm", "at"), ("snnrm", "end")):
        runs = [r for r in suite.cell(sc, p) if r.seed == seed]
        if runs:
            picks.append((p, runs[0], when))
    if not picks:
        return False
    spec = load_preset(suite.cfg.preset, chips=suite.cfg.chips)
    topo = topology_of(Simulator(spec, seed=0))
    w, h = int(topo.gx.max()) + 1, int(topo.gy.max()) + 1
    n_jobs = max(len(r.jobs) for _, r, _ in picks)
    cmap = _job_colors(n_jobs)
    fig, axes = plt.subplots(1, len(picks), figsize=(4.6 * len(picks), 3.2), squeeze=False)
    for ax, (p, r, when) in zip(axes[0], picks, strict=True):
        owner = (r.owner_at_fault if when == "at" else r.owner_end).astype(np.float64)
        grid = np.full((h, w), np.nan)
        grid[topo.gy, topo.gx] = np.where(owner >= 0, owner, np.nan)
        holes = np.ones((h, w))
        holes[topo.gy, topo.gx] = np.nan
        ax.imshow(holes, origin="lower", cmap="Greys", vmin=0, vmax=1.6, interpolation="nearest")
        ax.imshow(grid, origin="lower", cmap=cmap, vmin=-0.5, vmax=n_jobs - 0.5, interpolation="nearest")
        if len(r.fault_cores):
            fc = r.fault_cores
            ax.scatter(topo.gx[fc], topo.gy[fc], marker="x", c="k", s=18, lw=1.0)
        g = topo.geometry
        for x in range(0, w + 1, g.cols):
            ax.axvline(x - 0.5, color="k", lw=0.6)
        for y in range(0, h + 1, g.rows):
            ax.axhline(y - 0.5, color="k", lw=0.6)
        hops = r.metrics.get("hops_per_spike", math.nan)
        label = "at the fault" if when == "at" else "at the end"
        ax.set_title(f"{p}, {label} (mean {hops:.1f} hops/spike)", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(
        f"Seed {seed}, {sc}: cores by job (colour), free cores white, no chip grey, failed cores x", fontsize=10
    )
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return True
