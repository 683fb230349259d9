"""Headless Chromium driven over the DevTools protocol: the status page's browser tests and the README screenshot.

Chromium (Debian package ``chromium``, installed by ``scripts/install-test-deps.sh``) runs with a fresh profile;
the DevTools port is read from ``DevToolsActivePort`` in that profile, so callers never race for a fixed port.
:class:`DevTools` collects console messages, uncaught exceptions and browser log entries (failed loads, CSP
violations); :meth:`DevTools.problems` lists the errors among them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",  # /dev/shm is small in containers; the tmp dir is not
    "--window-size=1440,1200",
    "--remote-debugging-port=0",
)


class BrowserError(AssertionError):
    """Chromium is missing, did not start, or the page never reached an expected state (a test failure)."""


@dataclass(eq=False)
class DevTools:
    """A minimal Chrome DevTools Protocol client over one page target's websocket."""

    ws: aiohttp.ClientWebSocketResponse
    events: list[dict[str, Any]] = field(default_factory=list)
    _next_id: int = 0
    _pending: dict[int, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    _event_arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def read_forever(self) -> None:
        """Dispatch replies to their requests and keep every event, until the websocket closes."""
        async for msg in self.ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                break
            data = json.loads(msg.data)
            if "id" in data:
                fut = self._pending.pop(data["id"], None)
                if fut is not None and not fut.done():
                    if "error" in data:
                        fut.set_exception(RuntimeError(f"CDP error: {data['error']}"))
                    else:
                        fut.set_result(data.get("result", {}))
            else:
                self.events.append(data)
                self._event_arrived.set()
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(ConnectionError("DevTools websocket closed"))

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        """Call a DevTools method and return its result."""
        self._next_id += 1
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[self._next_id] = fut
        await self.ws.send_json({"id": self._next_id, "method": method, "params": params})
        return await asyncio.wait_for(fut, 30)

    async def wait_event(self, method: str, *, within: float = 30.0) -> dict[str, Any]:
        """The first event named ``method`` (already seen or still to come)."""
        async with asyncio.timeout(within):
            while True:
                for e in self.events:
                    if e["method"] == method:
                        return e
                self._event_arrived.clear()
                await self._event_arrived.wait()

    async def evaluate(self, expression: str) -> Any:
        """Evaluate JavaScript in the page and return its value (JSON-serialisable)."""
        r = await self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise BrowserError(f"JS failed: {r['exceptionDetails']}")
        return r["result"].get("value")

    async def until(self, expression: str, *, within: float = 15.0) -> Any:
        """Evaluate until the value is truthy, and return it."""
        deadline = asyncio.get_running_loop().time() + within
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            if asyncio.get_running_loop().time() > deadline:
                raise BrowserError(f"page never satisfied {expression!r}; problems so far: {self.problems()}")
            await asyncio.sleep(0.2)

    def problems(self) -> list[str]:
        """Console errors, uncaught exceptions and browser log errors seen so far."""
        out: list[str] = []
        for e in self.events:
            p = e.get("params", {})
            if e["method"] == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append("console." + p["type"] + ": " + " ".join(str(a.get("value", a)) for a in p["args"]))
            elif e["method"] == "Runtime.exceptionThrown":
                d = p["exceptionDetails"]
                out.append("exception: " + str(d.get("exception", {}).get("description", d.get("text"))))
            elif e["method"] == "Log.entryAdded" and p["entry"]["level"] == "error":
                out.append(f"log ({p['entry']['source']}): {p['entry']['text']} {p['entry'].get('url', '')}")
        return out

    async def screenshot(self) -> bytes:
        """A PNG of the whole page at scale 1, laid out as a window that tall would show it.

        The window is first made as tall as the page, so the picture has no scrollbar and is laid out as it is
        drawn (with a scrollbar the page may pick fewer grid columns, and be taller, than what is captured).
        """
        # The page's own extent: the layout metrics' content size is never smaller than the window.
        extent = "[window.innerWidth, Math.ceil(document.body.getBoundingClientRect().bottom)]"
        width, height = await self.evaluate(extent)
        try:
            for _ in range(3):  # a taller window may re-flow the page to another height: settle on it
                await self.send(
                    "Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False
                )
                # The page redraws its canvases on resize, and the status page on every poll (1 s): wait for both.
                await asyncio.sleep(1.2)
                now = (await self.evaluate(extent))[1]
                if now == height:
                    break
                height = now
            shot = await self.send(
                "Page.captureScreenshot",
                format="png",
                clip={"x": 0, "y": 0, "width": width, "height": height, "scale": 1},
            )
        finally:
            await self.send("Emulation.clearDeviceMetricsOverride")
        return base64.b64decode(shot["data"])


def chromium_binary() -> str:
    """The Chromium executable on PATH."""
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    raise BrowserError("chromium not found: run scripts/install-test-deps.sh (Debian package `chromium`)")


@contextlib.asynccontextmanager
async def chromium(scratch: Path) -> AsyncIterator[DevTools]:
    """Start headless Chromium with a fresh profile under ``scratch`` and attach to its first page."""
    profile = scratch / "chromium-profile"
    profile.mkdir()
    with (scratch / "chromium.log").open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            chromium_binary(),
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            "about:blank",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
    try:
        port_file = profile / "DevToolsActivePort"
        async with asyncio.timeout(30):
            while not port_file.exists() or not port_file.read_text().strip():
                if proc.returncode is not None:
                    raise BrowserError(
                        f"chromium exited with {proc.returncode}: {(scratch / 'chromium.log').read_text()}"
                    )
                await asyncio.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        async with aiohttp.ClientSession() as http:
            async with asyncio.timeout(30):
                while True:
                    async with http.get(f"http://127.0.0.1:{port}/json/list") as r:
                        pages = [t for t in await r.json() if t["type"] == "page"]
                    if pages:
                        break
                    await asyncio.sleep(0.05)
            async with http.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                cdp = DevTools(ws)
                reader = asyncio.create_task(cdp.read_forever())
                try:
                    for domain in ("Runtime", "Log", "Page"):
                        await cdp.send(f"{domain}.enable")
                    yield cdp
                finally:
                    await ws.close()
                    await reader
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
