"""Splitting a spiking network graph into pipeline stages: pure, data in and data out.

A network arrives as nodes (each with its neurons, the synapses it holds and whether it emits spikes) and directed
edges. Recurrent cycles are condensed first (a cycle never crosses a stage boundary), the condensed graph is
ordered topologically, and the order is cut into contiguous stages. A cut is legal only where every edge that
crosses it starts at a spiking node (or at the input): what travels between stages is spikes, never a layer's
membrane currents. Among the legal cuts, dynamic programming picks the split that minimises the largest stage in
neuron cores (``--stages N``), or the fewest stages under a core budget (``--max-cores-per-stage``). Every stage
is a connected group of nodes and fits one chip of the target.

The traffic figures follow from per-node spike rates (spikes per second over all of a node's neurons): what a
stage sends to later stages, receives from earlier ones (or from the input) and keeps inside, in KEPS.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


class SplitError(ValueError):
    """The graph cannot be split as asked; the message names the node or the field."""


@dataclass(frozen=True, slots=True)
class GraphNode:
    """One node of the network as the splitter sees it."""

    name: str
    kind: str
    """The NIR primitive (``LIF``, ``Affine``, ``Input``...)."""
    neurons: int = 0
    """Neurons this node holds on the chip (0 for weights, pooling, reshapes)."""
    synapses: int = 0
    """Synaptic weights this node holds (0 for neurons and reshapes)."""
    spiking: bool = False
    """Its output is spikes (neuron layers that fire, and the input): only after such nodes may a stage end."""


@dataclass(frozen=True, slots=True)
class CoreBudget:
    """What one neuron core holds and how many cores one chip has (from the hardware preset)."""

    neurons_per_core: int
    synapses_per_core: int
    """0 means the preset publishes no synapse bound."""
    cores_per_chip: int
    events_per_core: float = 0.0
    """Events per second one core may be planned to process (0: no bound). A stage with few neurons and many
    incoming spikes needs more cores than its neurons do: its synaptic work is spread over the cores that hold its
    neurons, and one core at its full event rate queues without bound."""

    def cores_for(self, neurons: int, synapses: int, events_hz: float = 0.0) -> int:
        """Cores a group of nodes needs: neurons, synapses or events per second, whichever binds (at least one)."""
        by_neurons = math.ceil(neurons / self.neurons_per_core)
        by_synapses = math.ceil(synapses / self.synapses_per_core) if self.synapses_per_core > 0 else 0
        by_events = math.ceil(events_hz / self.events_per_core - 1e-9) if self.events_per_core > 0 else 0
        return max(1, by_neurons, by_synapses, by_events)

    def bound(self, neurons: int, synapses: int, events_hz: float = 0.0) -> str:
        """What decides :meth:`cores_for`: ``events`` when they ask for more cores than the neurons and synapses
        do, else ``synapses`` when they ask for more than the neurons, else ``neurons``."""
        if self.cores_for(neurons, synapses, events_hz) > self.cores_for(neurons, synapses):
            return "events"
        if self.cores_for(0, synapses) > self.cores_for(neurons, 0):
            return "synapses"
        return "neurons"


@dataclass(frozen=True, slots=True)
class Stage:
    """One pipeline stage of the split."""

    index: int
    nodes: tuple[str, ...]
    neurons: int
    synapses: int
    cores: int
    in_keps: float
    """Spikes per second arriving from earlier stages or the input, in KEPS."""
    out_keps: float
    """Spikes per second sent to later stages, in KEPS (what ``snnrm.io/spike-rate-keps`` carries)."""
    internal_keps: float
    """Spikes per second that stay inside the stage, in KEPS."""
    bound: str = "neurons"
    """What decided ``cores``: ``neurons``, ``synapses`` or ``events`` (:meth:`CoreBudget.bound`)."""


def _components(names: Sequence[str], succ: Mapping[str, list[str]]) -> list[list[str]]:
    """Strongly connected components (Tarjan, iterative), in reverse topological order of the condensation."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for root in names:
        if root in index:
            continue
        work: list[tuple[str, int]] = [(root, 0)]
        while work:
            v, i = work.pop()
            if i == 0:
                index[v] = low[v] = counter
                counter += 1
                stack.append(v)
                on_stack.add(v)
            children = succ.get(v, [])
            if i < len(children):
                work.append((v, i + 1))
                w = children[i]
                if w not in index:
                    work.append((w, 0))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                out.append(comp)
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[v])
    return out


def units(nodes: Sequence[GraphNode], edges: Sequence[tuple[str, str]]) -> list[tuple[str, ...]]:
    """The graph's nodes grouped into indivisible units (recurrent cycles), in topological order."""
    names = [n.name for n in nodes]
    known = set(names)
    succ: dict[str, list[str]] = {n: [] for n in names}
    for a, b in edges:
        if a not in known or b not in known:
            raise SplitError(f"edge {a} -> {b} names a node the graph does not have")
        succ[a].append(b)
    comps = _components(names, succ)
    order = {n: i for i, n in enumerate(names)}
    return [tuple(sorted(c, key=order.__getitem__)) for c in reversed(comps)]


@dataclass(frozen=True, slots=True)
class _Plan:
    groups: list[tuple[str, ...]]
    cut_ok: list[bool]
    """cut_ok[i]: a stage may end after unit i."""


def _plan(nodes: Sequence[GraphNode], edges: Sequence[tuple[str, str]]) -> _Plan:
    groups = units(nodes, edges)
    by_name = {n.name: n for n in nodes}
    position = {name: i for i, group in enumerate(groups) for name in group}
    cut_ok = [True] * len(groups)
    for a, b in edges:
        pa, pb = position[a], position[b]
        if pa == pb:
            continue
        # The edge crosses every cut between its two units; it may only if it carries spikes.
        if not by_name[a].spiking:
            for i in range(pa, pb):
                cut_ok[i] = False
    return _Plan(groups, cut_ok)


def _connected(group_names: Sequence[str], edges: Sequence[tuple[str, str]]) -> bool:
    names = set(group_names)
    if len(names) <= 1:
        return True
    adj: dict[str, set[str]] = {n: set() for n in names}
    for a, b in edges:
        if a in names and b in names:
            adj[a].add(b)
            adj[b].add(a)
    first = next(iter(names))
    seen = {first}
    todo = [first]
    while todo:
        for w in adj[todo.pop()] - seen:
            seen.add(w)
            todo.append(w)
    return seen == names


def split(
    nodes: Sequence[GraphNode],
    edges: Sequence[tuple[str, str]],
    rates_hz: Mapping[str, float],
    budget: CoreBudget,
    *,
    stages: int | None = None,
    max_cores_per_stage: int | None = None,
) -> list[Stage]:
    """Cut the graph into ``stages`` stages (balanced by cores), or into as few as fit ``max_cores_per_stage``.

    ``rates_hz`` gives each spiking node's total spike rate (spikes per second over its neurons); nodes that are
    missing count as silent. Raises :class:`SplitError` naming what makes the request impossible.
    """
    if (stages is None) == (max_cores_per_stage is None):
        raise SplitError("give exactly one of --stages and --max-cores-per-stage")
    if stages is not None and stages < 1:
        raise SplitError(f"--stages must be >= 1, got {stages}")
    if max_cores_per_stage is not None and max_cores_per_stage < 1:
        raise SplitError(f"--max-cores-per-stage must be >= 1, got {max_cores_per_stage}")
    for name, rate in rates_hz.items():
        if not (math.isfinite(rate) and rate >= 0):
            raise SplitError(f"spike rate of node {name!r} must be a finite number >= 0, got {rate!r}")
    plan = _plan(nodes, edges)
    by_name = {n.name: n for n in nodes}
    n_units = len(plan.groups)
    if n_units == 0:
        raise SplitError("the graph has no nodes")
    neurons = [sum(by_name[x].neurons for x in g) for g in plan.groups]
    synapses = [sum(by_name[x].synapses for x in g) for g in plan.groups]
    pre_n = [0]
    pre_s = [0]
    for a, b in zip(neurons, synapses, strict=True):
        pre_n.append(pre_n[-1] + a)
        pre_s.append(pre_s[-1] + b)
    sources = _spiking_sources(nodes, edges)

    def need(i: int, j: int) -> int:
        members = [x for g in plan.groups[i:j] for x in g]
        return budget.cores_for(pre_n[j] - pre_n[i], pre_s[j] - pre_s[i], _events_hz(members, sources, rates_hz))

    for k, g in enumerate(plan.groups):
        # An input, pooling or reshape node runs on the cores of the stage it joins: the pieces are checked below.
        if (neurons[k] or synapses[k]) and need(k, k + 1) > budget.cores_per_chip:
            why = budget.bound(neurons[k], synapses[k], _events_hz(g, sources, rates_hz))
            raise SplitError(
                f"node {g[0]!r} needs {need(k, k + 1)} cores, more than one chip of the preset has "
                f"({budget.cores_per_chip}): its {why} decide"
            )
    cap = budget.cores_per_chip if max_cores_per_stage is None else min(max_cores_per_stage, budget.cores_per_chip)
    costs: dict[tuple[int, int], int | None] = {}

    def cost(i: int, j: int) -> int | None:
        """Cores of a stage holding units i..j-1, or None when that stage is not allowed."""
        if (i, j) in costs:
            return costs[i, j]
        cores: int | None = need(i, j)
        if pre_n[j] == pre_n[i] or cores is None or cores > cap:
            cores = None  # a stage of only input, weights or reshapes runs nothing: it joins a neighbour
        elif not _connected([x for g in plan.groups[i:j] for x in g], edges):
            cores = None
        costs[i, j] = cores
        return cores

    ends = [j for j in range(1, n_units) if plan.cut_ok[j - 1]] + [n_units]
    starts = [0, *ends[:-1]]
    # The smallest pieces a split can make: between two consecutive legal cuts.
    pieces = list(zip(starts, ends, strict=True))
    most = sum(1 for i, j in pieces if pre_n[j] > pre_n[i])
    if stages is not None and stages > most:
        cycles = "; ".join(f"recurrent cycle {','.join(g)} stays in one stage" for g in plan.groups if len(g) > 1)
        raise SplitError(
            f"--stages {stages} is more than the graph allows: at most {most} (a stage ends after a spiking "
            f"layer and holds neurons{'; ' + cycles if cycles else ''})"
        )
    for i, j in pieces:
        if need(i, j) > cap:
            names = ",".join(x for g in plan.groups[i:j] for x in g)
            limit = f"--max-cores-per-stage {cap}" if max_cores_per_stage is not None else f"one chip ({cap} cores)"
            members = [x for g in plan.groups[i:j] for x in g]
            why = budget.bound(pre_n[j] - pre_n[i], pre_s[j] - pre_s[i], _events_hz(members, sources, rates_hz))
            raise SplitError(
                f"nodes {names} cannot be split and need {need(i, j)} cores, more than {limit}: their {why} decide"
            )
    # best[k][j]: (largest stage, total cores) over splits of units 0..j-1 into k stages, ending at a legal end.
    inf = (math.inf, math.inf)
    best: list[dict[int, tuple[float, float]]] = [{0: (0.0, 0.0)}]
    back: list[dict[int, int]] = [{}]
    k_max = stages if stages is not None else len(ends)
    for k in range(1, k_max + 1):
        row: dict[int, tuple[float, float]] = {}
        prev_row: dict[int, int] = {}
        for j in ends:
            choice = inf
            arg = -1
            for i in starts:
                if i >= j or i not in best[k - 1]:
                    continue
                c = cost(i, j)
                if c is None:
                    continue
                worst, total = best[k - 1][i]
                cand = (max(worst, c), total + c)
                if cand < choice:
                    choice, arg = cand, i
            if arg >= 0:
                row[j] = choice
                prev_row[j] = arg
        best.append(row)
        back.append(prev_row)
        if stages is None and n_units in row:
            break
    k_final = stages if stages is not None else len(best) - 1
    if n_units not in best[k_final]:
        what = f"{stages} stages" if stages is not None else f"stages of at most {cap} cores"
        raise SplitError(
            f"no split into {what}: some group of layers between two spiking layers is too large or not "
            "connected (try more stages or a larger --max-cores-per-stage)"
        )
    cuts = []
    j = n_units
    for k in range(k_final, 0, -1):
        i = back[k][j]
        cuts.append((i, j))
        j = i
    cuts.reverse()
    return _stages(cuts, plan.groups, nodes, edges, rates_hz, budget)


def _stages(
    cuts: list[tuple[int, int]],
    groups: list[tuple[str, ...]],
    nodes: Sequence[GraphNode],
    edges: Sequence[tuple[str, str]],
    rates_hz: Mapping[str, float],
    budget: CoreBudget,
) -> list[Stage]:
    by_name = {n.name: n for n in nodes}
    stage_of = {x: k for k, (i, j) in enumerate(cuts) for g in groups[i:j] for x in g}
    sends: dict[str, set[int]] = {}
    for a, b in edges:
        sends.setdefault(a, set()).add(stage_of[b])
    out = []
    for k, (i, j) in enumerate(cuts):
        members = tuple(x for g in groups[i:j] for x in g)
        n = sum(by_name[x].neurons for x in members)
        s = sum(by_name[x].synapses for x in members)
        out_hz = internal_hz = in_hz = 0.0
        for x in members:
            rate = rates_hz.get(x, 0.0) if by_name[x].spiking else 0.0
            targets = sends.get(x, set())
            out_hz += rate * len({t for t in targets if t > k})
            if by_name[x].kind == "Input":
                in_hz += rate  # arrives from outside: "in" only, not traffic inside the stage as well
            elif k in targets:
                internal_hz += rate
        for a in {a for a, b in edges if stage_of[b] == k and stage_of[a] < k and by_name[a].spiking}:
            in_hz += rates_hz.get(a, 0.0)
        events = in_hz + internal_hz
        out.append(
            Stage(
                k,
                members,
                n,
                s,
                budget.cores_for(n, s, events),
                in_hz / 1e3,
                out_hz / 1e3,
                internal_hz / 1e3,
                budget.bound(n, s, events),
            )
        )
    return out


def _spiking_sources(nodes: Sequence[GraphNode], edges: Sequence[tuple[str, str]]) -> dict[str, set[str]]:
    """For each node, the spiking nodes with an edge into it; an input node lists itself (its events arrive from
    outside the graph)."""
    spiking = {n.name for n in nodes if n.spiking}
    out: dict[str, set[str]] = {n.name: {n.name} for n in nodes if n.kind == "Input"}
    for a, b in edges:
        if a in spiking:
            out.setdefault(b, set()).add(a)
    return out


def _events_hz(members: Sequence[str], sources: Mapping[str, set[str]], rates_hz: Mapping[str, float]) -> float:
    """Spikes per second a stage of ``members`` processes: every spiking node with an edge into it (in it or
    before it) counts once, the input's events too. The same total as a stage's ``in_keps + internal_keps``."""
    senders = {a for x in members for a in sources.get(x, ())}
    return sum(rates_hz.get(a, 0.0) for a in senders)
