"""rules/snnrm.rules.yaml passes `promtool check rules` (with every lint fatal) and `promtool test rules`, every
alert is unit-tested both firing and not firing, with the annotations the runbook contract needs, and every
recording rule's output is checked by a promtool expression test."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from snnrm.testing.tools import REPO, require_tool

RULES = REPO / "rules" / "snnrm.rules.yaml"
RULE_TESTS = sorted((REPO / "tests" / "rules").glob("*_test.yaml"))
RUNBOOKS = REPO / "docs" / "runbooks.md"


def _promtool() -> Path:
    return require_tool("SNNRM_PROMTOOL", "promtool", "build-observability-tools.sh promtool")


def _rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def _alerts() -> list[dict[str, Any]]:
    return [rule for rule in _rules() if "alert" in rule]


def _records() -> list[dict[str, Any]]:
    return [rule for rule in _rules() if "record" in rule]


def _anchors(markdown: str) -> set[str]:
    """GitHub-style anchors of the Markdown headings (lower case, punctuation dropped, spaces to dashes)."""
    out = set()
    for line in markdown.splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            out.add(re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", title)))
    return out


def test_promtool_check_rules_with_lints_fatal() -> None:
    """Syntax, PromQL and promtool's lints (e.g. duplicate rules) all pass."""
    r = subprocess.run(
        [_promtool(), "check", "rules", "--lint=all", "--lint-fatal", str(RULES)], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in r.stdout


def test_promtool_unit_tests_pass() -> None:
    """Every test in tests/rules/*_test.yaml evaluates the real rule file and matches labels and annotations."""
    assert RULE_TESTS
    r = subprocess.run(
        [_promtool(), "test", "rules", *map(str, RULE_TESTS)], capture_output=True, text=True, cwd=REPO / "tests/rules"
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_alert_has_for_severity_and_annotations() -> None:
    """Each alert waits (`for:`), has a severity and summary/description, and links a runbook section that exists."""
    anchors = _anchors(RUNBOOKS.read_text())
    names = [a["alert"] for a in _alerts()]
    assert len(names) == len(set(names))
    for alert in _alerts():
        name = alert["alert"]
        assert alert.get("for"), f"{name} has no for:"
        assert alert["labels"]["severity"] in {"warning", "critical"}, name
        ann = alert["annotations"]
        assert ann["summary"], name
        assert ann["description"], name
        url = ann["runbook_url"]
        path, _, anchor = url.partition("#")
        assert path == "docs/runbooks.md", url
        assert anchor == name.lower(), url
        assert anchor in anchors, f"{url}: no such heading in docs/runbooks.md"


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    """Each alert appears in at least one evaluation that expects it and one that expects silence."""
    firing: set[str] = set()
    silent: set[str] = set()
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else silent).add(check["alertname"])
    names = {a["alert"] for a in _alerts()}
    assert names - firing == set(), "never tested firing"
    assert names - silent == set(), "never tested silent"


def test_every_recording_rule_is_tested() -> None:
    """Each recorded series is the expression of a promql_expr_test with expected samples, and keeps (node, chip):
    the dashboards filter recorded series by node and chip, so a record that drops them would show nothing."""
    tested: set[str] = set()
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("promql_expr_test", []):
                if check.get("exp_samples"):
                    tested.add(check["expr"].strip())
    names = [r["record"] for r in _records()]
    assert names, "no recording rules"
    assert len(names) == len(set(names))
    assert set(names) - tested == set(), "recording rules without an expression test"
    for rule in _records():
        assert re.fullmatch(r"node_chip(_inter_chip)?:snnrm_\w+:\w+", rule["record"]), rule["record"]
        assert "by (node, chip" in rule["expr"], rule
