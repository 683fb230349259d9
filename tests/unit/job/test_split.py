"""The pure split: cuts only where spikes cross, recurrent cycles kept whole, balanced stages, clear errors."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from snnrm.core.split import CoreBudget, GraphNode, SplitError, split, units

BUDGET = CoreBudget(neurons_per_core=100, synapses_per_core=1_000_000, cores_per_chip=64)
"""Neurons bind in these tests (100 per core) unless a test says otherwise."""


def chain(sizes: list[int]) -> tuple[list[GraphNode], list[tuple[str, str]]]:
    """input -> (fc_i -> lif_i)* : each layer fc_i holds sizes[i-1] x sizes[i] synapses."""
    nodes = [GraphNode("input", "Input", spiking=True)]
    edges = []
    prev, width = "input", 10
    for i, n in enumerate(sizes):
        nodes += [
            GraphNode(f"fc{i}", "Affine", synapses=width * n),
            GraphNode(f"lif{i}", "LIF", neurons=n, spiking=True),
        ]
        edges += [(prev, f"fc{i}"), (f"fc{i}", f"lif{i}")]
        prev, width = f"lif{i}", n
    return nodes, edges


def test_balanced_cut_after_spiking_layers_with_traffic() -> None:
    nodes, edges = chain([400, 400, 100, 100])
    rates = {"input": 1000.0, "lif0": 8000.0, "lif1": 4000.0, "lif2": 2000.0, "lif3": 500.0}
    stages = split(nodes, edges, rates, BUDGET, stages=2)
    # 400 | 400 + 100 + 100 neurons: 4 | 6 cores is the best balance (4+4 | 2 would be 8 | 2)
    assert [s.nodes for s in stages] == [("input", "fc0", "lif0"), ("fc1", "lif1", "fc2", "lif2", "fc3", "lif3")]
    assert [s.cores for s in stages] == [4, 6]
    for s in stages:
        assert s.nodes[-1].startswith(("lif", "input"))  # every stage ends on a spiking node
    assert stages[0].in_keps == pytest.approx(1.0)
    # the input's spikes arrive from outside: counted once, as "in", not again as traffic inside stage 0
    assert stages[0].internal_keps == pytest.approx(0.0)
    assert stages[1].internal_keps == pytest.approx(6.0)  # lif1 and lif2 feed layers of their own stage
    # what stage 0 sends is what stage 1 receives
    assert stages[0].out_keps == pytest.approx(stages[1].in_keps)
    assert sum(s.neurons for s in stages) == 1000


def test_minimises_the_largest_stage() -> None:
    nodes, edges = chain([500, 100, 100, 100, 100, 100])
    stages = split(nodes, edges, {}, BUDGET, stages=2)
    # the 500-neuron layer alone is 5 cores, the other five layers 5 cores: 5 | 5 beats any other cut
    assert [s.cores for s in stages] == [5, 5]
    assert stages[0].nodes == ("input", "fc0", "lif0")


def test_recurrent_cycle_stays_in_one_stage() -> None:
    nodes, edges = chain([100, 100, 100])
    nodes.append(GraphNode("rec", "Linear", synapses=100 * 100))
    edges += [("lif1", "rec"), ("rec", "lif1")]
    groups = units(nodes, edges)
    assert ("lif1", "rec") in groups or ("rec", "lif1") in groups
    for k in (2, 3):
        stages = split(nodes, edges, {}, BUDGET, stages=k)
        owner = {n: s.index for s in stages for n in s.nodes}
        assert owner["lif1"] == owner["rec"]


def test_too_many_stages_names_the_cycle_that_cannot_be_cut() -> None:
    nodes, edges = chain([100, 100, 100])
    nodes.append(GraphNode("rec", "Linear", synapses=100 * 100))
    edges += [("lif1", "rec"), ("rec", "lif1")]
    with pytest.raises(SplitError, match=r"at most 3 .*recurrent cycle lif1,rec stays in one stage"):
        split(nodes, edges, {}, BUDGET, stages=4)


def test_max_cores_gives_fewest_stages() -> None:
    nodes, edges = chain([300, 300, 300, 300])
    stages = split(nodes, edges, {}, BUDGET, max_cores_per_stage=7)
    assert len(stages) == 2
    assert all(s.cores <= 7 for s in stages)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"stages": 9}, "--stages 9 is more than the graph allows: at most 3"),
        ({"max_cores_per_stage": 2}, "cannot be split and need 3 cores, more than --max-cores-per-stage 2"),
        ({"stages": 0}, "--stages must be >= 1"),
        ({}, "exactly one of --stages and --max-cores-per-stage"),
    ],
)
def test_impossible_requests_are_named(kwargs: dict[str, int], message: str) -> None:
    nodes, edges = chain([300, 200, 100])
    with pytest.raises(SplitError, match=message.replace("(", r"\(")):
        split(nodes, edges, {}, BUDGET, **kwargs)


def test_a_layer_larger_than_a_chip_is_named() -> None:
    nodes, edges = chain([100, 100_000])
    with pytest.raises(SplitError, match="node 'lif1' needs 1000 cores, more than one chip of the preset has"):
        split(nodes, edges, {}, BUDGET, stages=1)


def test_synapses_bind_when_they_need_more_cores() -> None:
    nodes, edges = chain([100, 100])
    budget = CoreBudget(neurons_per_core=100, synapses_per_core=1_000, cores_per_chip=64)
    stages = split(nodes, edges, {}, budget, stages=1)
    assert stages[0].cores == (10 * 100 + 100 * 100) // 1_000  # 11,000 synapses -> 11 cores, neurons only 2


@given(st.lists(st.integers(1, 900), min_size=1, max_size=8), st.integers(1, 8))
def test_any_split_covers_every_node_once_in_order(sizes: list[int], k: int) -> None:
    nodes, edges = chain(sizes)
    big = CoreBudget(neurons_per_core=100, synapses_per_core=10**9, cores_per_chip=10**6)
    try:
        stages = split(nodes, edges, {}, big, stages=k)
    except SplitError:
        assert k > len(sizes)
        return
    assert [n for s in stages for n in s.nodes] == [n.name for n in nodes]
    assert len(stages) == k


EVENTS = CoreBudget(neurons_per_core=100, synapses_per_core=0, cores_per_chip=64, events_per_core=1000.0)
"""100 neurons or 1,000 events per second per core, whichever binds."""


def test_a_stage_with_few_neurons_and_many_spikes_gets_the_cores_its_events_need() -> None:
    nodes, edges = chain([50, 50])
    # lif0 (50 neurons, 1 core by neurons) receives the input's 4,500 events/s: 5 cores at 1,000 per core;
    # lif1 receives lif0's 800 spikes/s and needs one core.
    rates = {"input": 4500.0, "lif0": 800.0, "lif1": 10.0}
    first, second = split(nodes, edges, rates, EVENTS, stages=2)
    assert (first.cores, first.bound) == (5, "events")
    assert first.in_keps + first.internal_keps == pytest.approx(4.5)
    assert (second.cores, second.bound) == (1, "neurons")
    # Without an event bound the same stage is sized by its neurons.
    assert split(nodes, edges, rates, BUDGET, stages=2)[0].cores == 1


def test_events_decide_where_the_graph_is_cut() -> None:
    nodes, edges = chain([50, 50, 50])
    # by neurons any 2-stage cut is 1 | 1 core; by events lif1 is busy (6,000 spikes/s into lif2), so the best
    # balance keeps it away from the input's stage: input+lif0 | lif1+lif2 would be 2 | 7, input+lif0+lif1 | lif2 is
    # 3 | 6
    rates = {"input": 1000.0, "lif0": 1500.0, "lif1": 6000.0, "lif2": 5.0}
    stages = split(nodes, edges, rates, EVENTS, stages=2)
    assert [s.cores for s in stages] == [3, 6]
    assert [s.bound for s in stages] == ["events", "events"]


def test_a_layer_whose_events_need_more_than_a_chip_is_named() -> None:
    nodes, edges = chain([50])
    with pytest.raises(SplitError, match=r"node 'fc0' needs 100 cores, more than one chip .* its events decide"):
        split(nodes, edges, {"input": 100_000.0}, EVENTS, stages=1)
