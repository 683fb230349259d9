"""The ``hooks:`` config section: the documented example validates, and every mistake is named at start-up."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from snnrm.config import ConfigError, load_config
from snnrm.config_hooks import HooksConfig
from snnrm.core.hooks import Action, Target

DOC = Path(__file__).resolve().parents[3] / "docs" / "autoscaling-hooks.md"


def _doc_config() -> dict[str, Any]:
    block = re.search(r"```yaml\n(hooks:\n.*?)```", DOC.read_text(), re.S)
    assert block is not None
    doc: dict[str, Any] = yaml.safe_load(block.group(1))
    return doc


def test_the_documented_example_is_a_valid_config(tmp_path: Path) -> None:
    f = tmp_path / "snnrm.yaml"
    f.write_text(yaml.safe_dump(_doc_config()))
    cfg = load_config(f)
    specs = {s.name: s for s in cfg.hooks.specs()}
    assert set(specs) == {"scale-dvs-stage1", "keda-floor-stage2", "hpa-ceiling", "page-platform"}
    assert specs["scale-dvs-stage1"].target == Target("Deployment", "snn", "dvs-gesture-stage1", "replicas")
    assert specs["keda-floor-stage2"].target == Target("ScaledObject", "snn", "dvs-gesture-stage2", "minReplicaCount")
    assert specs["hpa-ceiling"].target is not None
    assert specs["hpa-ceiling"].target.field == "maxReplicas"
    assert specs["page-platform"].action is Action.WEBHOOK
    assert cfg.hooks.enabled
    assert cfg.hooks.needs_kube


def test_no_hooks_means_disabled() -> None:
    assert not load_config().hooks.enabled


def _hook(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "h",
        "match": ['alertname="X"'],
        "action": "scale",
        "target": {"kind": "Deployment", "namespace": "snn", "name": "web"},
    }
    base.update(kw)
    return base


@pytest.mark.parametrize(
    ("hook", "message"),
    [
        (_hook(match=[]), "match"),
        (_hook(match=["alertname=X"]), "matcher 'alertname=X'"),
        (_hook(action="delete-cluster"), "action"),
        (_hook(target=None), "action scale needs a target"),
        (_hook(target={"kind": "DaemonSet", "namespace": "a", "name": "b"}), "targets Deployment or StatefulSet"),
        (
            _hook(target={"kind": "Deployment", "namespace": "a", "name": "b", "field": "minReplicas"}),
            "changes replicas",
        ),
        (_hook(min_replicas=5, max_replicas=2), "min_replicas 5 > max_replicas 2"),
        (_hook(step=0), "step"),
        (_hook(name="Bad_Name"), "name"),
        (_hook(action="webhook", target=None), "action webhook needs an http(s) url"),
        (_hook(action="webhook", target=None, url="file:///etc/passwd"), "http(s) url"),
        (_hook(action="webhook", target=None, url="http://x/", undo_on_resolve=True), "undo_on_resolve needs a scal"),
        (_hook(action="webhook", url="http://x/"), "takes no target"),
        (_hook(action="reallocate", target=None), "Input should be"),
        (_hook(colour="blue"), "unknown key 'hooks.rules.0.colour'"),
    ],
)
def test_mistakes_are_named(hook: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(hooks={"rules": [hook]})
    assert message in str(e.value)


def test_duplicate_names_are_refused() -> None:
    with pytest.raises(ConfigError, match="repeated: h"):
        load_config(hooks={"rules": [_hook(), _hook()]})


def test_snnrm_run_refuses_hooks_without_a_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI names the problem and exits 2 (usage error) instead of serving an endpoint nobody can guard."""
    from click.testing import CliRunner

    from snnrm.cli import main

    monkeypatch.delenv("SNNRM_HOOKS_TOKEN", raising=False)
    f = tmp_path / "snnrm.yaml"
    f.write_text(
        yaml.safe_dump(
            {
                "hooks": {
                    "rules": [
                        {"name": "r", "match": ['alertname="X"'], "action": "webhook", "url": "http://127.0.0.1:1/"}
                    ]
                }
            }
        )
    )
    result = CliRunner().invoke(
        main,
        [
            "run",
            "--config",
            str(f),
            "--kubelet-dir",
            str(tmp_path / "dp"),
            "--state-dir",
            str(tmp_path / "s"),
            "--sim-chips",
            "1",
            "--sim-cores",
            "4",
        ],
    )
    assert result.exit_code == 2, result.output
    assert "no bearer token is available" in result.output


def test_send_resolved_is_refused_on_a_scaling_hook() -> None:
    with pytest.raises(ValidationError, match="send_resolved are for action webhook"):
        HooksConfig.model_validate(
            {
                "rules": [
                    {
                        "name": "s",
                        "match": ['alertname="X"'],
                        "action": "scale",
                        "send_resolved": True,
                        "target": {"kind": "Deployment", "namespace": "a", "name": "b"},
                    }
                ]
            }
        )
