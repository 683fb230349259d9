"""``snnrm job``: split SNN jobs from NIR graphs (registered by :mod:`snnrm.cli`)."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import sys
from pathlib import Path

import click

PRESETS = ("loihi2", "spinnaker2", "akida")


class _PlanFailed(click.ClickException):
    exit_code = 2


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
def job() -> None:
    """Split SNN jobs: plan stages and their spike traffic from a NIR graph."""


@job.command()
@click.argument("graph", type=click.Path(path_type=Path))  # a directory is refused by plan.reading, in one line
@click.option("--stages", type=int, default=None, help="Number of pipeline stages (or use --max-cores-per-stage).")
@click.option("--max-cores-per-stage", type=int, default=None, help="Fewest stages whose cores each fit this budget.")
@click.option("--preset", type=click.Choice(PRESETS), default="loihi2", help="Hardware: neurons/synapses per core.")
@click.option(
    "--input",
    "input_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Run the graph on these events (.npz: 'spikes' (time, channels), or 't' seconds, 'x', 'y', 'p').",
)
@click.option(
    "--recorded",
    type=click.Path(path_type=Path),
    default=None,
    help="Use recorded activity instead: nir.NIRGraphData with per-node 'spikes' observables (.h5).",
)
@click.option("--dt", type=float, default=1e-3, help="Seconds per interpreter step (with --input).")
@click.option(
    "--max-core-load",
    type=float,
    default=0.7,  # snnrm.job.plan.MAX_CORE_LOAD (not imported here: that module loads numpy)
    help="Share of a core's event rate a stage may use at its measured rate: a stage whose spikes need more "
    "cores than its neurons gets them.",
)
@click.option("--job", "job_name_", default=None, help="Job name [default: the graph file's name].")
@click.option("--image", default="registry.example.com/snn-stage:latest", help="Container image of every stage.")
@click.option("--namespace", default=None, help="Namespace written into the manifests [default: none].")
@click.option(
    "--scheduler-name",
    default=None,
    help="schedulerName of every stage: the profile whose extenders list snnrm (the chart's: snnrm-scheduler) "
    "[default: none, the cluster's default scheduler].",
)
@click.option(
    "--live-remap",
    is_flag=True,
    help="The stages' runtime follows a rewritten allocation file: a node may move a degraded stage in place.",
)
@click.option("-o", "--out", type=click.Path(path_type=Path), default=None, help="Directory for the manifests.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON instead of a table.")
def plan(
    graph: Path,
    stages: int | None,
    max_cores_per_stage: int | None,
    preset: str,
    input_path: Path | None,
    recorded: Path | None,
    dt: float,
    max_core_load: float,
    job_name_: str | None,
    image: str,
    namespace: str | None,
    scheduler_name: str | None,
    live_remap: bool,
    out: Path | None,
    as_json: bool,
) -> None:
    """Split GRAPH.nir into stages, measure their spike traffic, write one gated pod manifest per stage.

    Without -o the manifests go to standard output as a YAML stream (the summary then goes to standard error).
    On any error nothing is written.
    """
    import yaml

    from snnrm.job.plan import (
        PlanError,
        check_image,
        check_namespace,
        check_scheduler_name,
        job_name,
        manifests,
        plan_job,
    )

    if not (dt > 0 and dt <= 1.0):
        raise _PlanFailed(f"--dt must be in (0, 1] seconds, got {dt}")
    if out is not None:
        _check_out(out)  # before the work: a bad -o should not cost a run of the graph
    try:
        check_namespace(namespace)
        check_image(image)
        check_scheduler_name(scheduler_name)
        name = job_name(job_name_ or graph.stem)
        result = plan_job(
            graph,
            preset=preset,
            stages=stages,
            max_cores_per_stage=max_cores_per_stage,
            input_path=input_path,
            recorded_path=recorded,
            dt=dt,
            job=name,
            max_core_load=max_core_load,
        )
        docs = manifests(result, image=image, namespace=namespace, scheduler_name=scheduler_name, live_remap=live_remap)
    except PlanError as e:
        raise _PlanFailed(str(e)) from None
    if out is not None:
        # Written before anything is printed, so a refusal is the only line the user sees.
        _write_all(out, {f"{d['metadata']['name']}.yaml": yaml.safe_dump(d, sort_keys=False) for d in docs})
    summary_stream = sys.stderr if out is None and not as_json else sys.stdout
    if as_json:
        click.echo(json.dumps(_as_json(result), indent=1))
    else:
        click.echo(_table(result), file=summary_stream)
    if out is None:
        if not as_json:
            click.echo(yaml.safe_dump_all(docs, sort_keys=False), nl=False)
        return
    if not as_json:
        click.echo(f"wrote {len(docs)} manifests to {out}/ (kubectl apply -f {out}/)")


def _check_out(out: Path) -> None:
    """Refuse an ``-o`` that cannot become a writable directory (cheap checks; the write itself may still fail)."""
    for p in (out, *out.parents):
        if not os.path.lexists(p):
            continue
        if not p.is_dir():
            where = "exists" if p == out else f"has {p}, which exists"
            raise _PlanFailed(f"-o {out}: {where} and is not a directory")
        # access() also answers EROFS for a read-only mount, even to root
        if not os.access(p, os.W_OK | os.X_OK):
            why = "is on a read-only filesystem" if os.statvfs(p).f_flag & os.ST_RDONLY else "is not writable"
            raise _PlanFailed(f"-o {out}: {p} {why}")
        return


def _write_all(out: Path, files: dict[str, str]) -> None:
    """All files or none, as far as a filesystem allows: each is written to a temporary file inside ``out`` and
    renamed into place once all are written. Temporary files live in ``out`` itself (not beside it) so the renames
    never cross a filesystem, as they would when ``out`` is a mount point. Directories made here are removed again
    on failure. Raises :class:`_PlanFailed` with one line."""
    made: list[Path] = []
    temps: dict[str, Path] = {}
    done = False
    try:
        for d in reversed([out, *out.parents]):
            if not d.exists():
                d.mkdir()
                made.append(d)
        tag = f"{os.getpid()}.{secrets.token_hex(4)}"
        for name, text in files.items():
            temps[name] = out / f".{name}.{tag}.tmp"
            with open(temps[name], "x", encoding="utf-8") as f:  # "x": never clobber; mode from the umask
                f.write(text)
        for name, tmp in temps.items():
            os.replace(tmp, out / name)
        done = True
    except OSError as e:
        raise _PlanFailed(f"-o {out}: cannot write the manifests there ({e.strerror or e})") from None
    finally:
        if not done:
            for tmp in temps.values():
                with contextlib.suppress(OSError):
                    tmp.unlink()
            for d in reversed(made):
                with contextlib.suppress(OSError):  # not empty: a manifest was already renamed into it
                    d.rmdir()


def _as_json(result: object) -> dict[str, object]:
    from snnrm.job.plan import JobPlan

    assert isinstance(result, JobPlan)
    return {
        "job": result.job,
        "preset": result.preset,
        "rates_from": result.source,
        "stages": [
            {
                "index": s.index,
                "nodes": list(s.nodes),
                "neurons": s.neurons,
                "synapses": s.synapses,
                "cores": s.cores,
                "cores_bound_by": s.bound,
                "in_keps": round(s.in_keps, 3),
                "out_keps": round(s.out_keps, 3),
                "internal_keps": round(s.internal_keps, 3),
            }
            for s in result.stages
        ],
        "node_rates_hz": {k: round(v, 3) for k, v in result.rates_hz.items()},
    }


def _table(result: object) -> str:
    from snnrm.job.plan import JobPlan

    assert isinstance(result, JobPlan)
    rows = [("stage", "nodes", "neurons", "cores", "bound by", "KEPS in", "KEPS out", "KEPS inside")]
    for s in result.stages:
        nodes = ",".join(s.nodes)
        rows.append(
            (
                str(s.index),
                nodes if len(nodes) <= 40 else nodes[:37] + "...",
                f"{s.neurons:,}",
                str(s.cores),
                s.bound,
                f"{s.in_keps:.1f}",
                f"{s.out_keps:.1f}",
                f"{s.internal_keps:.1f}",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [f"job {result.job}: {len(result.stages)} stages on {result.preset}; spike rates {result.source}"]
    for r in rows:
        lines.append(
            "  ".join(c.rjust(w) if i >= 2 else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        )
    return "\n".join(lines)
