"""The extender on input it used to crash on: an empty index, unknown and duplicate nodes, pods of the wrong
shape, and resource quantities in every syntax Kubernetes accepts (or refuses)."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest
import structlog
from aiohttp.test_utils import TestClient, TestServer
from placement_helpers import TOPO, index_with, stage_pod, summary

import snnrm.http.extender as http_extender
from snnrm.core.cluster import ClusterIndex
from snnrm.core.devices import EVENT_THROUGHPUT, NEURON_CORE
from snnrm.core.extender import PodInputError, check_pod, demand_of, filter_nodes, prioritize
from snnrm.core.jobs import QUANTITY_MAX, ContractError, QuantityError, device_count, quantity_int, requested, stage_of
from snnrm.http.extender import ExtenderContext, build_extender_app

NOW = 1000.0
N = TOPO.n_cores  # 32
NO_SUMMARY = "no snnrm summary"


def _pod(amount: Any, resource: str = NEURON_CORE) -> dict[str, Any]:
    return {
        "metadata": {"name": "p", "namespace": "default"},
        "spec": {"containers": [{"name": "c", "resources": {"limits": {resource: amount}}}]},
    }


@dataclass
class Extender:
    client: TestClient[Any, Any]
    log: structlog.testing.CapturingLogger

    async def post(self, verb: str, body: Any) -> tuple[int, Any]:
        async with self.client.post(f"/extender/{verb}", json=body) as r:
            return r.status, await r.json(content_type=None)

    def logged(self, method: str) -> list[str]:
        return [str(c.args[0]) for c in self.log.calls if c.method_name == method]


ExtenderFor = Callable[[ClusterIndex], Any]


@pytest.fixture
async def extender_for(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[ExtenderFor]:
    """``await extender_for(index)``: the extender's HTTP app over ``index``, its log captured."""
    log = structlog.testing.CapturingLogger()
    monkeypatch.setattr(http_extender, "log", log)
    clients: list[TestClient[Any, Any]] = []

    async def start(index: ClusterIndex) -> Extender:
        client: TestClient[Any, Any] = TestClient(
            TestServer(build_extender_app(ExtenderContext(index, clock=lambda: NOW)))
        )
        await client.start_server()
        clients.append(client)
        return Extender(client, log)

    yield start
    for c in clients:
        await c.close()


# -- quantities -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("2", 2),
        (2, 2),
        (2.0, 2),
        ("+2", 2),
        (" 3 ", 3),  # the apiserver trims
        ("007", 7),
        ("1e3", 1000),
        ("1E3", 1000),
        ("1e+3", 1000),
        ("15e-1", None),
        ("1.5e1", 15),
        ("1k", 1000),
        ("1M", 10**6),
        ("1G", 10**9),
        ("1T", 10**12),
        ("1P", 10**15),
        ("1E", 10**18),  # exa, not an exponent
        ("2000m", 2),
        ("1Ki", 1024),
        ("1Mi", 2**20),
        ("1Gi", 2**30),
        ("1Ti", 2**40),
        ("1Pi", 2**50),
        ("0.5Ki", 512),
        ("1.", 1),
        ("0", 0),
        ("-0", 0),
        ("0.0", 0),
        ("-4", -4),
        ("999999Ei", QUANTITY_MAX),
        ("9223372036854775808", QUANTITY_MAX),
        (10**30, QUANTITY_MAX),
        ("1e999999999999", QUANTITY_MAX),
        ("-999999Ei", -QUANTITY_MAX),
    ],
)
def test_quantities_parse_as_kubernetes_reads_them(raw: Any, value: int | None) -> None:
    """Decimal and binary suffixes and exponents all scale; huge magnitudes saturate instead of overflowing."""
    if value is None:
        with pytest.raises(QuantityError):
            quantity_int(raw)
    else:
        assert quantity_int(raw) == value


@pytest.mark.parametrize(
    "raw",
    [
        "0.5",
        "1.5",
        ".5",
        "1m",
        "1500m",
        "1e-3",
        "5e-1",
        "1e-99999999999",  # tiny, and no 10**99999999999 is built to find out
        "1u",
        "1n",
        0.5,
        "",
        ".",
        "abc",
        "1 k",
        "1e",
        "1ki",
        "1KB",
        "k",
        "Ki",
        "1.2.3",
        "0x10",
        "1_000",
        "nan",
        "inf",
        "9" * 100,
        True,
        [1],
        {"v": 1},
    ],
)
def test_fractions_and_junk_are_not_whole_quantities(raw: Any) -> None:
    with pytest.raises(QuantityError):
        quantity_int(raw)


def test_a_device_count_is_whole_non_negative_and_names_the_resource() -> None:
    assert device_count(None, NEURON_CORE) == 0  # a null quantity decodes as zero
    assert device_count("1e1", NEURON_CORE) == 10
    with pytest.raises(QuantityError, match=r"snnrm.io/neuron-core must be a whole number .*'0.5'"):
        device_count("0.5", NEURON_CORE)
    with pytest.raises(QuantityError, match=r"snnrm.io/event-throughput must not be negative, got '-1'"):
        device_count("-1", EVENT_THROUGHPUT)


def test_requested_reads_exponents_and_saturates_instead_of_growing() -> None:
    """'1E3' used to read as 0 cores; two saturated containers still add up to no more than QUANTITY_MAX."""
    assert requested(_pod("1E3")) == 1000
    pod = _pod("999999Ei")
    pod["spec"]["containers"].append(copy.deepcopy(pod["spec"]["containers"][0]))
    assert requested(pod) == QUANTITY_MAX
    with pytest.raises(QuantityError, match=r"0\.5"):
        requested(_pod("0.5"))


def test_a_stage_pod_with_a_fractional_request_breaks_the_contract() -> None:
    """The controller's informer reads pods through stage_of and handles only ContractError."""
    pod = stage_pod("j", 0, 2, 4)
    pod["spec"]["containers"][0]["resources"] = {"limits": {NEURON_CORE: "0.5"}}
    with pytest.raises(ContractError, match="whole number"):
        stage_of(pod)


# -- the pure decisions -------------------------------------------------------------------------------------------


def test_an_empty_index_fails_every_node_for_good_and_scores_it_zero() -> None:
    """No summary yet: each node is unresolvable with the reason, duplicates included, and scores 0."""
    demand = demand_of(_pod("2"))
    names = ["n1", "n2", "n1"]
    res = filter_nodes(ClusterIndex(), demand, names, now=NOW)
    assert res.passed == []
    assert res.failed == {}
    assert set(res.unresolvable) == {"n1", "n2"}
    assert all(NO_SUMMARY in r for r in res.unresolvable.values())
    assert prioritize(ClusterIndex(), demand, names, now=NOW) == [0, 0, 0]
    stage = demand_of(stage_pod("j", 1, 2, 4))
    assert prioritize(ClusterIndex(), stage, names, now=NOW) == [0, 0, 0]


def test_unknown_and_duplicate_names_next_to_known_nodes() -> None:
    idx = index_with({"a": summary(NOW)})
    names = ["ghost", "a", "ghost", "a"]
    res = filter_nodes(idx, demand_of(_pod("4")), names, now=NOW)
    assert res.passed == ["a", "a"]
    assert list(res.unresolvable) == ["ghost"]
    scores = prioritize(idx, demand_of(_pod("4")), names, now=NOW)
    assert scores[0] == scores[2] == 0
    assert scores[1] == scores[3] > 0


def test_a_huge_request_fits_no_node() -> None:
    idx = index_with({"a": summary(NOW)})
    demand = demand_of(_pod("999999Ei"))
    assert demand.cores == QUANTITY_MAX
    res = filter_nodes(idx, demand, ["a"], now=NOW)
    assert res.passed == []
    assert f"needs {QUANTITY_MAX} free healthy" in res.failed["a"]
    assert prioritize(idx, demand, ["a"], now=NOW) == [0]


def test_demand_of_refuses_a_pod_of_the_wrong_shape_by_field() -> None:
    with pytest.raises(PodInputError, match=r"Pod\.spec\.containers\[0\]\.resources must be an object"):
        demand_of({"spec": {"containers": [{"resources": "x"}]}})
    check_pod({"metadata": None, "spec": {"containers": None}})  # null is the zero value, as Go decodes it


# -- through HTTP -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        {"NodeNames": ["n1"]},
        {"NodeNames": ["n1", "n1", "n2"]},
        {"Nodes": {"items": [{"metadata": {"name": "n1"}}]}},
        {"Nodes": {"items": [{"metadata": {"name": "n1"}}, {"metadata": {"name": "n1"}}]}},
    ],
)
async def test_an_empty_index_answers_no_summary_not_an_error(extender_for: ExtenderFor, args: Any) -> None:
    """Before the controller has any summary, a valid pod gets reasons and zero scores, not an IndexError."""
    ext = await extender_for(ClusterIndex())
    status, body = await ext.post("filter", {"Pod": _pod("2"), **args})
    assert status == 200
    assert body["Error"] == ""
    assert body.get("NodeNames", []) == []
    assert body.get("Nodes", {"items": []}) == {"items": []}
    assert body["FailedNodes"] == {}
    assert NO_SUMMARY in body["FailedAndUnresolvableNodes"]["n1"]
    status, scores = await ext.post("prioritize", {"Pod": _pod("2"), **args})
    assert status == 200
    assert {h["Score"] for h in scores} == {0}
    assert ext.logged("exception") == []


async def test_known_unknown_and_duplicate_nodes_over_http(extender_for: ExtenderFor) -> None:
    ext = await extender_for(index_with({"a": summary(NOW), "full": summary(NOW, free=1)}))
    names = ["a", "ghost", "full", "ghost", "a"]
    status, body = await ext.post("filter", {"Pod": _pod("4"), "NodeNames": names})
    assert status == 200
    assert body["Error"] == ""
    assert set(body["NodeNames"]) == {"a"}
    assert "needs 4" in body["FailedNodes"]["full"]
    assert NO_SUMMARY in body["FailedAndUnresolvableNodes"]["ghost"]
    status, scores = await ext.post("prioritize", {"Pod": _pod("4"), "NodeNames": names})
    assert status == 200
    assert [h["Host"] for h in scores] == names
    assert [h["Score"] > 0 for h in scores] == [True, False, False, False, True]


_BAD_PODS: list[tuple[Callable[[dict[str, Any]], None], str]] = [
    (lambda p: p.update(metadata="x"), "Pod.metadata must be an object"),
    (lambda p: p.update(spec="x"), "Pod.spec must be an object"),
    (lambda p: p.update(status=[]), "Pod.status must be an object"),
    (lambda p: p["spec"].update(containers="abc"), "Pod.spec.containers must be a list"),
    (lambda p: p["spec"].update(containers=[1]), "Pod.spec.containers[0] must be an object"),
    (lambda p: p["spec"].update(containers=["x"]), "Pod.spec.containers[0] must be an object"),
    (lambda p: p["spec"].update(initContainers={"a": 1}), "Pod.spec.initContainers must be a list"),
    (lambda p: p["spec"]["containers"][0].update(resources="x"), "Pod.spec.containers[0].resources must be"),
    (lambda p: p["spec"]["containers"][0]["resources"].update(limits="x"), "resources.limits must be an object"),
    (lambda p: p["spec"]["containers"][0]["resources"].update(limits=[]), "resources.limits must be an object"),
    (lambda p: p["spec"]["containers"][0]["resources"].update(requests=7), "resources.requests must be an object"),
    (lambda p: p["spec"].update(nodeName={"n": 1}), "Pod.spec.nodeName must be a string"),
    (lambda p: p["spec"].update(schedulingGates="g"), "Pod.spec.schedulingGates must be a list"),
    (lambda p: p["metadata"].update(annotations=["a", "b"]), "Pod.metadata.annotations must be an object"),
    (lambda p: p["metadata"].update(labels=["a"]), "Pod.metadata.labels must be an object"),
    (lambda p: p["metadata"]["labels"].update({"snnrm.io/stage": 1}), "Pod.metadata.labels[snnrm.io/stage]"),
    (lambda p: p["metadata"]["annotations"].update({"snnrm.io/stage-health": {}}), "stage-health] must be a str"),
    (lambda p: p["metadata"].update(name=5), "Pod.metadata.name must be a string"),
]


@pytest.mark.parametrize(("mutate", "message"), _BAD_PODS)
async def test_a_pod_of_the_wrong_shape_is_a_400_naming_the_field(
    extender_for: ExtenderFor, mutate: Callable[[dict[str, Any]], None], message: str
) -> None:
    """Bad input is the sender's fault: a 400 that names the field and a warning, never a logged traceback."""
    ext = await extender_for(index_with({"a": summary(NOW)}))
    pod = stage_pod("j", 0, 2, 4)
    mutate(pod)
    for verb in ("filter", "prioritize"):
        status, body = await ext.post(verb, {"Pod": pod, "NodeNames": ["a"]})
        assert status == 400, (verb, body)
        assert message in body["Error"]
    assert ext.logged("exception") == []
    assert ext.logged("warning") == ["extender_bad_request"] * 2


@pytest.mark.parametrize(
    ("resource", "amount"),
    [
        (NEURON_CORE, "0.5"),
        (NEURON_CORE, "1500m"),
        (NEURON_CORE, "-1"),
        (NEURON_CORE, "abc"),
        (NEURON_CORE, True),
        (EVENT_THROUGHPUT, "0.5"),
        (EVENT_THROUGHPUT, "-3"),
    ],
)
async def test_a_count_kubernetes_would_refuse_is_a_400_naming_resource_and_value(
    extender_for: ExtenderFor, resource: str, amount: Any
) -> None:
    """Fractional, negative or junk extended-resource counts used to read as 0 cores and pass every node."""
    ext = await extender_for(index_with({"a": summary(NOW)}))
    for verb in ("filter", "prioritize"):
        status, body = await ext.post(verb, {"Pod": _pod(amount, resource), "NodeNames": ["a"]})
        assert status == 400
        assert resource in body["Error"]
        assert repr(amount) in body["Error"]
        assert "Pod.spec.containers[0].resources.limits" in body["Error"]
    assert ext.logged("exception") == []


@pytest.mark.parametrize(("amount", "needs"), [("1e3", 1000), ("1E3", 1000), ("999999Ei", QUANTITY_MAX)])
async def test_exponents_and_huge_counts_fit_no_small_node(extender_for: ExtenderFor, amount: str, needs: int) -> None:
    ext = await extender_for(index_with({"a": summary(NOW)}))
    status, body = await ext.post("filter", {"Pod": _pod(amount), "NodeNames": ["a"]})
    assert status == 200
    assert body["NodeNames"] == []
    assert f"needs {needs} free healthy" in body["FailedNodes"]["a"]
    status, scores = await ext.post("prioritize", {"Pod": _pod(amount), "NodeNames": ["a"]})
    assert (status, scores) == (200, [{"Host": "a", "Score": 0}])


async def test_extender_args_of_the_wrong_shape_are_a_400(extender_for: ExtenderFor) -> None:
    ext = await extender_for(ClusterIndex())
    for args, message in [
        ({"Pod": "x", "NodeNames": []}, "ExtenderArgs.Pod"),
        ({"Pod": {}, "NodeNames": [1]}, "ExtenderArgs.NodeNames"),
        ({"Pod": {}, "Nodes": "x"}, "ExtenderArgs.Nodes"),
        ({"Pod": {}, "Nodes": {"items": "x"}}, "ExtenderArgs.Nodes"),
        ({"Pod": {}, "Nodes": {"items": [{"metadata": "x"}]}}, "metadata.name"),
    ]:
        status, body = await ext.post("filter", args)
        assert (status, message in body["Error"]) == (400, True), body
    assert ext.logged("exception") == []


class _BrokenIndex(ClusterIndex):
    def slot_of(self, name: str) -> int:
        raise RuntimeError("index is broken")


async def test_a_real_internal_failure_still_takes_the_catch_all(extender_for: ExtenderFor) -> None:
    """Only bad input is a 400: a bug while deciding is a filter Error (the scheduler retries), with traceback."""
    ext = await extender_for(_BrokenIndex())
    status, body = await ext.post("filter", {"Pod": _pod("2"), "NodeNames": ["a"]})
    assert status == 200
    assert "index is broken" in body["Error"]
    assert ext.logged("exception") == ["extender_filter_failed"]
