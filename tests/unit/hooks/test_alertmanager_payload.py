"""Alertmanager webhook v4 payloads are validated field by field, and label matchers follow Alertmanager's syntax."""

from __future__ import annotations

from typing import Any

import pytest
from hook_payloads import alert, payload

from snnrm.core.hooks import MAX_ALERTS, Matcher, PayloadError, parse_notification


def test_a_real_payload_parses_and_unknown_keys_are_ignored() -> None:
    n = parse_notification(payload(alert(chip="0"), alert(fingerprint="ff00", status="resolved")))
    assert n.group_key == '{}:{alertname="SnnrmEventQueueSaturated"}'
    assert n.status == "firing"
    assert [a.status for a in n.alerts] == ["firing", "resolved"]
    assert n.alerts[0].labels["chip"] == "0"
    assert n.alerts[0].name == "SnnrmEventQueueSaturated"
    assert n.alerts[1].fingerprint == "ff00"


def _with(path: str, value: Any) -> dict[str, Any]:
    body = payload(alert())
    if path.startswith("alerts."):
        body["alerts"][0][path.removeprefix("alerts.")] = value
    else:
        body[path] = value
    return body


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "body: expected a JSON object"),
        (_with("version", "3"), "version: expected '4'"),
        (_with("alerts", {}), "alerts: expected a list"),
        (_with("alerts", [1]), "alerts[0]: expected an object"),
        (_with("status", "pending"), "status: expected 'firing' or 'resolved'"),
        (_with("alerts.status", None), "alerts[0].status"),
        (_with("alerts.fingerprint", ""), "alerts[0].fingerprint: must not be empty"),
        (_with("alerts.fingerprint", 7), "alerts[0].fingerprint: expected a string, got int"),
        (_with("alerts.labels", ["x"]), "alerts[0].labels: expected an object of strings"),
        (_with("alerts.labels", {"chip": 0}), "alerts[0].labels.chip: expected a string, got int"),
        (_with("alerts.labels", {"x": "y" * 5000}), "longer than 4096"),
        (_with("alerts.startsAt", None), "alerts[0].startsAt"),
        (_with("truncatedAlerts", -1), "truncatedAlerts"),
        (_with("groupKey", None), "groupKey: expected a string"),
        (_with("alerts", [alert()] * (MAX_ALERTS + 1)), "set max_alerts"),
    ],
)
def test_malformed_payloads_name_the_field(body: Any, message: str) -> None:
    with pytest.raises(PayloadError) as e:
        parse_notification(body)
    assert message in str(e.value)


@pytest.mark.parametrize(
    ("text", "labels", "hit"),
    [
        ('alertname="X"', {"alertname": "X"}, True),
        ('alertname="X"', {"alertname": "XY"}, False),
        ('severity!="info"', {"severity": "warning"}, True),
        ('severity=~"warning|critical"', {"severity": "critical"}, True),
        ('severity=~"warn"', {"severity": "warning"}, False),  # anchored, like Prometheus
        ('chip!~"1|2"', {"chip": "0"}, True),
        ('missing=""', {}, True),  # a missing label matches as the empty string
        ('q="a \\"quoted\\" value"', {"q": 'a "quoted" value'}, True),
    ],
)
def test_matchers(text: str, labels: dict[str, str], hit: bool) -> None:
    m = Matcher.parse(text)
    assert m.matches(labels) is hit
    assert Matcher.parse(str(m)) == m


@pytest.mark.parametrize("text", ["alertname", 'alertname=="X"', "alertname=X", 'a=~"("', '1x="y"'])
def test_bad_matchers_are_rejected(text: str) -> None:
    with pytest.raises(ValueError, match="matcher"):
        Matcher.parse(text)
