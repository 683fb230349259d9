#!/usr/bin/env python3
"""Screenshot of the status page during the demo's remap, for the README (docs/img/status-page.png).

Runs ``snnrm demo`` as ``make demo`` does (a real process on a free loopback port), opens ``/`` in headless
Chromium (the same DevTools driver as the status page's browser tests, :mod:`snnrm.testing.browser`), waits until
the page's timeline shows the node's reallocator live-remapping the stage under the hot spot, saves a PNG of the
whole page (the mesh coloured by the worst queue fill of the last minutes, so the hot spot the stage just left
shows; ``--view now`` for the live frame), then stops the demo with Ctrl-C's signal. Needs the test
dependencies (Chromium: ``scripts/install-test-deps.sh``).

    .venv/bin/python scripts/screenshot-status.py [--out docs/img/status-page.png] [--settle 1.2] [--view peak|now]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
import sys
import tempfile
from pathlib import Path

import aiohttp

from snnrm.testing.browser import chromium

REPO = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _serving(base: str, demo: asyncio.subprocess.Process, within: float) -> None:
    """Return once the demo's daemon answers ``/api/v1/events``."""
    async with aiohttp.ClientSession() as http, asyncio.timeout(within):
        while True:
            if demo.returncode is not None:
                raise SystemExit(f"snnrm demo exited with {demo.returncode} before serving")
            try:
                async with http.get(base + "/api/v1/events") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.2)


async def shoot(settle: float, view: str) -> bytes:
    """Run the demo until its first remap and return a PNG of the status page at that moment."""
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="snnrm-shot-") as tmp:
        scratch = Path(tmp)
        with (scratch / "demo.log").open("wb") as log:
            demo = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "snnrm",
                "demo",
                "--http",
                f"127.0.0.1:{port}",
                "--seconds",
                "120",
                "--log-format",
                "json",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=REPO,
            )
        try:
            await _serving(base, demo, within=60)
            async with chromium(scratch) as cdp:
                # The page is open before the hot spot, so it is on screen the moment the stage moves.
                await cdp.send("Page.navigate", url=base + "/")
                await cdp.wait_event("Page.loadEventFired")
                remap = await cdp.until(
                    "(() => { const li = document.querySelector('#timeline li[data-action=remapped] .msg');"
                    " return li && li.textContent; })()",
                    within=90,
                )
                print(f"first remap: {remap}", file=sys.stderr)
                await asyncio.sleep(settle)  # one more poll: the remapped stage and its withheld cores drawn
                if view == "peak":  # the hot spot the stage just left: its queues drain within a second
                    await cdp.evaluate("document.getElementById('heat-view-peak').click()")
                    await cdp.until("document.getElementById('heatmap').dataset.view === 'peak'")
                # The history strip has the hot spot's frame (its past was fetched after the remap).
                await cdp.until("Number(document.getElementById('heat-history').dataset.hot) >= 16")
                await asyncio.sleep(0.3)
                problems = cdp.problems()
                if problems:
                    raise SystemExit("the page logged errors:\n" + "\n".join(problems))
                return await cdp.screenshot()
        finally:
            if demo.returncode is None:
                demo.send_signal(signal.SIGINT)  # the demo's clean stop (its recap, sockets removed)
                try:
                    await asyncio.wait_for(demo.wait(), 20)
                except TimeoutError:
                    demo.kill()
                    await demo.wait()
            if demo.returncode not in (0, None):
                tail = (scratch / "demo.log").read_text(errors="replace").splitlines()[-20:]
                print(json.dumps(tail, indent=1), file=sys.stderr)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "img" / "status-page.png")
    parser.add_argument("--settle", type=float, default=1.2, help="seconds the page polls after it shows the remap")
    parser.add_argument(
        "--view",
        choices=("peak", "now"),
        default="peak",
        help="colour the mesh by the worst value of the last minutes (default) or the live frame",
    )
    args = parser.parse_args()
    png = asyncio.run(shoot(args.settle, args.view))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(png)
    print(f"wrote {args.out} ({len(png)} bytes)", file=sys.stderr)
