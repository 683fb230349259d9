"""The hook planner: one action per firing episode, cooldown per target, undo exactly once, bounded memory."""

from __future__ import annotations

import pytest
from hook_payloads import alert, payload
from hypothesis import given
from hypothesis import strategies as st

from snnrm.core.hooks import (
    HOOK_LABEL,
    Action,
    Decision,
    HookPlanner,
    HookSpec,
    Matcher,
    Outcome,
    Skip,
    Target,
    bounded,
    parse_notification,
)

QUEUE = Matcher.parse('alertname="SnnrmEventQueueSaturated"')
TARGET = Target("Deployment", "snn", "stage1", "replicas")


def scale_hook(name: str = "scale-stage1", *, cooldown: float = 60.0, undo: bool = True) -> HookSpec:
    return HookSpec(
        name,
        (QUEUE,),
        Action.SCALE,
        TARGET,
        step=2,
        min_replicas=1,
        max_replicas=6,
        cooldown=cooldown,
        undo_on_resolve=undo,
    )


def outcomes(items: list[Decision | Skip]) -> list[str]:
    return [
        f"{i.hook.name}:{'undo' if i.undo else 'apply'}"
        if isinstance(i, Decision)
        else f"{i.hook_name}:{i.outcome.value}"
        for i in items
    ]


def carry_out(planner: HookPlanner, items: list[Decision | Skip], now: float, applied: int = 2) -> None:
    for d in items:
        if isinstance(d, Decision):
            planner.record(d, applied_delta=-d.delta if d.undo else applied, now=now)


def test_a_firing_alert_acts_once_however_often_it_is_resent() -> None:
    """Alertmanager re-sends on group_interval/repeat_interval and on 5xx: the same episode acts once."""
    p = HookPlanner((scale_hook(),))
    n = parse_notification(payload(alert()))
    first = p.plan(n, now=0.0)
    assert outcomes(first) == ["scale-stage1:apply"]
    assert isinstance(first[0], Decision)
    assert first[0].delta == 2
    carry_out(p, first, now=0.0)
    for t in (30.0, 300.0, 4 * 3600.0):
        assert outcomes(p.plan(n, now=t)) == ["scale-stage1:duplicate"]


def test_an_action_not_carried_out_is_planned_again() -> None:
    """Until record() says it was done (e.g. the apiserver was down), a re-send is planned again."""
    p = HookPlanner((scale_hook(),))
    n = parse_notification(payload(alert()))
    assert outcomes(p.plan(n, now=0.0)) == ["scale-stage1:apply"]
    assert outcomes(p.plan(n, now=1.0)) == ["scale-stage1:apply"]


def test_cooldown_holds_other_alerts_on_the_same_target_then_lets_them_act() -> None:
    p = HookPlanner((scale_hook(cooldown=60.0),))
    carry_out(p, p.plan(parse_notification(payload(alert(fingerprint="aa"))), now=0.0), now=0.0)
    second = parse_notification(payload(alert(fingerprint="bb", chip="1")))
    assert outcomes(p.plan(second, now=30.0)) == ["scale-stage1:cooldown"]
    assert outcomes(p.plan(second, now=61.0)) == ["scale-stage1:apply"]


def test_an_action_that_changed_nothing_starts_no_cooldown() -> None:
    """At a bound nothing changed, so another alert may still act (e.g. after someone lowered replicas)."""
    p = HookPlanner((scale_hook(cooldown=60.0),))
    carry_out(p, p.plan(parse_notification(payload(alert(fingerprint="aa"))), now=0.0), now=0.0, applied=0)
    assert outcomes(p.plan(parse_notification(payload(alert(fingerprint="bb"))), now=1.0)) == ["scale-stage1:apply"]


def test_resolve_undoes_exactly_what_was_applied_once() -> None:
    p = HookPlanner((scale_hook(),))
    carry_out(p, p.plan(parse_notification(payload(alert())), now=0.0), now=0.0, applied=1)  # clamped: +1 only
    resolved = parse_notification(payload(alert(status="resolved")))
    undo = p.plan(resolved, now=10.0)
    assert outcomes(undo) == ["scale-stage1:undo"]
    assert isinstance(undo[0], Decision)
    assert undo[0].delta == 1
    carry_out(p, undo, now=10.0)
    assert outcomes(p.plan(resolved, now=20.0)) == ["scale-stage1:nothing-to-undo"]
    assert len(p) == 0


def test_without_undo_on_resolve_a_resolve_does_nothing() -> None:
    p = HookPlanner((scale_hook(undo=False),))
    carry_out(p, p.plan(parse_notification(payload(alert())), now=0.0), now=0.0)
    assert outcomes(p.plan(parse_notification(payload(alert(status="resolved"))), now=5.0)) == [
        "scale-stage1:nothing-to-undo"
    ]


def test_a_new_firing_episode_acts_again() -> None:
    """Same fingerprint, new startsAt: the alert resolved and came back."""
    p = HookPlanner((scale_hook(cooldown=0.0),))
    carry_out(p, p.plan(parse_notification(payload(alert())), now=0.0), now=0.0)
    again = parse_notification(payload(alert(starts_at="2026-11-25T12:00:00Z")))
    assert outcomes(p.plan(again, now=100.0)) == ["scale-stage1:apply"]


def test_dedup_is_per_group_key() -> None:
    p = HookPlanner((scale_hook(cooldown=0.0),))
    carry_out(p, p.plan(parse_notification(payload(alert(), group_key="g1")), now=0.0), now=0.0)
    assert outcomes(p.plan(parse_notification(payload(alert(), group_key="g2")), now=1.0)) == ["scale-stage1:apply"]


def test_only_matching_hooks_run_and_the_hook_label_narrows_to_a_configured_one() -> None:
    other = HookSpec(
        "webhook-oncall", (Matcher.parse('severity=~"warning|critical"'),), Action.WEBHOOK, url="http://127.0.0.1:1/"
    )
    p = HookPlanner((scale_hook(), other))
    both = p.plan(parse_notification(payload(alert())), now=0.0)
    assert outcomes(both) == ["scale-stage1:apply", "webhook-oncall:apply"]
    narrowed = p.plan(parse_notification(payload(alert(**{HOOK_LABEL: "webhook-oncall"}))), now=0.0)
    assert outcomes(narrowed) == ["webhook-oncall:apply"]
    unknown = p.plan(parse_notification(payload(alert(**{HOOK_LABEL: "rm-rf"}))), now=0.0)
    assert outcomes(unknown) == [f"rm-rf:{Outcome.UNKNOWN_HOOK.value}"]
    unmatched = p.plan(parse_notification(payload(alert("SomethingElse", severity="info"))), now=0.0)
    assert unmatched == []


def test_memory_is_bounded_by_count_and_age() -> None:
    p = HookPlanner((scale_hook(cooldown=0.0),), ttl=100.0, max_entries=3)
    for i in range(5):
        carry_out(p, p.plan(parse_notification(payload(alert(fingerprint=f"f{i}"))), now=float(i)), now=float(i))
    assert len(p) == 3
    p.plan(parse_notification(payload()), now=1000.0)
    assert len(p) == 0


@given(current=st.integers(0, 50), delta=st.integers(-20, 20), lo=st.integers(0, 10), span=st.integers(0, 30))
def test_bounded_never_leaves_the_bounds_it_was_inside_and_never_moves_the_wrong_way(
    current: int, delta: int, lo: int, span: int
) -> None:
    hi = lo + span
    new = bounded(current, delta, lo, hi)
    if lo <= current <= hi:
        assert lo <= new <= hi
    assert (new - current) * delta >= 0  # never against the requested direction
    assert abs(new - current) <= abs(delta)


def test_webhook_cooldown_is_per_alert_not_per_hook() -> None:
    """Issue 16: a second, unrelated alert inside the cooldown of a webhook hook is delivered (Alertmanager never
    resends a notification answered 200); the same alert again is still held by the cooldown."""
    hook = HookSpec("notify", (QUEUE,), Action.WEBHOOK, url="http://127.0.0.1:1/", cooldown=300.0)
    p = HookPlanner((hook,))
    carry_out(p, p.plan(parse_notification(payload(alert(fingerprint="aa"))), now=0.0), now=0.0)
    other = parse_notification(payload(alert(fingerprint="bb", chip="1")))
    assert outcomes(p.plan(other, now=30.0)) == ["notify:apply"]
    again = parse_notification(payload(alert(fingerprint="aa", starts_at="2026-01-01T00:10:00Z")))
    assert outcomes(p.plan(again, now=60.0)) == ["notify:cooldown"]


def test_a_forwarded_resolve_is_sent_once_and_starts_no_cooldown() -> None:
    """A webhook hook with send_resolved forwards each episode's end once; the resolve does not push the next
    firing of the same alert further out (only the firing that was forwarded counts for the cooldown)."""
    hook = HookSpec("notify", (QUEUE,), Action.WEBHOOK, url="http://x/", cooldown=60.0, send_resolved=True)
    p = HookPlanner((hook,))
    carry_out(p, p.plan(parse_notification(payload(alert())), now=0.0), now=0.0, applied=0)
    resolved = parse_notification(payload(alert(status="resolved")))
    first = p.plan(resolved, now=50.0)
    assert outcomes(first) == ["notify:apply"]
    carry_out(p, first, now=50.0, applied=0)
    assert outcomes(p.plan(resolved, now=51.0)) == ["notify:duplicate"]
    again = parse_notification(payload(alert(starts_at="2026-11-25T11:00:00Z")))
    assert outcomes(p.plan(again, now=61.0)) == ["notify:apply"]  # 61 s after the firing, 11 s after the resolve


def test_send_resolved_is_only_for_webhooks() -> None:
    with pytest.raises(ValueError, match="send_resolved is for action webhook"):
        HookSpec("s", (QUEUE,), Action.SCALE, TARGET, send_resolved=True)
