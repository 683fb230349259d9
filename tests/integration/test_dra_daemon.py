"""The whole daemon with ``--dra``: the simulator's telemetry drives the DRA driver's slices, taints and health
(the apiserver is the in-memory fake), ``--dra on`` leaves only event throughput to the device plugin, and with
hooks and placement on as well all three share the one Kubernetes client."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest

from snnrm.app import Daemon
from snnrm.config import Config
from snnrm.config_hooks import HooksConfig
from snnrm.config_placement import PlacementConfig
from snnrm.core.devices import EVENT_THROUGHPUT, NEURON_CORE
from snnrm.core.dra import DRIVER, NO_EXECUTE
from snnrm.core.summary import ANNOTATION
from snnrm.kube.api import NODES, Resource
from snnrm.kubelet.protos.pluginregistration.v1 import api_pb2 as reg
from snnrm.kubelet.standin import KubeletStandIn
from snnrm.testing.fake_apiserver import FakeApiServer
from snnrm.testing.fake_cluster import FakeClusterApi

NODE = "sim-node"


@pytest.fixture
def short_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="snnrm-drad-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def config(d: Path, dra: str) -> Config:
    return Config(
        backend="sim",
        kubelet_dir=d / "dp",
        http="127.0.0.1:0",
        sim_chips=2,
        sim_cores=16,
        state_dir=d / "state",
        cdi_dir=d / "cdi",
        sample_period=0.05,
        dra=dra,  # type: ignore[arg-type]
        dra_registry_dir=d / "plugins_registry",
        dra_plugin_dir=d / "plugins" / DRIVER,
        dra_node_name=NODE,
    )


@contextlib.asynccontextmanager
async def daemon(cfg: Config, kube: FakeClusterApi) -> AsyncIterator[Daemon]:
    d = await Daemon.create(cfg, dra_kube=kube)
    stop = asyncio.Event()
    task = asyncio.create_task(d.run(stop=stop))
    try:
        await asyncio.wait_for(d.http_started.wait(), 10)
        yield d
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


def devices(kube: FakeClusterApi) -> dict[str, dict[str, Any]]:
    return {d["name"]: d for s in kube.pool_slices(NODE, DRIVER) for d in s["spec"].get("devices", [])}


async def until(pred: Any, within: float = 10.0) -> None:
    async with asyncio.timeout(within):
        while not pred():  # noqa: ASYNC110 - the fake apiserver's state has no event to await
            await asyncio.sleep(0.02)


async def test_dra_only_publishes_measured_devices_and_taints_a_failed_core(short_dir: Path) -> None:
    kube = FakeClusterApi()
    kube.add_node(NODE)
    async with daemon(config(short_dir, "only"), kube) as d:
        assert d.plugins == []  # no device plugins at all
        assert d.dra is not None
        await until(lambda: len(devices(kube)) > 0)
        devs = devices(kube)
        # sim loihi2 preset: 1 core per router, so 16 groups per chip; 2 chips; 2 throughput devices.
        assert sum(1 for n in devs if "-g" in n) == 32
        assert {"chip0", "chip1", "chip0-ev", "chip1-ev"} <= set(devs)
        attrs = devs["chip1-g3"]["attributes"]
        assert attrs["model"] == {"string": "loihi2"}
        assert attrs["generation"] == {"int": 2}
        assert attrs["chip"] == {"int": 1}
        assert "taints" not in devs["chip1-g3"]
        async with aiohttp.ClientSession() as http:
            body = {"kind": "core-failure", "chip": 1, "core": 3}
            async with http.post(f"http://127.0.0.1:{d.http_port}/sim/faults", json=body) as r:
                assert r.status == 201
        await until(lambda: "taints" in devices(kube)["chip1-g3"])
        assert devices(kube)["chip1-g3"]["taints"][0]["effect"] == NO_EXECUTE
        assert devices(kube)["chip1"]["taints"][0]["effect"] == NO_EXECUTE
        assert "taints" not in devices(kube)["chip0"]
        # The kubelet's plugin watcher would find the registration socket and learn the service endpoint.
        sock = short_dir / "plugins_registry" / f"{DRIVER}-reg.sock"
        async with grpc.aio.insecure_channel(f"unix://{sock}") as ch:
            get_info = ch.unary_unary(
                "/pluginregistration.Registration/GetInfo",
                request_serializer=reg.InfoRequest.SerializeToString,
                response_deserializer=reg.PluginInfo.FromString,
            )
            info = await get_info(reg.InfoRequest(), timeout=5)
        assert info.endpoint == str(short_dir / "plugins" / DRIVER / "dra.sock")
        # Bytes that are not the request: INVALID_ARGUMENT in one line (grpc's default was UNKNOWN + a traceback).
        async with grpc.aio.insecure_channel(f"unix://{info.endpoint}") as ch:
            prepare = ch.unary_unary("/k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin/NodePrepareResources")
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await prepare(b"\xff\xff\xff\xff", timeout=5)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "not a valid protobuf message" in (refused.value.details() or "")


async def test_dra_on_splits_resources_between_the_two_apis(short_dir: Path) -> None:
    kube = FakeClusterApi()
    cfg = config(short_dir, "on")
    async with KubeletStandIn(cfg.kubelet_dir) as kubelet, daemon(cfg, kube) as d:
        assert [p.resource for p in d.plugins] == [EVENT_THROUGHPUT]
        await kubelet.wait_capacity(EVENT_THROUGHPUT, len(d.node.blocks.ids), within=10)
        assert kubelet.capacity(NEURON_CORE) == 0
        await until(lambda: len(devices(kube)) > 0)
        assert not any(n.endswith("-ev") for n in devices(kube))  # throughput is the device plugin's here


def test_bad_tile_is_a_config_error() -> None:
    from snnrm.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"--dra-tile \(or SNNRM_DRA_TILE\): expected a tile"):
        load_config(None, dra_tile="3")


async def test_hooks_dra_and_placement_share_one_client_from_one_kubeconfig(short_dir: Path) -> None:
    """A daemon with scaling hooks, DRA and placement on, all pointed at one kubeconfig (an in-memory apiserver over
    HTTP): the credentials are loaded once, one client is made, and each feature does its writes through it: the
    slices are published, the node summary annotated, and an Alertmanager notification scales the Deployment."""
    token = short_dir / "hooks-token"
    token.write_text("hooks-token-of-this-test\n")
    async with FakeApiServer() as server:
        kubeconfig = server.kubeconfig(short_dir / "kubeconfig")
        server.api.add_node(NODE)
        deployments = Resource("apps", "v1", "deployments")
        server.api.put(deployments, {"metadata": {"name": "stage1", "namespace": "snn"}, "spec": {"replicas": 1}})
        rule = {
            "name": "scale-stage1",
            "match": ['alertname="SnnrmEventQueueSaturated"'],
            "action": "scale",
            "target": {"kind": "Deployment", "namespace": "snn", "name": "stage1"},
            "max_replicas": 3,
        }
        cfg = config(short_dir, "only").model_copy(
            update={
                "kubeconfig": kubeconfig,
                "hooks": HooksConfig.model_validate({"token_file": str(token), "rules": [rule]}),
                "placement": PlacementConfig(enabled=True, node_name=NODE),
            }
        )
        d = await Daemon.create(cfg)
        assert len(d.kube) == 1
        assert d.hooks is not None
        assert d.placement is not None
        assert d.hooks.runner.kube is d.placement.api
        stop = asyncio.Event()
        task = asyncio.create_task(d.run(stop=stop))
        try:
            await asyncio.wait_for(d.http_started.wait(), 10)
            await until(lambda: len(server.api.pool_slices(NODE, DRIVER)) > 0)
            await until(
                lambda: ANNOTATION in (server.api.get_obj(NODES, NODE) or {})["metadata"].get("annotations", {})
            )
            note = {
                "version": "4",
                "groupKey": "{}:{}",
                "status": "firing",
                "receiver": "snnrm-hooks",
                "groupLabels": {},
                "commonLabels": {},
                "commonAnnotations": {},
                "externalURL": "http://am",
                "alerts": [
                    {
                        "status": "firing",
                        "labels": {"alertname": "SnnrmEventQueueSaturated"},
                        "annotations": {},
                        "startsAt": "2026-11-25T10:00:00Z",
                        "endsAt": "0001-01-01T00:00:00Z",
                        "fingerprint": "0123456789abcdef",
                    }
                ],
            }
            headers = {"Authorization": "Bearer hooks-token-of-this-test"}
            async with (
                aiohttp.ClientSession() as http,
                http.post(f"http://127.0.0.1:{d.http_port}/hooks/alertmanager", json=note, headers=headers) as r,
            ):
                body = await r.json()
            assert r.status == 200, body
            assert [x["outcome"] for x in body["results"]] == ["applied"]
            assert (server.api.get_obj(deployments, "stage1", "snn") or {})["spec"]["replicas"] == 2
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
        assert len(d.kube) == 0  # closed with the daemon
