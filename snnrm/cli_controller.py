"""``snnrm controller``: the cluster-side placement controller (gang planner, scheduler extender, reallocation).

Kept apart from :mod:`snnrm.cli` (which registers it) so the node daemon's command line stays as it is. Every
flag also reads ``SNNRM_<FLAG>``.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import signal
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

import click

from snnrm.cli_errors import UserError, bind_problem
from snnrm.obs.logging import configure_logging

F = TypeVar("F", bound=Callable[..., Any])

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_URL_PREFIX = re.compile(r"(/[A-Za-z0-9._~-]+)*")


class Seconds(click.FloatRange):
    """A finite number of seconds in (0, ``most``]: click's FloatRange alone lets NaN through."""

    name = "seconds"

    def __init__(self, most: float) -> None:
        super().__init__(min=0.0, max=most, min_open=True)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        seconds = super().convert(value, param, ctx)
        if math.isnan(seconds):
            self.fail(f"expected a number of seconds, got {value!r}", param, ctx)
        return seconds


Callback = Callable[[click.Context, click.Parameter, Any], Any]


def _matching(
    pattern: re.Pattern[str], what: str, *, most: int = 253
) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """A click callback that refuses a value ``pattern`` does not match in full."""

    def check(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is not None and (len(value) > most or not pattern.fullmatch(value)):
            raise click.BadParameter(f"{value!r} is not {what}")
        return value

    return check


def _opt(name: str, **kw: Any) -> Callable[[F], F]:
    """A flag that falls back to ``SNNRM_<FLAG>``."""
    option: Callable[[F], F] = click.option(
        f"--{name}", envvar="SNNRM_" + name.upper().replace("-", "_"), show_envvar=True, **kw
    )
    return option


@click.command(context_settings={"show_default": True})
@_opt(
    "kubeconfig",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Kubeconfig of the cluster [default: the pod's service account].",
)
@_opt("http", default="127.0.0.1:9500", help="host:port of the extender verbs, probes and metrics.")
@_opt(
    "extender-prefix",
    default="/extender",
    callback=_matching(_URL_PREFIX, "a URL path of plain segments (like /extender), or empty"),
    help="URL prefix of the filter and prioritize verbs.",
)
@_opt(
    "namespace",
    default=None,
    callback=_matching(_DNS_LABEL, "a namespace name (a DNS-1123 label)", most=63),
    help="Namespace of the leader-election Lease [default: $POD_NAMESPACE, else default].",
)
@_opt("identity", default=None, help="This replica's name in the Lease and Events [default: $POD_NAME, else the host].")
@_opt(
    "lease-name",
    default="snnrm-placement-controller",
    callback=_matching(_DNS_SUBDOMAIN, "a Lease name (a DNS-1123 subdomain)"),
    help="Name of the leader-election Lease.",
)
@_opt("lease-duration", type=Seconds(3600.0), default=15.0, help="Seconds a leader holds the Lease without renewing.")
@_opt(
    "reservation-ttl", type=Seconds(86400.0), default=120.0, help="Seconds a plan's cores stay reserved before binding."
)
@_opt(
    "summary-stale-after", type=Seconds(86400.0), default=900.0, help="Seconds after which a node summary is ignored."
)
@_opt("dry-run", is_flag=True, default=False, help="Decide and record Events, but reserve, patch and evict nothing.")
@click.option(
    "--reallocation/--no-reallocation",
    envvar="SNNRM_REALLOCATION",
    show_envvar=True,
    default=True,
    help="Run the reallocation controller (evictions of degraded stages).",
)
@_opt("log-format", type=click.Choice(["console", "json"]), default="console", help="Log rendering.")
def controller(
    kubeconfig: Path | None,
    http: str,
    extender_prefix: str,
    namespace: str | None,
    identity: str | None,
    lease_name: str,
    lease_duration: float,
    reservation_ttl: float,
    summary_stale_after: float,
    dry_run: bool,
    reallocation: bool,
    log_format: str,
) -> None:
    """Run the placement controller: gang planner, scheduler extender and reallocation (one leader acts)."""
    from snnrm.config import parse_http_address

    try:
        host, port = parse_http_address(http)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="'--http'") from None
    if namespace is None:
        namespace = os.environ.get("POD_NAMESPACE") or "default"
    configure_logging(cast(Literal["console", "json"], log_format))

    async def _main() -> None:
        from snnrm.cluster.controller import ControllerSettings
        from snnrm.controller_app import ControllerConfig, run

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        settings = ControllerSettings(
            namespace=namespace,
            identity=identity or os.environ.get("POD_NAME") or socket.gethostname(),
            lease_name=lease_name,
            lease_duration=lease_duration,
            renew_deadline=lease_duration * 2 / 3,
            retry_period=min(2.0, lease_duration / 7.5),
            reservation_ttl=reservation_ttl,
            summary_stale_after=summary_stale_after,
            dry_run=dry_run,
        )
        config = ControllerConfig(
            host=host,
            port=port,
            prefix=extender_prefix,
            kubeconfig=kubeconfig,
            settings=settings,
            reallocation=reallocation,
        )
        await run(config, stop=stop)

    from snnrm.kube.api import KubeConfigError

    try:
        asyncio.run(_main())
    except KubeConfigError as e:
        raise click.UsageError(str(e)) from None
    except Exception as e:  # translated when it is a user mistake, re-raised otherwise
        problem = bind_problem(e, http=http)
        if problem is None:
            raise
        raise UserError(problem) from None
