"""Alertmanager webhook v4 payloads for the hooks tests, shaped like notify/webhook/webhook.go sends them."""

from __future__ import annotations

from typing import Any

OPEN_ENDED = "0001-01-01T00:00:00Z"


def alert(
    name: str = "SnnrmEventQueueSaturated",
    *,
    status: str = "firing",
    fingerprint: str = "a1b2c3d4e5f60708",
    starts_at: str = "2026-11-25T10:00:00Z",
    **labels: str,
) -> dict[str, Any]:
    return {
        "status": status,
        "labels": {"alertname": name, "severity": "warning", **labels},
        "annotations": {"summary": f"{name} on a chip 0", "runbook_url": "docs/runbooks.md#x"},
        "startsAt": starts_at,
        "endsAt": OPEN_ENDED if status == "firing" else "2026-11-25T10:30:00Z",
        "generatorURL": "http://prometheus:9090/graph?g0.expr=up",
        "fingerprint": fingerprint,
    }


def payload(*alerts: dict[str, Any], group_key: str = '{}:{alertname="SnnrmEventQueueSaturated"}') -> dict[str, Any]:
    status = "firing" if any(a["status"] == "firing" for a in alerts) else "resolved"
    return {
        "version": "4",
        "groupKey": group_key,
        "truncatedAlerts": 0,
        "status": status,
        "receiver": "snnrm-hooks",
        "groupLabels": {"alertname": alerts[0]["labels"]["alertname"]} if alerts else {},
        "commonLabels": {"severity": "warning"},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "alerts": list(alerts),
        # Newer Alertmanagers add these; receivers must ignore unknown keys.
        "notification_reason": "new_alert",
        "routeLabels": {},
    }
