"""Hostile HTTP input against a real daemon over real TCP: every answer is a 4xx naming the problem, never a 500,
and nothing changes (issue 16)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from aiohttp.test_utils import make_mocked_request

from snnrm.app import Daemon, fault_access
from snnrm.backends.sim import MAX_LIVE_FAULTS
from snnrm.config import Config, ConfigError
from snnrm.core.devices import NEURON_CORE
from snnrm.core.health import Health
from snnrm.http import body
from snnrm.http.server import FaultAccess
from snnrm.kubelet.standin import KubeletStandIn

DEEP = b"[" * 30000 + b"]" * 30000


def _config(tmp_path: Path) -> Config:
    return Config(
        backend="sim",
        kubelet_dir=tmp_path / "dp",
        http="127.0.0.1:0",
        sim_chips=1,
        sim_cores=16,
        state_dir=tmp_path / "state",
        cdi_dir=tmp_path / "cdi",
        sample_period=0.05,
    )


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[tuple[Daemon, str]]:
    config = _config(tmp_path)
    async with KubeletStandIn(config.kubelet_dir) as kubelet:
        d = await Daemon.create(config)
        stop = asyncio.Event()
        task = asyncio.create_task(d.run(stop=stop))
        await asyncio.wait_for(d.http_started.wait(), 10)
        await kubelet.wait_capacity(NEURON_CORE, 16, within=10)
        yield d, f"http://127.0.0.1:{d.http_port}"
        stop.set()
        await asyncio.wait_for(task, 10)


async def _post(http: aiohttp.ClientSession, url: str, raw: bytes) -> tuple[int, dict[str, object]]:
    async with http.post(url, data=raw, headers={"Content-Type": "application/json"}) as r:
        return r.status, await r.json()


@pytest.mark.parametrize(
    ("raw", "status", "message"),
    [
        (DEEP, 400, "nested 30000 levels deep"),
        (b'{"kind": "hot-spot", "chip": 0, "core": 1, "load_factor": 1e308}', 400, "'load_factor' must be a number"),
        (b'{"kind": "core-failure", "chip": 0, "core": 1, "at": 1e308}', 400, "'at' must be simulated seconds"),
        (b'{"kind": "core-failure", "chip": 0, "core": 1, "duration": 1e308}', 400, "'duration' must be seconds"),
        (b'{"kind": "core-failure", "chip": 0, "core": 1, "duration": NaN}', 400, "NaN is not a JSON number"),
        (b'{"kind": "core-failure", "chip": 0, "core": 1, "at": 1e999}', 400, "out of range"),
        (b"\xff\xfe", 400, "not JSON"),
        # Both spellings of the cores: one of them was dropped without a word.
        (b'{"kind": "core-failure", "core": 3, "cores": [5, 6]}', 400, "give 'core' or 'cores', not both"),
        (b'{"kind": "link-failure", "chip": 0, "core": 1}', 400, "link_failure takes 'links', not 'chip' or 'core'"),
        (b'{"kind": "chip-failure", "chip": 0, "chips": [0]}', 400, "give 'chip' or 'chips', not both"),
    ],
)
async def test_bad_fault_bodies_are_400_and_change_nothing(
    daemon: tuple[Daemon, str], raw: bytes, status: int, message: str
) -> None:
    _, base = daemon
    async with aiohttp.ClientSession() as http:
        code, answer = await _post(http, base + "/sim/faults", raw)
        assert code == status, answer
        assert message in str(answer["error"])
        async with http.get(base + "/sim/faults") as r:
            assert (await r.json())["faults"] == []


async def test_a_chip_failure_names_its_chip(daemon: tuple[Daemon, str]) -> None:
    """``"chip": 0`` is the HTTP API's spelling for a chip fault too (it used to be refused for a field 'cores' the
    client never sent)."""
    _, base = daemon
    async with aiohttp.ClientSession() as http:
        code, answer = await _post(http, base + "/sim/faults", b'{"kind": "chip-failure", "chip": 0, "duration": 5}')
        assert code == 201, answer
        async with http.get(base + "/sim/faults") as r:
            (fault,) = (await r.json())["faults"]
        assert (fault["kind"], fault["chips"]) == ("chip_failure", [0])


async def test_a_client_holding_half_a_body_does_not_hold_the_shutdown(tmp_path: Path) -> None:
    """aiohttp waits 60 s for requests in flight by default: past Kubernetes' 30 s grace period, a SIGKILL."""
    d = await Daemon.create(_config(tmp_path))
    stop = asyncio.Event()
    task = asyncio.create_task(d.run(stop=stop))
    await asyncio.wait_for(d.http_started.wait(), 10)
    _, writer = await asyncio.open_connection("127.0.0.1", d.http_port)
    writer.write(
        b"POST /sim/faults HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b'Content-Length: 1000\r\n\r\n{"kind":'
    )
    await writer.drain()
    await asyncio.sleep(0.2)  # the handler is now reading the body
    stop.set()
    await asyncio.wait_for(task, 10)  # stopped within the grace period (it took 60.8 s)
    writer.close()


async def test_a_malformed_request_is_one_warning_line_not_a_traceback(
    daemon: tuple[Daemon, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Anyone who reaches the port can send a request line over aiohttp's 8190-byte limit; each one logged a
    ~50-line traceback (with local variables) at error level."""
    import logging

    from snnrm.obs.logging import MalformedRequestFilter

    d, _ = daemon
    server = logging.getLogger("aiohttp.server")
    only = MalformedRequestFilter()
    server.addFilter(only)
    records: list[logging.LogRecord] = []

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    catch = Catch()
    server.addHandler(catch)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", d.http_port)
        writer.write(b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        status = await asyncio.wait_for(reader.readline(), 10)
        writer.close()
        assert status.split()[1] == b"400", status
        for _ in range(50):
            if records:
                break
            await asyncio.sleep(0.02)
    finally:
        server.removeHandler(catch)
        server.removeFilter(only)
    (record,) = records
    assert record.levelno == logging.WARNING
    assert record.exc_info is None
    assert record.getMessage().startswith("malformed HTTP request refused: 400")


async def test_bad_extender_and_hook_bodies_are_400_not_500(daemon: tuple[Daemon, str]) -> None:
    """The extender lives on the controller; here the daemon's routes: nothing a client sends makes a 500."""
    _, base = daemon
    async with aiohttp.ClientSession() as http:
        for path in ("/sim/faults", "/api/v1/node"):
            async with http.post(base + path, data=DEEP, headers={"Content-Type": "application/json"}) as r:
                assert r.status in (400, 405), (path, r.status)


async def test_fault_ids_are_parsed_strictly(daemon: tuple[Daemon, str]) -> None:
    _, base = daemon
    async with aiohttp.ClientSession() as http:
        code, answer = await _post(http, base + "/sim/faults", b'{"kind": "core-failure", "chip": 0, "core": 2}')
        assert code == 201
        fid = answer["id"]
        for raw in (f"%20{fid}", f"+{fid}", f"{fid}%20", f"0{fid}", "1_0", "-1"):
            async with http.delete(f"{base}/sim/faults/{raw}") as r:
                assert r.status == 400, raw
        async with http.get(base + "/sim/faults") as r:
            assert [f["id"] for f in (await r.json())["faults"]] == [fid]  # still there
        async with http.delete(f"{base}/sim/faults/{fid}") as r:
            assert r.status == 204


async def test_live_faults_are_capped_and_ended_ones_pruned(daemon: tuple[Daemon, str]) -> None:
    d, base = daemon
    fault = b'{"kind": "hot-spot", "chip": 0, "core": 3, "load_factor": 2.0}'
    async with aiohttp.ClientSession() as http:
        ids = []
        for _ in range(MAX_LIVE_FAULTS):
            code, answer = await _post(http, base + "/sim/faults", fault)
            assert code == 201
            ids.append(answer["id"])
        code, answer = await _post(http, base + "/sim/faults", fault)
        assert code == 429
        assert "clear some first" in str(answer["error"])
        for fid in ids:
            async with http.delete(f"{base}/sim/faults/{fid}") as r:
                assert r.status == 204
        async with http.get(base + "/sim/faults") as r:
            assert (await r.json())["faults"] == []
        code, _ = await _post(http, base + "/sim/faults", fault)
        assert code == 201
    assert d.backend.sim.live_faults == 1  # type: ignore[attr-defined]


async def test_delete_restores_health_after_the_largest_allowed_hot_spot(daemon: tuple[Daemon, str]) -> None:
    """Stacked faults at the largest allowed factors, then DELETE: every core is Healthy again (no stale core)."""
    d, base = daemon
    async with aiohttp.ClientSession() as http:
        ids = []
        for raw in (
            b'{"kind": "queue-saturation", "chip": 0, "core": 5, "burst_factor": 1e3}',
            b'{"kind": "queue-saturation", "chip": 0, "core": 5, "burst_factor": 1e3}',
            b'{"kind": "hot-spot", "chip": 0, "core": 5, "load_factor": 1e3, "service_divisor": 1e6}',
        ):
            code, answer = await _post(http, base + "/sim/faults", raw)
            assert code == 201
            ids.append(answer["id"])
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15
        while d.node.monitor.health.state[5] == Health.HEALTHY:
            assert loop.time() < deadline, "the hot spot never made core 5 unhealthy"
            await asyncio.sleep(0.05)
        for fid in ids:
            async with http.delete(f"{base}/sim/faults/{fid}") as r:
                assert r.status == 204
        deadline = loop.time() + 30
        while not np.all(d.node.monitor.health.state == Health.HEALTHY):
            assert loop.time() < deadline, "a core stayed unhealthy after the fault was cleared"
            await asyncio.sleep(0.1)


def test_json_is_parsed_with_bounded_depth_and_finite_numbers() -> None:
    assert body.nesting_depth(b'{"a": "[[[[{{{{"}') == 1
    assert body.loads(b'{"a": [1, {"b": 2.5}]}') == {"a": [1, {"b": 2.5}]}
    for raw in (DEEP, b"[NaN]", b"[Infinity]", b"[1e400]", b"{", b"\xff"):
        with pytest.raises(body.BodyError):
            body.loads(raw)


def test_fault_access_modes() -> None:

    loopback = FaultAccess(mode="loopback")
    token = FaultAccess(mode="token", token=b"0123456789abcdef")
    off = FaultAccess(mode="off")
    assert off.refuse(make_mocked_request("POST", "/sim/faults")) is not None
    assert token.refuse(make_mocked_request("POST", "/sim/faults")) is not None
    good = make_mocked_request("POST", "/sim/faults", headers={"Authorization": "Bearer 0123456789abcdef"})
    assert token.refuse(good) is None
    bad = make_mocked_request("POST", "/sim/faults", headers={"Authorization": "Bearer 0123456789abcdeX"})
    answer = token.refuse(bad)
    assert answer is not None
    assert answer.status == 401
    assert json.loads(answer.text or "")["error"].startswith("fault injection needs the bearer token")
    assert loopback.refuse(make_mocked_request("POST", "/sim/faults")) is not None  # no peer: not loopback


def test_token_mode_without_a_token_refuses_to_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SNNRM_SIM_FAULT_TOKEN", raising=False)
    with pytest.raises(ConfigError, match="SNNRM_SIM_FAULT_TOKEN"):
        fault_access(Config(sim_fault_injection="token"))
    monkeypatch.setenv("SNNRM_SIM_FAULT_TOKEN", "x" * 32)
    assert fault_access(Config(sim_fault_injection="token")).token == b"x" * 32


async def test_readyz_is_false_while_allocations_cannot_be_written(daemon: tuple[Daemon, str]) -> None:
    """Issue 16: a state dir that stops being writable (here: replaced by a file) makes /readyz 503 naming the flag;
    once it is back, ready again."""
    d, base = daemon
    state = d.config.state_dir
    async with aiohttp.ClientSession() as http:
        async with http.get(base + "/readyz") as r:
            assert r.status == 200
        moved = state.with_name("state-moved")
        state.rename(moved)
        state.write_text("not a directory\n")
        async with http.get(base + "/readyz") as r:
            assert r.status == 503
            assert "--state-dir" in await r.text()
        state.unlink()
        moved.rename(state)
        async with http.get(base + "/readyz") as r:
            assert r.status == 200
