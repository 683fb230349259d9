"""The Helm chart with the real helm: lint, render (default and every feature on), values schema, and that what it
renders is what the rest of the repo means (daemon config, rules, dashboards, RBAC, probes, ports, image)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_support import ALL_FEATURES, CHART, OPERATOR_API, Helm, by_kind, need, one

from snnrm.config import load_config
from snnrm.config_hooks import HooksConfig
from snnrm.testing.tools import REPO

DASHBOARDS = sorted((REPO / "dashboards" / "json").glob("*.json"))
RULE_FILES = sorted((REPO / "rules").glob("*.yaml"))
VALUES = [pytest.param((), id="default"), pytest.param((ALL_FEATURES,), id="all-features")]


def _container(m: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    cs = m["spec"]["template"]["spec"]["containers"]
    return next(c for c in cs if name is None or c["name"] == name)


# -- lint and render ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("values", VALUES)
def test_helm_lint_strict(helm: Helm, values: tuple[Path, ...]) -> None:
    args = ["lint", "--strict", str(CHART)] + [a for v in values for a in ("--values", str(v))]
    r = helm.run(*args)
    assert "0 chart(s) failed" in r.stdout


def test_default_render_is_the_daemon_and_its_dashboards(helm: Helm) -> None:
    kinds = sorted(m["kind"] for m in helm.render())
    assert kinds == sorted(
        ["ServiceAccount", "ConfigMap", "Service", "DaemonSet", "Pod"] + ["ConfigMap"] * len(DASHBOARDS)
    )


def test_operator_objects_follow_the_cluster_when_auto(helm: Helm) -> None:
    """monitoring.monitor / prometheusRule.enabled "auto": created exactly when the cluster serves the operator API."""
    without = {m["kind"] for m in helm.render()}
    with_api = {m["kind"] for m in helm.render(api_versions=(OPERATOR_API,))}
    assert not {"ServiceMonitor", "PrometheusRule"} & without
    assert {"ServiceMonitor", "PrometheusRule"} <= with_api


def test_every_feature_on_renders_every_object(helm: Helm) -> None:
    kinds = {m["kind"] for m in helm.render(ALL_FEATURES)}
    assert kinds == {
        "DaemonSet", "Deployment", "Service", "ServiceAccount", "ConfigMap", "Secret", "Role", "RoleBinding",
        "ClusterRole", "ClusterRoleBinding", "PodDisruptionBudget", "ServiceMonitor", "PrometheusRule",
        "AlertmanagerConfig", "ScaledObject", "Pod",
    }  # fmt: skip


# -- values schema -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "message"),
    [
        pytest.param({"daemon": {"port": "9400"}}, "at '/daemon/port': got string, want integer", id="wrong-type"),
        pytest.param({"deamon": {"enabled": True}}, "additional properties 'deamon' not allowed", id="unknown-top-key"),
        pytest.param(
            {"daemon": {"config": {"backnd": "sim"}}}, "additional properties 'backnd' not allowed", id="unknown-nested"
        ),
        pytest.param(
            {"monitoring": {"monitor": "servicemonitor"}},
            "at '/monitoring/monitor': value must be one of",
            id="bad-enum",
        ),
        pytest.param(
            {"hooks": {"rules": [{"name": "x", "match": ["a=b"], "action": "scale", "max_replica": 3}]}},
            "additional properties 'max_replica' not allowed",
            id="hook-typo",
        ),
        pytest.param(
            {"dashboards": {"labelValue": 1}},
            "at '/dashboards/labelValue': got number, want string",
            id="label-value-not-string",
        ),
    ],
)
def test_schema_rejects_bad_values_with_a_clear_message(
    helm: Helm, tmp_path: Path, override: dict[str, Any], message: str
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(override))
    r = helm.template(bad, check=False)
    assert r.returncode != 0
    assert "values don't meet the specifications of the schema" in r.stderr
    assert message in r.stderr, r.stderr


def _keys(values: dict[str, Any], schema: dict[str, Any], path: str = "") -> list[str]:
    """Keys present in only one of values.yaml and the schema, recursively through objects with fixed properties."""
    props = schema.get("properties")
    if props is None:
        return []
    diff = [f"{path}.{k} (values only)" for k in values.keys() - props.keys()]
    diff += [f"{path}.{k} (schema only)" for k in props.keys() - values.keys()]
    for k in values.keys() & props.keys():
        if isinstance(values[k], dict):
            diff += _keys(values[k], props[k], f"{path}.{k}")
    return diff


def test_values_yaml_and_schema_have_the_same_keys() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert _keys(values, schema) == []


def test_values_yaml_is_documented_line_by_line() -> None:
    """Every setting of values.yaml has a comment line right above it; keys inside a documented setting's default
    value (the entries of `resources`, of a toleration, ...) are covered by that comment."""
    lines = (CHART / "values.yaml").read_text().splitlines()

    def documented(i: int) -> bool:
        return i > 0 and lines[i - 1].lstrip().startswith("#")

    def parent(i: int) -> int | None:
        indent = len(lines[i]) - len(lines[i].lstrip())
        for j in range(i - 1, -1, -1):
            text = lines[j].strip()
            if text and not text.startswith("#") and len(lines[j]) - len(lines[j].lstrip()) < indent:
                return j
        return None

    undocumented = []
    for i, line in enumerate(lines):
        if not re.match(r"^\s*[A-Za-z][\w.-]*:", line):
            continue
        j: int | None = i
        while j is not None and not documented(j):
            j = parent(j)
        if j is None:
            undocumented.append(f"{i + 1}: {line}")
    assert undocumented == []


# -- what the objects say ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("values", VALUES)
def test_daemon_config_file_is_accepted_by_snnrm(helm: Helm, values: tuple[Path, ...], tmp_path: Path) -> None:
    """The ConfigMap's config.yaml loads with snnrm's own validation (extra="forbid"), and every path in it is a
    mount of the daemon container (or, for the PodResources socket, inside one)."""
    manifests = helm.render(*values)
    cm = one(manifests, "ConfigMap", "snnrm-daemon")
    path = tmp_path / "config.yaml"
    path.write_text(cm["data"]["config.yaml"])
    cfg = load_config(path)
    ds = one(manifests, "DaemonSet")
    c = _container(ds, "snnrm")
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert {e["name"]: e.get("value") for e in c["env"]}["SNNRM_CONFIG"] == "/etc/snnrm/config.yaml"
    assert "/etc/snnrm" in mounts
    assert not mounts[str(cfg.kubelet_dir)].get("readOnly")  # the plugin sockets are created there
    assert mounts[str(cfg.pod_resources_socket.parent)]["readOnly"]
    assert str(cfg.state_dir) in mounts
    assert str(cfg.cdi_dir) in mounts
    assert cfg.http_port == c["ports"][0]["containerPort"]
    if cfg.backend == "sysfs":
        assert mounts[str(cfg.sysfs_root)]["readOnly"]
    if cfg.hooks.enabled:
        assert cfg.hooks.token_file is not None
        assert str(cfg.hooks.token_file.parent) in mounts


def test_all_features_config_carries_the_hooks_and_extra_config(helm: Helm, tmp_path: Path) -> None:
    values = yaml.safe_load(ALL_FEATURES.read_text())
    cm = one(helm.render(ALL_FEATURES), "ConfigMap", "snnrm-daemon")
    path = tmp_path / "config.yaml"
    path.write_text(cm["data"]["config.yaml"])
    cfg = load_config(path)
    assert [h.name for h in cfg.hooks.rules] == [r["name"] for r in values["hooks"]["rules"]]
    assert cfg.sample_period == values["daemon"]["extraConfig"]["sample_period"]
    assert (cfg.backend, cfg.sim_cores, cfg.metrics_granularity) == ("sysfs", 64, "core")


def test_daemonset_is_node_infrastructure_with_tight_security(helm: Helm) -> None:
    ds = one(helm.render(), "DaemonSet")
    spec = ds["spec"]
    pod = spec["template"]["spec"]
    c = _container(ds, "snnrm")
    # Never two daemons on a node; one node at a time by default.
    assert spec["updateStrategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}}
    assert pod["priorityClassName"] == "system-node-critical"
    assert pod["automountServiceAccountToken"] is False  # no hooks: the daemon never calls the apiserver
    assert pod["enableServiceLinks"] is False
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = c["securityContext"]
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert "add" not in sc["capabilities"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["privileged"] is False
    host = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    assert host["device-plugins"] == "/var/lib/kubelet/device-plugins"
    assert host["pod-resources"] == "/var/lib/kubelet/pod-resources"
    assert c["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["resources"]["requests"]
    assert c["resources"]["limits"]["memory"]
    assert "cpu" not in c["resources"]["limits"]


def test_controller_deployment_has_leader_election_pdb_and_extender_snippet(helm: Helm) -> None:
    manifests = helm.render(ALL_FEATURES)
    dep = one(manifests, "Deployment")
    env = {e["name"]: e.get("value") for e in _container(dep)["env"]}
    assert env["SNNRM_LEASE_NAME"] == "snnrm-controller"
    pdb = one(manifests, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
    assert dep["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    svc = one(manifests, "Service", "snnrm-extender")
    extenders = yaml.safe_load(one(manifests, "ConfigMap", "snnrm-scheduler-extender")["data"]["extenders.yaml"])
    from snnrm.http.extender import DEFAULT_PREFIX  # the routes the extender serves: <prefix>/filter, /prioritize

    port = svc["spec"]["ports"][0]["port"]
    assert extenders[0]["urlPrefix"] == f"http://snnrm-extender.snnrm.svc:{port}{DEFAULT_PREFIX}"
    assert {r["name"] for r in extenders[0]["managedResources"]} == {
        "snnrm.io/neuron-core",
        "snnrm.io/event-throughput",
    }


def test_dashboard_configmaps_hold_the_committed_json(helm: Helm) -> None:
    maps = [m for m in by_kind(helm.render(), "ConfigMap") if "grafana_dashboard" in m["metadata"]["labels"]]
    assert len(maps) == len(DASHBOARDS)
    data = {k: v for m in maps for k, v in m["data"].items()}
    assert data == {p.name: p.read_text() for p in DASHBOARDS}
    for m in maps:
        assert m["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert m["metadata"]["annotations"] == {"grafana_folder": "snnrm", "k8s-sidecar-target-directory": "snnrm"}
        json.loads(next(iter(m["data"].values())))


def _rendered_rules(helm: Helm, *values: Path) -> dict[str, Any]:
    return dict(one(helm.render(*values, api_versions=(OPERATOR_API,)), "PrometheusRule")["spec"])


def test_prometheusrule_is_the_repo_rule_files(helm: Helm) -> None:
    expected = [g for f in RULE_FILES for g in yaml.safe_load(f.read_text())["groups"]]
    assert _rendered_rules(helm)["groups"] == expected


def test_prometheusrule_prefixes_runbooks_and_adds_labels(helm: Helm) -> None:
    groups = _rendered_rules(helm, ALL_FEATURES)["groups"]
    alerts = [r for g in groups for r in g["rules"] if "alert" in r]
    assert alerts
    for a in alerts:
        assert a["annotations"]["runbook_url"].startswith("https://git.example.com/snnrm/blob/v0.1.0/docs/runbooks.md#")
        assert a["labels"]["team"] == "platform"
        assert a["labels"]["severity"]


@pytest.mark.parametrize("values", VALUES)
def test_rendered_prometheusrule_passes_promtool(helm: Helm, values: tuple[Path, ...], tmp_path: Path) -> None:
    promtool = need("SNNRM_PROMTOOL", "promtool", "build-observability-tools.sh promtool")
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(_rendered_rules(helm, *values)))
    r = subprocess.run(
        [promtool, "check", "rules", "--lint=all", "--lint-fatal", str(rules)], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


@pytest.mark.parametrize("kind", ["ServiceMonitor", "PodMonitor"])
def test_monitor_scrapes_the_daemon_port_as_job_snnrm_with_release_label(helm: Helm, kind: str) -> None:
    manifests = helm.render(set_=(f"monitoring.monitor={kind}", "monitoring.release=kps"))
    mon = one(manifests, kind)
    assert mon["metadata"]["labels"]["release"] == "kps"
    ds = one(manifests, "DaemonSet")
    if kind == "ServiceMonitor":
        svc = one(manifests, "Service")
        assert mon["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
        ep = mon["spec"]["endpoints"][0]
        assert ep["port"] in {p["name"] for p in svc["spec"]["ports"]}
        assert svc["spec"]["clusterIP"] == "None"
    else:
        ep = mon["spec"]["podMetricsEndpoints"][0]
        assert mon["spec"]["selector"]["matchLabels"].items() <= ds["spec"]["template"]["metadata"]["labels"].items()
        assert ep["port"] in {p["name"] for p in _container(ds)["ports"]}
    assert ep["path"] == "/metrics"
    # The rules and dashboards select job="snnrm"; node comes from the pod's node, not the pod's hostname.
    assert {"action": "replace", "targetLabel": "job", "replacement": "snnrm"} in ep["relabelings"]
    assert {"action": "replace", "sourceLabels": ["__meta_kubernetes_pod_node_name"], "targetLabel": "node"} in ep[
        "relabelings"
    ]
    assert 'job="snnrm"' in (REPO / "rules" / "snnrm.rules.yaml").read_text()


def test_monitor_none_renders_no_operator_objects(helm: Helm) -> None:
    kinds = {m["kind"] for m in helm.render(set_=("monitoring.monitor=None", "monitoring.prometheusRule.enabled=false"),
                                            api_versions=(OPERATOR_API,))}  # fmt: skip
    assert not kinds & {"ServiceMonitor", "PodMonitor", "PrometheusRule"}


def _expected_hook_rbac(values: dict[str, Any]) -> dict[str, set[tuple[str, str, str, str]]]:
    """namespace -> {(apiGroup, resource, name, verb)} derived from the hooks' code: target_path() is the URL the hook
    GETs and merge-PATCHes, and each action records a core/v1 Event in the target's namespace."""
    from snnrm.cluster.hooks import target_path

    out: dict[str, set[tuple[str, str, str, str]]] = {}
    for spec in HooksConfig.model_validate({"rules": values["hooks"]["rules"]}).specs():
        if spec.target is None:
            continue
        path = target_path(spec.target)
        m = re.fullmatch(r"/apis?/(?:(?P<group>[^/]+)/)?v[^/]+/namespaces/(?P<ns>[^/]+)/(?P<res>[^/]+)/(?P<name>[^/]+)"
                         r"(?:/(?P<sub>[^/]+))?", path)  # fmt: skip
        assert m, path
        group = m["group"] if path.startswith("/apis/") else ""
        resource = m["res"] + (f"/{m['sub']}" if m["sub"] else "")
        rules = out.setdefault(m["ns"], set())
        rules |= {(group, resource, m["name"], "get"), (group, resource, m["name"], "patch")}
        rules.add(("", "events", "*", "create"))
    return out


def test_hooks_rbac_is_exactly_what_the_hook_code_calls(helm: Helm) -> None:
    manifests = helm.render(ALL_FEATURES)
    rendered: dict[str, set[tuple[str, str, str, str]]] = {}
    for role in by_kind(manifests, "Role"):
        if role["metadata"]["name"] != "snnrm-hooks":
            continue
        for rule in role["rules"]:
            for g in rule["apiGroups"]:
                for res in rule["resources"]:
                    for name in rule.get("resourceNames", ["*"]):
                        for verb in rule["verbs"]:
                            rendered.setdefault(role["metadata"]["namespace"], set()).add((g, res, name, verb))
    assert rendered == _expected_hook_rbac(yaml.safe_load(ALL_FEATURES.read_text()))
    ds = one(manifests, "DaemonSet")
    assert ds["spec"]["template"]["spec"]["automountServiceAccountToken"] is True
    bindings = [b for b in by_kind(manifests, "RoleBinding") if b["metadata"]["name"] == "snnrm-hooks"]
    assert {b["metadata"]["namespace"] for b in bindings} == set(rendered)
    for b in bindings:
        assert b["subjects"] == [{"kind": "ServiceAccount", "name": "snnrm-daemon", "namespace": "snnrm"}]
    # No cluster-wide permission for the daemon.
    assert all(s["name"] != "snnrm-daemon" for b in by_kind(manifests, "ClusterRoleBinding") for s in b["subjects"])


def test_hooks_without_rules_fail_with_a_message(helm: Helm) -> None:
    r = helm.template(set_=("hooks.enabled=true",), check=False)
    assert r.returncode != 0
    assert "hooks.enabled needs at least one entry in hooks.rules" in r.stderr


# -- image -------------------------------------------------------------------------------------------------------


def test_dockerfile_matches_the_chart_image_settings(helm: Helm) -> None:
    """The image runs as the non-root uid the controller and test pods assume, exposes the daemon port, and its
    entrypoint is the snnrm CLI the pods pass sub-commands to."""
    text = (REPO / "Dockerfile").read_text()
    final = text.split("\nFROM ")[-1]
    user = re.findall(r"^USER (\S+)", final, re.M)
    assert user
    assert user[-1].split(":")[0] == "65532"
    manifests = helm.render(ALL_FEATURES)
    dep = one(manifests, "Deployment")
    assert dep["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == 65532
    assert re.search(r"^EXPOSE 9400\b", final, re.M)
    assert re.search(r'^ENTRYPOINT \["snnrm"\]', final, re.M)
    assert _container(one(helm.render(), "DaemonSet"))["args"] == ["run"]
    assert one(manifests, "DaemonSet")["spec"]["template"]["spec"]["containers"][0]["image"] == (
        "registry.example.com/platform/snnrm@sha256:" + "0123456789abcdef" * 4
    )
