"""The job contract parser and the node summary wire format: round trips and untrusted input."""

from __future__ import annotations

import base64
import json
import zlib

import numpy as np
import pytest
from placement_helpers import TOPO, stage_pod, summary

from snnrm.core.jobs import LATENCY_SLO, STAGES, ContractError, parse_duration, requested, stage_of
from snnrm.core.summary import NodeSummary, PublishPolicy, SummaryError, should_publish


def test_stage_pod_is_read_with_every_field() -> None:
    """Labels and annotations become a StageRef; the last stage sends nothing onward."""
    pod = stage_pod("j", 2, 3, 8, keps=77, gated=True, annotations={LATENCY_SLO: "2ms"})
    ref = stage_of(pod)
    assert ref is not None
    assert (ref.job, ref.index, ref.stages, ref.cores, ref.gated) == ("j", 2, 3, 8, True)
    assert ref.out_keps == 0.0  # last stage
    assert ref.latency_slo_s == pytest.approx(2e-3)
    first = stage_of(stage_pod("j", 0, 3, 8, keps=77))
    assert first is not None
    assert first.out_keps == 77
    assert first.in_keps == 50


def test_pod_without_job_label_is_not_a_stage() -> None:
    assert stage_of({"metadata": {"name": "x"}}) is None


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda p: p["metadata"]["labels"].pop("snnrm.io/stage"), "snnrm.io/stage"),
        (lambda p: p["metadata"]["annotations"].update({STAGES: "two"}), "snnrm.io/stages"),
        (lambda p: p["metadata"]["labels"].update({"snnrm.io/stage": "5"}), "within"),
        (lambda p: p["metadata"]["annotations"].update({"snnrm.io/spike-rate-keps": "nan"}), "spike-rate"),
        (lambda p: p["metadata"]["annotations"].update({"snnrm.io/spike-rate-keps": "-1"}), "spike-rate"),
        (lambda p: p["spec"]["containers"][0]["resources"].clear(), "request"),
        (lambda p: p["metadata"]["annotations"].update({LATENCY_SLO: "soon"}), "latency-slo"),
    ],
)
def test_broken_contract_is_reported_with_the_field(mutate: object, message: str) -> None:
    """Each contract violation raises ContractError naming what is wrong."""
    pod = stage_pod("j", 0, 2, 4)
    mutate(pod)  # type: ignore[operator]
    with pytest.raises(ContractError, match=message):
        stage_of(pod)


def test_requested_counts_app_containers_and_the_largest_init_container() -> None:
    pod = {
        "spec": {
            "containers": [
                {"resources": {"limits": {"snnrm.io/neuron-core": "3"}}},
                {"resources": {"requests": {"snnrm.io/neuron-core": 2}}},
            ],
            "initContainers": [{"resources": {"limits": {"snnrm.io/neuron-core": "7"}}}],
        }
    }
    assert requested(pod) == 7
    pod["spec"]["initContainers"] = []
    assert requested(pod) == 5


def test_durations() -> None:
    assert parse_duration("500us") == pytest.approx(5e-4)
    assert parse_duration("0.5s") == pytest.approx(0.5)
    assert parse_duration("20") == pytest.approx(2e-5)


def test_summary_round_trips() -> None:
    """encode/decode keeps the free bitmap, geometry and per-chip numbers."""
    s = summary(free=13, fill=0.25, link=0.5)
    back = NodeSummary.decode(s.encode())
    assert np.array_equal(back.free, s.free)
    assert back.geometry_key == s.geometry_key
    assert back.free_count == 13
    assert back.chip_fill == pytest.approx(s.chip_fill, abs=1e-3)
    assert back.topology().n_cores == TOPO.n_cores
    assert len(s.encode()) < 400


@pytest.mark.parametrize(
    "raw",
    [
        "not json",
        "[]",
        json.dumps({"v": 99}),
        json.dumps({"v": 1, "g": [1, 2, 3]}),
        json.dumps({"v": 1, "g": [1000, 1000, 1000, 1, 1]}),
        json.dumps({"v": 1, "g": [1, 2, 2, 1, 1], "free": "!!!", "t": 1, "h": 1}),
        # a bitmap of the wrong length
        json.dumps({"v": 1, "g": [1, 2, 2, 1, 1], "free": base64.b64encode(zlib.compress(b"\xff" * 9)).decode()}),
        # a decompression bomb stays bounded
        json.dumps({"v": 1, "g": [1, 2, 2, 1, 1], "free": base64.b64encode(zlib.compress(b"\0" * 10**6)).decode()}),
    ],
)
def test_bad_summaries_are_refused(raw: str) -> None:
    with pytest.raises(SummaryError):
        NodeSummary.decode(raw)


def test_bad_per_chip_numbers_are_refused() -> None:
    body = json.loads(summary().encode())
    body["fill"] = [float("nan")] * 2
    with pytest.raises(SummaryError, match="fill"):
        NodeSummary.decode(json.dumps(body))


def test_publishing_is_rate_limited_with_a_heartbeat() -> None:
    """Nothing before min_interval; a change after it; an unchanged summary only at max_interval."""
    policy = PublishPolicy(min_interval=5, max_interval=60, fill_delta=0.1)
    prev = summary(now=100.0)
    assert should_publish(None, prev, policy)
    assert not should_publish(prev, summary(now=102.0, free=3), policy)
    assert should_publish(prev, summary(now=106.0, free=3), policy)
    assert not should_publish(prev, summary(now=106.0, fill=0.05), policy)
    assert should_publish(prev, summary(now=106.0, fill=0.2), policy)
    assert not should_publish(prev, summary(now=150.0), policy)
    assert should_publish(prev, summary(now=160.0), policy)
