"""Helpers of the real-Kubernetes tier (tests/e2e): where the built tools are, and process wrappers.

Where the binaries are: the env file that scripts/build-tools.sh writes for this checkout
(``$SNNRM_TOOLS_CACHE/checkouts/<sha256(repo path)[:12]>.env``, lines ``export NAME=value``); a variable set in
the environment (e.g. ``SNNRM_DEVICEMANAGER_HARNESS=/path``) wins.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from snnrm.testing.tools import require_tool

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("SNNRM_TOOLS_CACHE", Path.home() / ".cache" / "snnrm-tools"))

NEURON_CORE = "snnrm.io/neuron-core"
EVENT_THROUGHPUT = "snnrm.io/event-throughput"
SIM_CHIPS = 2
SIM_CORES = 64


def tool(var: str, name: str) -> Path:
    """Path of a built tool, or skip the test saying how to build it (fail instead if SNNRM_E2E_REQUIRE=1)."""
    return require_tool(var, name, f"build-tools.sh {name}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class HarnessError(AssertionError):
    pass


class DeviceManagerHarness:
    """The upstream kubelet device manager in a subprocess; see tests/e2e/devicemanager/main.go for commands."""

    def __init__(self, proc: asyncio.subprocess.Process, socket_dir: Path, log: Path) -> None:
        self.proc = proc
        self.socket_dir = socket_dir
        self.log = log
        self.ready: dict[str, Any] = {}

    async def _line(self, within: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        try:
            raw = await asyncio.wait_for(self.proc.stdout.readline(), within)
        except TimeoutError:
            raise HarnessError(f"harness said nothing for {within}s; its log:\n{tail(self.log)}") from None
        if not raw:
            rc = await self.proc.wait()
            raise HarnessError(f"harness exited (rc={rc}); its log:\n{tail(self.log)}")
        msg: dict[str, Any] = json.loads(raw)
        return msg

    async def start(self) -> None:
        self.ready = await self._line(within=30)
        if self.ready.get("event") != "ready":
            raise HarnessError(f"harness did not start: {self.ready}\n{tail(self.log)}")

    async def cmd(self, line: str, *, check: bool = True, within: float = 60) -> dict[str, Any]:
        """Send one command; return its JSON reply (raise HarnessError if ok is false and check is set)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        await self.proc.stdin.drain()
        reply = await self._line(within)
        if check and not reply.get("ok"):
            raise HarnessError(f"`{line}` failed: {reply.get('error')}\nreply: {reply}\nharness log:\n{tail(self.log)}")
        return reply

    async def capacity(self) -> dict[str, Any]:
        return await self.cmd("capacity")

    async def wait(
        self, resource: str, field: str, op: str, n: int, *, within: float = 20, check: bool = True
    ) -> dict[str, Any]:
        """Poll GetCapacity inside the harness until ``field[resource] op n`` (field: capacity|allocatable)."""
        return await self.cmd(f"wait {resource} {field} {op} {n} {within}", check=check, within=within + 30)

    async def admit(self, *requests: tuple[str, int], check: bool = True) -> dict[str, Any]:
        """Admit a one-container pod with these (resource, count) limits: Allocate + GetDeviceRunContainerOptions."""
        args = " ".join(f"{res} {n}" for res, n in requests)
        return await self.cmd(f"admit {args}", check=check)

    async def close(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(Exception):
                assert self.proc.stdin is not None
                self.proc.stdin.write(b"quit\n")
                await self.proc.stdin.drain()
                self.proc.stdin.close()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


class Daemon:
    """``snnrm run --backend sim`` as a subprocess; ``restart()`` keeps its directories, as a pod restart would."""

    def __init__(self, socket_dir: Path, workdir: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "snnrm.log"
        self.state_dir = workdir / "state"
        self.workdir = workdir
        self.argv = [
            *snnrm_command(),
            "run",
            "--backend",
            "sim",
            "--kubelet-dir",
            str(socket_dir),
            "--http",
            f"127.0.0.1:{self.port}",
            "--sim-chips",
            str(SIM_CHIPS),
            "--sim-cores",
            str(SIM_CORES),
            "--state-dir",
            str(self.state_dir),
            "--cdi-dir",
            str(workdir / "cdi"),
        ]
        self.proc: asyncio.subprocess.Process | None = None
        self.starts = 0

    async def start(self) -> None:
        """Spawn and wait until /healthz answers (registration is checked through the kubelet side)."""
        assert self.proc is None or self.proc.returncode is not None
        self.starts += 1
        with self.log.open("ab") as out:
            out.write(f"===== start {self.starts}: {' '.join(self.argv)}\n".encode())
            out.flush()
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                cwd=self.workdir,
            )
        for _ in range(300):
            if self.proc.returncode is not None:
                pytest.fail(f"snnrm run exited with {self.proc.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with aiohttp.ClientSession() as http, http.get(self.base + "/healthz") as r:
                    if r.status == 200:
                        return
            await asyncio.sleep(0.1)
        pytest.fail(f"snnrm run did not serve /healthz within 30s:\n{self.log_tail()}")

    async def stop(self) -> int | None:
        """SIGTERM (then SIGKILL after 15 s); returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 15)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        return self.proc.returncode

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    async def get(self, path: str) -> Any:
        async with aiohttp.ClientSession() as http, http.get(self.base + path) as r:
            r.raise_for_status()
            return await r.json()

    async def post(self, path: str, body: Any) -> Any:
        async with aiohttp.ClientSession() as http, http.post(self.base + path, json=body) as r:
            text = await r.text()
            assert r.status < 300, f"POST {path} {body} -> {r.status} {text}"
            return json.loads(text) if text else None

    def log_tail(self) -> str:
        return tail(self.log)


def snnrm_command() -> list[str]:
    script = Path(sys.executable).parent / "snnrm"
    if script.exists():
        return [str(script)]
    found = shutil.which("snnrm")
    if found:
        return [found]
    return [sys.executable, "-c", "from snnrm.cli import main; main()"]
