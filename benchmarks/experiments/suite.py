"""Run every (scenario, policy, seed) cell of a config, in parallel processes, and summarise them.

Each run is independent and deterministic, so the results do not depend on how the cells are spread over
processes. The memory of the decision code is measured in separate runs (``combined`` scenario, first seed, one per
policy) because ``tracemalloc`` slows everything it watches and would distort the CPU figures of the main runs.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field

from benchmarks.experiments import provenance
from benchmarks.experiments.config import ExperimentConfig
from benchmarks.experiments.metrics import Estimate, mean_ci
from benchmarks.experiments.policies import DEFAULT_POLICIES, POLICIES
from benchmarks.experiments.runner import RunResult, run_one
from benchmarks.experiments.scenarios import SCENARIOS

Cell = tuple[str, str]
"""(scenario, policy)"""


def scenario_names(cfg: ExperimentConfig) -> list[str]:
    names = list(cfg.scenarios) or list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise ValueError(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    return names


def policy_names(cfg: ExperimentConfig) -> list[str]:
    names = list(cfg.policies) or list(DEFAULT_POLICIES)
    unknown = [n for n in names if n not in POLICIES]
    if unknown:
        raise ValueError(f"unknown policy(ies) {', '.join(unknown)}; choose from {', '.join(POLICIES)}")
    return names


@dataclass(slots=True, eq=False)
class SuiteResult:
    cfg: ExperimentConfig
    runs: list[RunResult]
    memory_kib: dict[str, float]
    """Decision-code memory per policy (state + largest transient peak), from the tracemalloc runs."""
    wall: float
    workers: int
    provenance: dict[str, str] = field(default_factory=dict)
    """When the runs finished and from what code (:func:`benchmarks.experiments.provenance.now`)."""

    def cell(self, scenario: str, policy: str) -> list[RunResult]:
        return [r for r in self.runs if r.scenario == scenario and r.policy == policy]

    def values(self, scenario: str, policy: str, metric: str) -> list[float]:
        """Per-seed values of a metric, in seed order (NaN where a run lacks it)."""
        by_seed = {r.seed: r.metrics.get(metric, float("nan")) for r in self.cell(scenario, policy)}
        return [by_seed.get(s, float("nan")) for s in self.cfg.seeds]

    def estimate(self, scenario: str, policy: str, metric: str) -> Estimate:
        return mean_ci(self.values(scenario, policy, metric))

    @property
    def scenarios(self) -> list[str]:
        return scenario_names(self.cfg)

    @property
    def policies(self) -> list[str]:
        return policy_names(self.cfg)


def _task(args: tuple[ExperimentConfig, str, str, int, bool]) -> RunResult:
    cfg, scenario, policy, seed, trace = args
    return run_one(cfg, scenario, policy, seed, trace_memory=trace)


def default_workers() -> int:
    """Two processes at most: the project's machines have two cores and are shared."""
    return max(1, min(2, os.cpu_count() or 1))


def run_suite(
    cfg: ExperimentConfig,
    *,
    workers: int | None = None,
    progress: Callable[[str], None] | None = None,
    measure_memory: bool = True,
) -> SuiteResult:
    """Run every cell of ``cfg`` (plus the memory runs) and return the results in a fixed order."""
    code = provenance.versions()  # the code as the runs start (a commit made while they run is not theirs)
    scenarios, policies = scenario_names(cfg), policy_names(cfg)
    tasks: list[tuple[ExperimentConfig, str, str, int, bool]] = [
        (cfg, sc, po, seed, False) for sc in scenarios for po in policies for seed in cfg.seeds
    ]
    mem_scenario = "combined" if "combined" in scenarios else scenarios[-1]
    if measure_memory:
        tasks += [(cfg, mem_scenario, po, cfg.seeds[0], True) for po in policies]
    n_workers = workers or default_workers()
    t0 = time.perf_counter()
    out: list[RunResult] = []
    memory: dict[str, float] = {}
    say = progress or (lambda _: None)

    def collect(r: RunResult, trace: bool) -> None:
        if trace:
            memory[r.policy] = r.metrics["decision_mem_kib"]
        else:
            out.append(r)

    done = 0
    step = max(1, len(tasks) // 10)
    if n_workers <= 1:
        for task in tasks:
            collect(_task(task), task[4])
            done += 1
            if done % step == 0 or done == len(tasks):
                say(f"  {done}/{len(tasks)} runs, {time.perf_counter() - t0:.0f} s")
    else:
        ctx = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
        with ProcessPoolExecutor(max_workers=n_workers, mp_context=ctx) as pool:
            futures: dict[Future[RunResult], bool] = {pool.submit(_task, t): t[4] for t in tasks}
            for fut in as_completed(futures):
                collect(fut.result(), futures[fut])
                done += 1
                if done % step == 0 or done == len(tasks):
                    say(f"  {done}/{len(tasks)} runs, {time.perf_counter() - t0:.0f} s")
    order_s = {n: i for i, n in enumerate(scenarios)}
    order_p = {n: i for i, n in enumerate(policies)}
    out.sort(key=lambda r: (order_s[r.scenario], order_p[r.policy], r.seed))
    made = {**provenance.now(), **code}
    return SuiteResult(cfg, out, memory, time.perf_counter() - t0, n_workers, made)


def fault_scenarios(names: Sequence[str]) -> list[str]:
    return [n for n in names if SCENARIOS[n].faults]
