"""The ``snnrm`` command line. Every flag also reads ``SNNRM_<FLAG>`` (e.g. ``SNNRM_KUBELET_DIR``)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, Literal, TypeVar

import click

from snnrm import __version__
from snnrm.cli_errors import UserError, bind_problem, find
from snnrm.config import ConfigError, load_config, parse_http_address
from snnrm.obs.logging import configure_logging


def _env(name: str) -> str:
    return "SNNRM_" + name.upper().replace("-", "_")


F = TypeVar("F", bound=Callable[..., Any])


def _opt(name: str, **kw: Any) -> Callable[[F], F]:
    """A flag that falls back to ``SNNRM_<FLAG>``."""
    option: Callable[[F], F] = click.option(f"--{name}", envvar=_env(name), show_envvar=True, **kw)
    return option


def _user_error(exc: BaseException, *, http: str, backend: str | None = None) -> UserError | None:
    """Translate what a user mistake raises while the daemon starts into one line that names the flag."""
    bound = bind_problem(exc, http=http)
    if bound is not None:
        return UserError(bound)
    from snnrm.backends.base import BackendError

    backend_error = find(exc, BackendError)
    if backend_error is not None:
        hint = "; set --sysfs-root (SNNRM_SYSFS_ROOT)" if backend == "sysfs" else ""
        return UserError(f"--backend {backend}: {backend_error}{hint}")
    config_error = find(exc, ConfigError)
    if config_error is not None:
        return UserError(str(config_error))
    return None


def _run_loop(main_coro: Callable[[], Coroutine[Any, Any, None]], *, http: str, backend: str | None = None) -> None:
    """``asyncio.run`` with user mistakes turned into one line (exit 2) instead of a traceback."""
    try:
        asyncio.run(main_coro())
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except Exception as e:  # translated when it is a user mistake, re-raised otherwise
        translated = _user_error(e, http=http, backend=backend)
        if translated is None:
            raise
        raise translated from None


def _warn_kubelet_dir(path: Path) -> None:
    """A kubelet dir that is missing or read-only is not fatal (the kubelet may create it), but say so now."""
    import os

    if not path.is_dir():
        click.echo(f"warning: --kubelet-dir {path} does not exist yet; waiting for the kubelet to create it", err=True)
    elif not os.access(path, os.W_OK | os.X_OK):
        click.echo(f"warning: --kubelet-dir {path} is not writable; plugin sockets cannot be created there", err=True)


def _install_stop(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, prog_name="snnrm")
def main() -> None:
    """snnrm: telemetry-driven resource manager for neuromorphic (SNN) hardware on Kubernetes."""


@main.command()
@_opt("config", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="YAML config file; flags win.")
@_opt("backend", type=click.Choice(["sim", "sysfs"]), default=None, help="Hardware backend [default: sim].")
@_opt(
    "kubelet-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Directory of kubelet.sock; plugin sockets go beside it [default: /var/lib/kubelet/device-plugins].",
)
@_opt("http", default=None, help="host:port for metrics, probes and the JSON API [default: 127.0.0.1:9400].")
@_opt("sim-preset", default=None, help="Simulator preset: loihi2, spinnaker2, akida [default: loihi2].")
@_opt("sim-chips", type=int, default=None, help="Simulated chips on this node [default: 4].")
@_opt("sim-cores", type=int, default=None, help="Cores per simulated chip [default: the preset's, 128 for loihi2].")
@_opt("sim-seed", type=click.IntRange(min=0), default=None, help="Simulator seed [default: 0].")
@_opt("sim-speed", type=float, default=None, help="Simulated seconds per wall second [default: 1].")
@_opt(
    "sim-fault-injection",
    type=click.Choice(["off", "loopback", "token"]),
    default=None,
    help="Who may POST/DELETE /sim/faults: nobody, this host only, or bearer-token holders "
    "($SNNRM_SIM_FAULT_TOKEN) [default: loopback].",
)
@_opt("sysfs-root", type=click.Path(path_type=Path), default=None, help="Driver tree for --backend sysfs.")
@_opt("sample-period", type=float, default=None, help="Seconds between telemetry frames [default: 0.1].")
@_opt("block-keps", type=float, default=None, help="KEPS behind one event-throughput device [default: 1000].")
@_opt("state-dir", type=click.Path(path_type=Path), default=None, help="Allocation files [default: /var/lib/snnrm].")
@_opt("cdi-dir", type=click.Path(path_type=Path), default=None, help="CDI spec directory [default: /var/run/cdi].")
@_opt("pre-start-required", type=bool, default=None, help="Ask for PreStartContainer calls [default: false].")
@_opt("log-format", type=click.Choice(["console", "json"]), default=None, help="Log rendering [default: console].")
@_opt(
    "metrics-granularity",
    type=click.Choice(["core", "group", "chip"]),
    default=None,
    help="Unit of per-core metrics: core, group (router domain) or chip [default: group].",
)
@_opt(
    "pod-resources-socket",
    type=click.Path(path_type=Path),
    default=None,
    help="Kubelet PodResources socket for pod labels [default: /var/lib/kubelet/pod-resources/kubelet.sock].",
)
@_opt(
    "dra",
    type=click.Choice(["off", "on", "only"]),
    default=None,
    help="DRA driver snnrm.io: off (device plugins only), on (DRA for cores/chips, device plugin for event "
    "throughput), only (DRA for everything) [default: off].",
)
@_opt(
    "dra-registry-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Kubelet plugin registration dir [default: /var/lib/kubelet/plugins_registry].",
)
@_opt(
    "dra-plugin-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Dir of the DRA service socket dra.sock [default: /var/lib/kubelet/plugins/snnrm.io].",
)
@_opt("dra-node-name", default=None, help="Node name for the ResourceSlice pool [default: the host name].")
@_opt(
    "kubeconfig",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Kubeconfig of every apiserver client (scaling hooks, DRA, placement) [default: in-cluster service account].",
)
@_opt(
    "dra-kubeconfig",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Deprecated alias of --kubeconfig.",
)
@_opt("dra-tile", default=None, help="Routers per DRA core-group device, WxH [default: 1x1].")
def run(config: Path | None, **flags: Any) -> None:
    """Run the node daemon: discover chips, stream telemetry, serve the device plugins and HTTP."""
    try:
        cfg = load_config(config, **flags)
    except ConfigError as e:
        raise UserError(str(e)) from None
    configure_logging(cfg.log_format)
    _warn_kubelet_dir(cfg.kubelet_dir)

    async def _main() -> None:
        from snnrm.app import Daemon

        stop = asyncio.Event()
        _install_stop(stop)
        daemon = await Daemon.create(cfg)
        await daemon.run(stop=stop)

    # ConfigError here is found while building the daemon, e.g. hooks configured without a token.
    _run_loop(_main, http=cfg.http, backend=cfg.backend)


@main.command()
@_opt("http", default="127.0.0.1:9400", help="host:port of the status page, metrics and probes.")
@click.option(
    "--seconds",
    "demo_seconds",
    envvar="SNNRM_DEMO_SECONDS",
    show_envvar=True,
    type=float,
    default=None,
    help="Stop after this many seconds with exit 0 [default: run until Ctrl-C].",
)
@_opt("sim-chips", type=int, default=4, help="Simulated chips.")
@_opt("sim-seed", type=click.IntRange(min=0), default=0, help="Simulator seed.")
@_opt("log-format", type=click.Choice(["console", "json"]), default="console", help="Log rendering.")
def demo(
    http: str, demo_seconds: float | None, sim_chips: int, sim_seed: int, log_format: Literal["console", "json"]
) -> None:
    """Simulated chips, an embedded kubelet stand-in, a split-learning job, two faults and the answers to them."""
    configure_logging(log_format)
    from snnrm.demo import run_demo

    try:
        parse_http_address(http)
    except ValueError as e:
        raise UserError(f"--http: {e}") from None
    if demo_seconds is not None and not 0 < demo_seconds < 1e7:
        raise UserError(f"--seconds (SNNRM_DEMO_SECONDS): expected a positive number of seconds, got {demo_seconds}")
    if not 1 <= sim_chips <= 64:
        raise UserError(f"--sim-chips (SNNRM_SIM_CHIPS): the demo runs 1-64 chips, got {sim_chips}")

    async def _main() -> None:
        await run_demo(http=http, seconds=demo_seconds, chips=sim_chips, seed=sim_seed, install_stop=_install_stop)

    _run_loop(_main, http=http)


@main.command()
@click.option("--full", is_flag=True, help="The long set: 20 seeds, 180 simulated s per run [default: 10 seeds, 60 s].")
@click.option("--seeds", type=click.IntRange(min=1), default=None, help="Run seeds 0..N-1 instead of the set's.")
@click.option("--duration", type=float, default=None, help="Simulated seconds per run instead of the set's.")
@click.option("--scenarios", default="", show_default=False, help="Comma-separated scenarios [default: all].")
@click.option("--policies", default="", show_default=False, help="Comma-separated policies [default: all].")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Processes [default: min(2, CPUs)].")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Output directory [default: benchmarks/results, or benchmarks/results/full].",
)
@click.option("--plots/--no-plots", default=True, help="Write the PNG plots (needs the 'bench' extra).")
@click.option(
    "--readme/--no-readme",
    default=None,
    help="Rewrite README.md's Experiments section [default: after a complete default-set run].",
)
def bench(
    full: bool,
    seeds: int | None,
    duration: float | None,
    scenarios: str,
    policies: str,
    workers: int | None,
    out: Path | None,
    plots: bool,
    readme: bool | None,
) -> None:
    """Experiments on the simulator: snnrm vs first-fit, random and static placement under faults (source tree)."""
    try:
        from benchmarks.experiments.cli import config_for, execute
    except ModuleNotFoundError:  # an installed snnrm: benchmarks/ lives beside the package in the source tree
        import sys

        root = Path(__file__).resolve().parents[1]
        if not (root / "benchmarks" / "experiments").is_dir():
            raise click.UsageError("snnrm bench runs from a source checkout (benchmarks/ is not installed)") from None
        sys.path.insert(0, str(root))
        from benchmarks.experiments.cli import config_for, execute
    try:
        cfg = config_for(
            full=full,
            seeds=seeds,
            duration=duration,
            scenarios=[s for s in scenarios.split(",") if s],
            policies=[s for s in policies.split(",") if s],
        )
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    raise SystemExit(execute(cfg, out=out, workers=workers, plots=plots, readme=readme))


# The cluster-side placement controller (gang planner, scheduler extender, reallocation): snnrm/cli_controller.py.
from snnrm.cli_controller import controller  # noqa: E402 - registered after the node daemon's commands

main.add_command(controller)

# Split SNN jobs from NIR graphs (nir/h5py are imported only when the command runs): snnrm/job/cli.py.
from snnrm.job.cli import job  # noqa: E402

main.add_command(job)
