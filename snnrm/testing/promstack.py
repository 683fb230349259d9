"""Real Prometheus and Alertmanager processes for tests: configured, started on loopback, queried, stopped.

The binaries come from scripts/build-observability-tools.sh (see :mod:`snnrm.testing.tools`). Each process gets a
fresh directory for its config, storage and log; :meth:`log_tail` is what a failing test should print.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Generic, Literal, NotRequired, Self, TypedDict, TypeVar

import aiohttp
import yaml

T = TypeVar("T")

# -- the answers of the Prometheus and Alertmanager HTTP APIs, as far as tests read them ---------------------------


class PromResponse(TypedDict, Generic[T]):
    """The envelope of every Prometheus ``/api/v1`` answer (an error status comes back as an HTTP error)."""

    status: Literal["success", "error"]
    data: T


class PromSeries(TypedDict):
    """One series of a query result: its labels and its sample (instant query) or samples (range query)."""

    metric: dict[str, str]
    value: NotRequired[tuple[float, str]]
    """``[unix seconds, "value"]`` (a JSON array; the value is a string so that NaN and Inf survive)."""
    values: NotRequired[list[tuple[float, str]]]


class QueryData(TypedDict):
    resultType: Literal["vector", "matrix", "scalar", "string"]
    result: list[PromSeries]
    """A vector or matrix; a scalar or string answer is a bare ``[unix seconds, "value"]`` pair instead."""


class PromAlert(TypedDict):
    """An alert of ``GET /api/v1/alerts`` (pending or firing)."""

    labels: dict[str, str]
    annotations: dict[str, str]
    state: Literal["pending", "firing"]
    activeAt: NotRequired[str]
    value: str


class AlertsData(TypedDict):
    alerts: list[PromAlert]


class PromTarget(TypedDict):
    """An active scrape target of ``GET /api/v1/targets``."""

    discoveredLabels: dict[str, str]
    labels: dict[str, str]
    scrapePool: str
    scrapeUrl: str
    lastError: str
    lastScrape: str
    lastScrapeDuration: float
    health: Literal["up", "down", "unknown"]


class TargetsData(TypedDict):
    activeTargets: list[PromTarget]


class AlertmanagerReceiver(TypedDict):
    name: str


class AlertmanagerStatus(TypedDict):
    state: Literal["unprocessed", "active", "suppressed"]
    silencedBy: list[str]
    inhibitedBy: list[str]


class AlertmanagerAlert(TypedDict):
    """An alert of Alertmanager's ``GET /api/v2/alerts``."""

    labels: dict[str, str]
    annotations: dict[str, str]
    startsAt: str
    endsAt: str
    updatedAt: str
    fingerprint: str
    receivers: list[AlertmanagerReceiver]
    status: AlertmanagerStatus
    generatorURL: NotRequired[str]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rules_with_short_for(src: Path, dst: Path, *, for_: str = "0s") -> Path:
    """A copy of rule file ``src`` with every ``for:`` set to ``for_`` (the expressions are untouched), so a test can
    watch the real rules fire in seconds instead of minutes."""
    doc = yaml.safe_load(src.read_text())
    for group in doc["groups"]:
        group["interval"] = "1s"
        for rule in group["rules"]:
            if "alert" in rule:
                rule["for"] = for_
    dst.write_text(yaml.safe_dump(doc, sort_keys=False))
    return dst


@dataclass(eq=False)
class _Process:
    binary: Path
    workdir: Path
    name: str
    port: int = field(default_factory=free_port)
    proc: asyncio.subprocess.Process | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    async def _start(self, argv: Sequence[str], *, within: float = 60.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log.open("wb") as out:
            self.proc = await asyncio.create_subprocess_exec(
                str(self.binary), *argv, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out, cwd=self.workdir
            )
        deadline = time.monotonic() + within
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                if self.proc.returncode is not None:
                    raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with http.get(self.base + "/-/ready") as r:
                        if r.status == 200:
                            return
                await asyncio.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready within {within}s:\n{self.log_tail()}")

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 15)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def _json(
        self, method: str, path: str, *, params: Mapping[str, str] | None = None, payload: object = None
    ) -> Any:  # the decoded answer, whose shape the caller declares
        async with (
            aiohttp.ClientSession() as http,
            http.request(method, self.base + path, params=params, json=payload) as r,
        ):
            text = await r.text()
            if r.status >= 300:
                raise RuntimeError(f"{method} {path} -> {r.status}: {text[:500]}")
            return json.loads(text) if text else None


@dataclass(eq=False)
class Prometheus(_Process):
    """``prometheus`` scraping ``targets`` (job ``snnrm``) every ``scrape_interval``, with optional rules/alerting."""

    name: str = "prometheus"
    targets: Sequence[str] = ()
    scrape_interval: str = "1s"
    rule_files: Sequence[Path] = ()
    alertmanager: str | None = None
    """host:port of an Alertmanager to send alerts to."""

    async def __aenter__(self) -> Self:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config: dict[str, object] = {
            "global": {"scrape_interval": self.scrape_interval, "evaluation_interval": "1s"},
            "scrape_configs": [
                {"job_name": "snnrm", "scrape_timeout": "1s", "static_configs": [{"targets": list(self.targets)}]}
            ],
            "rule_files": [str(p) for p in self.rule_files],
        }
        if self.alertmanager:
            config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [self.alertmanager]}]}]}
        cfg = self.workdir / "prometheus.yml"
        cfg.write_text(yaml.safe_dump(config, sort_keys=False))
        await self._start(
            [
                f"--config.file={cfg}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=info",
            ]
        )
        return self

    async def query(self, expr: str, *, at: float | None = None) -> list[PromSeries]:
        """Instant query of a vector or matrix: its series (a scalar or string answer is an error here)."""
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        body: PromResponse[QueryData] = await self._json("GET", "/api/v1/query", params=params)
        data = body["data"]
        if data["resultType"] not in ("vector", "matrix"):
            raise ValueError(f"{expr!r} is a {data['resultType']}, not a vector: query() returns series")
        return data["result"]

    async def query_range(self, expr: str, *, start: float, end: float, step: float) -> list[PromSeries]:
        params = {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step}"}
        body: PromResponse[QueryData] = await self._json("GET", "/api/v1/query_range", params=params)
        return body["data"]["result"]

    async def series(self, match: str) -> list[dict[str, str]]:
        body: PromResponse[list[dict[str, str]]] = await self._json("GET", "/api/v1/series", params={"match[]": match})
        return body["data"]

    async def label_values(self, label: str, match: str | None = None) -> list[str]:
        params = {"match[]": match} if match else None
        body: PromResponse[list[str]] = await self._json("GET", f"/api/v1/label/{label}/values", params=params)
        return body["data"]

    async def alerts(self) -> list[PromAlert]:
        body: PromResponse[AlertsData] = await self._json("GET", "/api/v1/alerts")
        return body["data"]["alerts"]

    async def targets_up(self) -> list[PromTarget]:
        body: PromResponse[TargetsData] = await self._json("GET", "/api/v1/targets")
        return body["data"]["activeTargets"]


@dataclass(eq=False)
class Alertmanager(_Process):
    """``alertmanager`` with one webhook receiver (bearer token from a file), no HA clustering."""

    name: str = "alertmanager"
    webhook_url: str = ""
    token_file: Path | None = None
    group_wait: str = "1s"
    group_interval: str = "2s"
    repeat_interval: str = "1h"

    async def __aenter__(self) -> Self:
        self.workdir.mkdir(parents=True, exist_ok=True)
        webhook: dict[str, object] = {"url": self.webhook_url, "send_resolved": True, "max_alerts": 100}
        if self.token_file is not None:
            webhook["http_config"] = {"authorization": {"type": "Bearer", "credentials_file": str(self.token_file)}}
        config = {
            "route": {
                "receiver": "snnrm-hooks",
                "group_by": ["alertname"],
                "group_wait": self.group_wait,
                "group_interval": self.group_interval,
                "repeat_interval": self.repeat_interval,
            },
            "receivers": [{"name": "snnrm-hooks", "webhook_configs": [webhook]}],
        }
        cfg = self.workdir / "alertmanager.yml"
        cfg.write_text(yaml.safe_dump(config, sort_keys=False))
        await self._start(
            [
                f"--config.file={cfg}",
                f"--storage.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--cluster.listen-address=",
                "--log.level=debug",
            ]
        )
        return self

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def post_alerts(self, alerts: Sequence[Mapping[str, object]]) -> None:
        """``POST /api/v2/alerts`` (what Prometheus does); each alert as Alertmanager's API spells it."""
        await self._json("POST", "/api/v2/alerts", payload=alerts)

    async def alerts(self) -> list[AlertmanagerAlert]:
        result: list[AlertmanagerAlert] = await self._json("GET", "/api/v2/alerts")
        return result


async def eventually(
    check: Callable[[], Awaitable[T]], *, within: float, every: float = 0.25, what: str = "condition"
) -> T:
    """Await ``check()`` until it returns something truthy; raise AssertionError with ``what`` after ``within`` s."""
    deadline = time.monotonic() + within
    while True:
        last = await check()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {within}s (last: {last!r})")
        await asyncio.sleep(every)
