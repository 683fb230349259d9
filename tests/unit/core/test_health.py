"""Health state machine: hysteresis, dwell times, hard faults, staleness."""

import numpy as np

from snnrm.core.health import Health, HealthMachine, HealthReason, HealthSettings, Observation

S = HealthSettings(enter_dwell=0.5, recover_dwell=2.0, stale_unknown=0.5, stale_unhealthy=2.0)


def obs(
    t: float,
    n: int = 1,
    *,
    fill: float = 0.1,
    eff: float = 1.0,
    link: float = 0.0,
    failed: bool = False,
    last_valid: float | None = None,
) -> Observation:
    return Observation(
        now=t,
        failed=np.full(n, failed),
        last_valid=np.full(n, t if last_valid is None else last_valid),
        queue_fill=np.full(n, fill),
        efficiency=np.full(n, eff),
        router_link_utilization=np.full(n, link),
    )


def run(m: HealthMachine, t0: float, t1: float, **kw: float | bool) -> list[tuple[float, int]]:
    changes = []
    for t in np.round(np.arange(t0, t1, 0.1), 3):
        if m.step(obs(float(t), **kw))[0]:  # type: ignore[arg-type]
            changes.append((float(t), int(m.state[0])))
    return changes


def test_saturation_must_last_the_dwell_time() -> None:
    m = HealthMachine(1, S)
    assert run(m, 0.0, 0.4, fill=0.9) == []
    assert run(m, 0.4, 1.0, fill=0.9) == [(0.5, Health.UNHEALTHY)]
    assert HealthReason.names(int(m.reasons[0])) == ["queue-saturated"]


def test_recovery_needs_exit_threshold_for_recover_dwell() -> None:
    m = HealthMachine(1, S)
    run(m, 0.0, 1.0, fill=0.9)
    # 0.6 is below the entry threshold but above the exit one: still saturated.
    assert run(m, 1.0, 5.0, fill=0.6) == []
    assert run(m, 5.0, 8.0, fill=0.1) == [(7.0, Health.HEALTHY)]


def test_a_noisy_core_never_flaps() -> None:
    m = HealthMachine(1, S)
    changes = []
    for i, t in enumerate(np.arange(0, 20, 0.1)):
        fill = 0.95 if i % 3 == 0 else 0.1  # spikes above the threshold, never for long
        if m.step(obs(float(t), fill=fill))[0]:
            changes.append(t)
    assert changes == []


def test_low_efficiency_and_congested_links_are_reasons() -> None:
    m = HealthMachine(2, S)
    for t in np.arange(0, 1, 0.1):
        o = obs(float(t), 2)
        m.step(Observation(o.now, o.failed, o.last_valid, o.queue_fill, np.array([0.5, 1.0]), np.array([0.0, 0.99])))
    assert m.state.tolist() == [Health.UNHEALTHY, Health.UNHEALTHY]
    assert HealthReason.names(int(m.reasons[0])) == ["low-efficiency"]
    assert HealthReason.names(int(m.reasons[1])) == ["link-congested"]


def test_pushed_failure_acts_at_once_and_a_stale_frame_does_not_undo_it() -> None:
    m = HealthMachine(1, S)
    m.fail(np.array([0]), failed=True, now=1.0)
    assert m.state[0] == Health.UNHEALTHY
    m.step(obs(0.95))  # a frame sampled before the fault, folded in after it
    assert m.state[0] == Health.UNHEALTHY
    m.fail(np.array([0]), failed=False, now=2.0)
    assert run(m, 2.0, 3.9) == []  # recovery still waits for good telemetry
    assert run(m, 3.9, 4.5) == [(4.0, Health.HEALTHY)]


def test_silence_is_unknown_then_unhealthy() -> None:
    m = HealthMachine(1, S)
    m.step(obs(0.0))
    assert not m.step(obs(0.4, last_valid=0.0))[0]
    m.step(obs(0.6, last_valid=0.0))
    assert m.state[0] == Health.UNKNOWN
    m.step(obs(2.1, last_valid=0.0))
    assert m.state[0] == Health.UNHEALTHY
    assert "stale" in HealthReason.names(int(m.reasons[0]))
