"""The NIR interpreter against independent references: hand-computed cases per primitive, and a whole graph
against a direct numpy implementation of the same equations written here (not by calling the interpreter)."""

from __future__ import annotations

import nir
import numpy as np
import pytest

from snnrm.job.interpret import GraphError, conv2d, run, sum_pool2d

DT = 1e-3


def _lif(n: int, tau: float = 0.01, thr: float = 1.0) -> nir.LIF:
    return nir.LIF(tau=np.full(n, tau), r=np.ones(n), v_leak=np.zeros(n), v_threshold=np.full(n, thr))


def test_lif_by_hand() -> None:
    """tau 10 ms, dt 1 ms, constant input 5: v_t = v + 0.1 (5 - v) -> 0.5, 0.95, 1.355 (spike, reset to 0)."""
    nodes = {"in": nir.Input(input_type={"input": np.array([1])}), "lif": _lif(1)}
    res = run(nodes, [("in", "lif")], {"in": np.full((6, 1), 5.0)}, dt=DT, keep=["lif"])
    spikes = [float(y[0]) for y in res.outputs["lif"]]
    # steps: 0.5, 0.95, 1.355 -> spike, reset 0; 0.5, 0.95, 1.355 -> spike
    assert spikes == [0, 0, 1, 0, 0, 1]
    assert res.spikes["lif"] == 2
    assert res.rates_hz()["lif"] == pytest.approx(2 / 0.006)


def test_if_integrator_and_li_by_hand() -> None:
    n_in = nir.Input(input_type={"input": np.array([1])})
    if_node = nir.IF(r=np.array([100.0]), v_threshold=np.array([0.25]))
    integ = nir.I(r=np.array([100.0]))
    li = nir.LI(tau=np.array([0.002]), r=np.array([1.0]), v_leak=np.array([0.0]))
    nodes = {"in": n_in, "if": if_node, "i": integ, "li": li}
    edges = [("in", "if"), ("in", "i"), ("in", "li")]
    res = run(nodes, edges, {"in": np.ones((3, 1))}, dt=DT, keep=["if", "i", "li"])
    # IF: v += 1e-3 * 100 * 1 = 0.1 per step: 0.1, 0.2, 0.3 -> spike at step 3
    assert [float(y[0]) for y in res.outputs["if"]] == [0, 0, 1]
    # I: 0.1, 0.2, 0.3
    np.testing.assert_allclose([float(y[0]) for y in res.outputs["i"]], [0.1, 0.2, 0.3])
    # LI with dt/tau = 0.5: v = v + 0.5 (1 - v): 0.5, 0.75, 0.875
    np.testing.assert_allclose([float(y[0]) for y in res.outputs["li"]], [0.5, 0.75, 0.875])


def test_cuba_lif_by_hand() -> None:
    """dt/tau_syn = 0.5, dt/tau_mem = 0.5, input 4: i = 2, 3; v = 1, 2 -> spike at step 2 (threshold 1.5)."""
    node = nir.CubaLIF(
        tau_syn=np.array([0.002]),
        tau_mem=np.array([0.002]),
        r=np.array([1.0]),
        v_leak=np.array([0.0]),
        v_threshold=np.array([1.5]),
    )
    nodes = {"in": nir.Input(input_type={"input": np.array([1])}), "c": node}
    res = run(nodes, [("in", "c")], {"in": np.full((2, 1), 4.0)}, dt=DT, keep=["c"])
    assert [float(y[0]) for y in res.outputs["c"]] == [0, 1]


def test_conv2d_matches_a_direct_loop() -> None:
    rng = np.random.default_rng(1)
    x = rng.random((3, 7, 6))
    w = rng.normal(size=(4, 3, 3, 2))
    b = rng.normal(size=4)
    got = conv2d(x, w, b, stride=(2, 1), padding=(1, 0), dilation=1, groups=1)
    xp = np.pad(x, ((0, 0), (1, 1), (0, 0)))
    h_out = (7 + 2 - 3) // 2 + 1
    w_out = 6 - 2 + 1
    want = np.zeros((4, h_out, w_out))
    for o in range(4):
        for i in range(h_out):
            for j in range(w_out):
                want[o, i, j] = np.sum(xp[:, 2 * i : 2 * i + 3, j : j + 2] * w[o]) + b[o]
    np.testing.assert_allclose(got, want)


def test_sum_pool_by_hand() -> None:
    x = np.arange(16.0).reshape(1, 4, 4)
    np.testing.assert_allclose(sum_pool2d(x, (2, 2), (2, 2), (0, 0))[0], [[10, 18], [42, 50]])


def test_delay_shifts_by_whole_steps() -> None:
    nodes = {"in": nir.Input(input_type={"input": np.array([2])}), "d": nir.Delay(delay=np.array([0.002, 0.0]))}
    res = run(nodes, [("in", "d")], {"in": np.array([[1.0, 1.0], [0, 0], [0, 0], [0, 0]])}, dt=DT, keep=["d"])
    np.testing.assert_allclose(np.stack(res.outputs["d"]), [[0, 1], [0, 0], [1, 0], [0, 0]])


def test_unknown_node_type_is_named() -> None:
    nodes = {
        "in": nir.Input(input_type={"input": np.array([1])}),
        "pool": nir.AvgPool2d(kernel_size=np.array([2, 2]), stride=np.array([2, 2]), padding=np.array([0, 0])),
    }
    with pytest.raises(GraphError, match="node 'pool': type AvgPool2d is not supported"):
        run(nodes, [("in", "pool")], {"in": np.zeros((1, 1))}, dt=DT)


def test_shape_mismatch_is_named() -> None:
    nodes = {"in": nir.Input(input_type={"input": np.array([3])}), "fc": nir.Linear(weight=np.ones((2, 4)))}
    with pytest.raises(GraphError, match="node 'fc'"):
        run(nodes, [("in", "fc")], {"in": np.zeros((1, 3))}, dt=DT)


def test_whole_recurrent_graph_matches_direct_numpy() -> None:
    """Input -> Affine -> LIF (with a recurrent Linear back into it) -> Affine -> LIF: spike counts equal the same
    equations written out directly, with the recurrent edge one step late."""
    rng = np.random.default_rng(7)
    n_in, n_h, n_out, steps = 12, 20, 5, 300
    w1, b1 = rng.normal(0, 1.0, (n_h, n_in)), rng.normal(0, 0.1, n_h)
    wr = rng.normal(0, 0.5, (n_h, n_h))
    w2, b2 = rng.normal(0, 1.0, (n_out, n_h)), np.zeros(n_out)
    tau_h, tau_o, thr = 0.005, 0.01, 0.8
    nodes = {
        "in": nir.Input(input_type={"input": np.array([n_in])}),
        "fc1": nir.Affine(weight=w1, bias=b1),
        "h": _lif(n_h, tau_h, thr),
        "rec": nir.Linear(weight=wr),
        "fc2": nir.Affine(weight=w2, bias=b2),
        "o": _lif(n_out, tau_o, thr),
    }
    edges = [("in", "fc1"), ("fc1", "h"), ("h", "rec"), ("rec", "h"), ("h", "fc2"), ("fc2", "o")]
    x = (rng.random((steps, n_in)) < 0.2).astype(float)
    res = run(nodes, edges, {"in": x}, dt=DT)

    v_h, v_o = np.zeros(n_h), np.zeros(n_out)
    z_h_prev = np.zeros(n_h)
    count_h = count_o = 0.0
    for t in range(steps):
        cur = w1 @ x[t] + b1 + wr @ z_h_prev
        v_h = v_h + DT / tau_h * (-v_h + cur)
        z_h = v_h > thr
        v_h[z_h] = 0.0
        v_o = v_o + DT / tau_o * (-v_o + w2 @ z_h + b2)
        z_o = v_o > thr
        v_o[z_o] = 0.0
        z_h_prev = z_h.astype(float)
        count_h += z_h.sum()
        count_o += z_o.sum()
    assert count_h > 0
    assert res.spikes["h"] == count_h
    assert res.spikes["o"] == count_o
    assert res.spikes["in"] == x.sum()


def test_conv_pool_graph_over_several_blocks_matches_direct_numpy() -> None:
    """Input -> Conv2d -> LIF -> SumPool2d -> LIF over 300 steps (more than two of the interpreter's blocks of
    steps): spike counts and the last layer's spikes equal a step-by-step loop written here."""
    rng = np.random.default_rng(3)
    steps, c_in, c_out, hw = 300, 1, 2, 6
    w = rng.normal(0, 1.0, (c_out, c_in, 3, 3))
    b = rng.normal(0, 0.1, c_out)
    tau, thr = 0.004, 0.5
    nodes = {
        "in": nir.Input(input_type={"input": np.array([c_in, hw, hw])}),
        "conv": nir.Conv2d(input_shape=(hw, hw), weight=w, stride=1, padding=1, dilation=1, groups=1, bias=b),
        "pool": nir.SumPool2d(kernel_size=np.array([2, 2]), stride=np.array([2, 2]), padding=np.array([0, 0])),
    }
    nodes["l1"] = nir.LIF(
        tau=np.full((c_out, hw, hw), tau),
        r=np.ones((c_out, hw, hw)),
        v_leak=np.zeros((c_out, hw, hw)),
        v_threshold=np.full((c_out, hw, hw), thr),
    )
    nodes["l2"] = nir.LIF(
        tau=np.full((c_out, 3, 3), tau),
        r=np.ones((c_out, 3, 3)),
        v_leak=np.zeros((c_out, 3, 3)),
        v_threshold=np.full((c_out, 3, 3), thr),
    )
    edges = [("in", "conv"), ("conv", "l1"), ("l1", "pool"), ("pool", "l2")]
    x = (rng.random((steps, c_in, hw, hw)) < 0.3).astype(float)
    res = run(nodes, edges, {"in": x}, dt=DT, keep=["l2"])

    v1, v2 = np.zeros((c_out, hw, hw)), np.zeros((c_out, 3, 3))
    n1 = n2 = 0.0
    last = []
    for t in range(steps):
        xp = np.pad(x[t], ((0, 0), (1, 1), (1, 1)))
        cur = np.zeros((c_out, hw, hw))
        for o in range(c_out):
            for i in range(hw):
                for j in range(hw):
                    cur[o, i, j] = np.sum(xp[:, i : i + 3, j : j + 3] * w[o]) + b[o]
        v1 = v1 + DT / tau * (-v1 + cur)
        z1 = v1 > thr
        v1[z1] = 0.0
        pooled = z1.reshape(c_out, 3, 2, 3, 2).sum(axis=(2, 4))
        v2 = v2 + DT / tau * (-v2 + pooled)
        z2 = v2 > thr
        v2[z2] = 0.0
        n1 += z1.sum()
        n2 += z2.sum()
        last.append(z2.astype(float))
    assert n1 > 0
    assert n2 > 0
    assert res.spikes["l1"] == n1
    assert res.spikes["l2"] == n2
    np.testing.assert_array_equal(np.stack(res.outputs["l2"]), np.stack(last))


@pytest.mark.parametrize(
    ("node", "message"),
    [
        (nir.LIF(tau=np.zeros(1), r=np.ones(1), v_leak=np.zeros(1), v_threshold=np.ones(1)), "time constant tau"),
        (nir.Scale(scale=np.array([np.nan])), "scale holds NaN or infinite values"),
        (nir.Delay(delay=np.array([1e4])), "delay of 10,000,000 steps"),
        (nir.Scale(scale=np.array([1e308])), "values overflow to inf or NaN"),
    ],
)
def test_run_refuses_parameters_it_cannot_run_naming_the_node(node: object, message: str) -> None:
    nodes = {"in": nir.Input(input_type={"input": np.array([1])}), "n": node}
    with pytest.raises(GraphError, match="node 'n'") as err:
        run(nodes, [("in", "n")], {"in": np.full((3, 1), 10.0)}, dt=DT)
    assert message in str(err.value)
