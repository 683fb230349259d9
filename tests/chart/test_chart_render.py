"""The Helm chart with the real helm: lint, render (default and every feature on), values schema, and that what it
renders is what the rest of the repo means (daemon config, rules, dashboards, RBAC, probes, ports, image)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import click
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
        "DaemonSet",
        "Deployment",
        "Service",
        "ServiceAccount",
        "ConfigMap",
        "Secret",
        "Role",
        "RoleBinding",
        "ClusterRole",
        "ClusterRoleBinding",
        "PodDisruptionBudget",
        "ServiceMonitor",
        "PrometheusRule",
        "AlertmanagerConfig",
        "ScaledObject",
        "Pod",
        "DeviceClass",
        "ResourceClaimTemplate",
        "NetworkPolicy",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    }


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
        pytest.param({"image": {"tag": "0.1 beta"}}, "at '/image/tag'", id="tag-with-space"),
        pytest.param(
            {"controller": {"resources": {"requests": {"memory": "-128Mi"}}}},
            "at '/controller/resources/requests/memory'",
            id="negative-quantity",
        ),
        pytest.param(
            {"controller": {"resources": {"limits": {"cpu": "1.2.3"}}}},
            "at '/controller/resources/limits/cpu'",
            id="malformed-quantity",
        ),
        pytest.param({"controller": {"resources": {"requests": {"cpus": "1"}}}}, "cpus", id="resource-name-typo"),
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


@pytest.mark.parametrize("min_available", ["2", "100%"])
def test_a_controller_budget_that_blocks_every_drain_is_refused(helm: Helm, min_available: str) -> None:
    r = helm.template(
        set_=(
            "controller.enabled=true",
            "controller.replicas=2",
            f"controller.podDisruptionBudget.minAvailable={min_available}",
        ),
        check=False,
    )
    assert r.returncode != 0
    assert "must be below controller.replicas (2)" in r.stderr, r.stderr
    ok = helm.template(set_=("controller.enabled=true", "controller.replicas=2"), check=False)
    assert ok.returncode == 0, ok.stderr


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
    kinds = {
        m["kind"]
        for m in helm.render(
            set_=("monitoring.monitor=None", "monitoring.prometheusRule.enabled=false"), api_versions=(OPERATOR_API,)
        )
    }
    assert not kinds & {"ServiceMonitor", "PodMonitor", "PrometheusRule"}


def _expected_hook_rbac(values: dict[str, Any]) -> dict[str, set[tuple[str, str, str, str]]]:
    """namespace -> {(apiGroup, resource, name, verb)} derived from the hooks' code: target_resource() is what the hook
    GETs and merge-PATCHes (with its subresource), and each action records a core/v1 Event in the target's
    namespace (CORE_EVENTS)."""
    from snnrm.cluster.hooks import target_resource
    from snnrm.kube.api import CORE_EVENTS

    out: dict[str, set[tuple[str, str, str, str]]] = {}
    for spec in HooksConfig.model_validate({"rules": values["hooks"]["rules"]}).specs():
        t = spec.target
        if t is None:
            continue
        res, sub = target_resource(t)
        resource = res.plural + (f"/{sub}" if sub else "")
        rules = out.setdefault(t.namespace, set())
        rules |= {(res.group, resource, t.name, "get"), (res.group, resource, t.name, "patch")}
        rules.add((CORE_EVENTS.group, CORE_EVENTS.plural, "*", "create"))
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
    # Cluster-wide permissions for the daemon only through the placement and DRA roles (tested below).
    daemon_crbs = {
        b["metadata"]["name"]
        for b in by_kind(manifests, "ClusterRoleBinding")
        for s in b["subjects"]
        if s["name"] == "snnrm-daemon"
    }
    assert daemon_crbs == {"snnrm-daemon-placement", "snnrm-daemon-dra"}
    hooks_only = helm.render(
        ALL_FEATURES, set_=("controller.enabled=false", "daemon.placement.enabled=false", "dra.mode=off")
    )
    assert all(s["name"] != "snnrm-daemon" for b in by_kind(hooks_only, "ClusterRoleBinding") for s in b["subjects"])


# -- controller, placement agent and DRA driver: RBAC derived from the code's API calls ------------------------------

Rule = tuple[str, str, str]
"""(apiGroup, resource[/subresource], verb)"""
CLUSTER = REPO / "snnrm" / "cluster"
CONTROLLER_MODULES = ("cache", "controller", "events", "leader", "native", "planner", "reallocation")
"""What ``snnrm controller`` runs (snnrm/cli_controller.py: PlacementController + ReallocationController)."""
NODE_AGENT_MODULES = ("events", "node_agent", "remap", "sim_workload", "stage_metrics", "timeline")
"""What the daemon's placement agent runs (snnrm/app.py _placement_agent: NodeAgent, KubeStageReporter, remaps,
simulated workloads, per-stage metrics)."""
NOT_PLACEMENT = ("__init__", "hooks", "kube", "hints")
"""snnrm/cluster modules that are neither: the autoscaling hooks (their own RBAC test)."""
CLUSTER_API_VERBS = {
    "get": "get",
    "list": "list",
    "watch": "watch",
    "create": "create",
    "merge_patch": "patch",
    "replace": "update",
    "delete": "delete",
}


def _resources_made_in(tree: Any, module: Any) -> set[tuple[str, str]]:
    """(group, plural) of every ``Resource(GROUP, version, "plural")`` a module builds at run time (native gang)."""
    import ast

    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "Resource":
            g, plural = node.args[0], node.args[2]
            group = getattr(module, g.id) if isinstance(g, ast.Name) else ast.literal_eval(g)
            out.add((group, ast.literal_eval(plural)))
    return out


def _cluster_calls(name: str) -> set[Rule]:
    """Every (group, resource, verb) module snnrm/cluster/<name>.py asks of the apiserver (:func:`_api_calls`)."""
    return _api_calls(f"snnrm.cluster.{name}")


def _api_calls(module_name: str) -> set[Rule]:
    """Every (group, resource, verb) a module asks of the apiserver through ClusterApi: calls of
    ``self.api.<verb>(RESOURCE, ...)`` / ``api.<verb>(...)`` (subresource= included), and of the helpers of
    snnrm/kube/api.py that make such calls (evict)."""
    import ast
    import importlib

    import snnrm.kube.api as api_mod

    module = importlib.import_module(module_name)
    tree = ast.parse(Path(str(module.__file__)).read_text())
    api_tree = ast.parse((REPO / "snnrm" / "kube" / "api.py").read_text())
    helpers = {f.name: f for f in api_tree.body if isinstance(f, ast.AsyncFunctionDef | ast.FunctionDef)}
    made = _resources_made_in(tree, module)
    enclosing = {
        child: fn
        for fn in ast.walk(tree)
        if isinstance(fn, ast.AsyncFunctionDef | ast.FunctionDef)
        for child in ast.walk(fn)
    }  # innermost wins: walk order visits outer functions first

    def resolve(arg: Any, call: Any) -> set[tuple[str, str]]:
        """The Resources an argument can be: a constant of snnrm/kube/api.py, a parameter of the enclosing
        function (the constants its callers in this module pass), else every Resource the module builds."""
        if isinstance(arg, ast.Name) and isinstance(getattr(api_mod, arg.id, None), api_mod.Resource):
            res = getattr(api_mod, arg.id)
            return {(res.group, res.plural)}
        fn = enclosing.get(call)
        params = [a.arg for a in fn.args.args] if fn is not None else []
        if fn is not None and isinstance(arg, ast.Name) and arg.id in params:
            i = params.index(arg.id) - (1 if params[:1] == ["self"] else 0)
            out: set[tuple[str, str]] = set()
            for node in ast.walk(tree):
                if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == fn.name:
                    out |= resolve(node.args[i], node)
            assert out, f"{module_name}: no caller of {fn.name} passes a Resource"
            return out
        assert made, f"{module_name}: cannot resolve the resource of {ast.unparse(call)}"
        return made

    def calls(root: Any) -> set[Rule]:
        out: set[Rule] = set()
        for node in ast.walk(root):
            if not isinstance(node, ast.Call):
                continue
            f = node.func
            if isinstance(f, ast.Name) and f.id in helpers and f.id != "error_for":
                out |= calls(helpers[f.id])
                continue
            if not (isinstance(f, ast.Attribute) and f.attr in CLUSTER_API_VERBS):
                continue
            target = f.value
            if not (
                (isinstance(target, ast.Name) and target.id == "api")
                or (isinstance(target, ast.Attribute) and target.attr == "api")
            ):
                continue
            sub = next((ast.literal_eval(k.value) for k in node.keywords if k.arg == "subresource"), None)
            for group, plural in resolve(node.args[0], node):
                out.add((group, plural + (f"/{sub}" if sub else ""), CLUSTER_API_VERBS[f.attr]))
        return out

    return calls(tree)


def _rules(role: dict[str, Any]) -> set[Rule]:
    return {
        (g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]
    }


def test_every_cluster_module_with_api_calls_belongs_to_an_actor() -> None:
    """A new snnrm/cluster module that calls the apiserver must be assigned to the controller or the node agent here
    (and then its calls are in the RBAC tests below)."""
    for path in sorted(CLUSTER.glob("*.py")):
        if path.stem in NOT_PLACEMENT:
            continue
        assert path.stem in CONTROLLER_MODULES + NODE_AGENT_MODULES, f"{path.name}: which actor runs it?"
    assert _cluster_calls("planner")
    assert _cluster_calls("node_agent")


def test_controller_rbac_is_exactly_what_the_controller_code_calls(helm: Helm) -> None:
    """ClusterRole = every call of the controller's modules except the Lease; the Lease Role = the leader's calls,
    get/update limited to the configured Lease (create cannot be limited by name)."""
    calls = set().union(*(_cluster_calls(m) for m in CONTROLLER_MODULES))
    lease = {c for c in calls if c[1] == "leases"}
    manifests = helm.render(ALL_FEATURES)
    assert _rules(one(manifests, "ClusterRole", "snnrm-controller")) == calls - lease
    role = one(manifests, "Role", "snnrm-controller-leader-election")
    assert role["metadata"]["namespace"] == "snnrm"
    assert _rules(role) == lease == {("coordination.k8s.io", "leases", v) for v in ("get", "create", "update")}
    for rule in role["rules"]:
        if rule["verbs"] != ["create"]:
            assert rule["resourceNames"] == ["snnrm-controller"]
    env = {e["name"]: e.get("value") for e in _container(one(manifests, "Deployment"))["env"]}
    assert env["SNNRM_LEASE_NAME"] == "snnrm-controller"
    for kind, name in (("ClusterRoleBinding", "snnrm-controller"), ("RoleBinding", "snnrm-controller-leader-election")):
        subjects = one(manifests, kind, name)["subjects"]
        assert subjects == [{"kind": "ServiceAccount", "name": "snnrm-controller", "namespace": "snnrm"}]


def test_daemon_placement_rbac_is_exactly_what_the_node_agent_calls(helm: Helm) -> None:
    calls = set().union(*(_cluster_calls(m) for m in NODE_AGENT_MODULES))
    assert ("", "nodes", "patch") in calls  # the summary annotation on its own Node
    manifests = helm.render(ALL_FEATURES)
    assert _rules(one(manifests, "ClusterRole", "snnrm-daemon-placement")) == calls
    binding = one(manifests, "ClusterRoleBinding", "snnrm-daemon-placement")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "snnrm-daemon", "namespace": "snnrm"}]


def _dra_calls() -> set[Rule]:
    """Every (group, resource, verb) of snnrm/kube/dra.py's DraApi, the DRA driver's only way to the apiserver."""
    # No module of snnrm/dra calls the apiserver but through DraApi.
    for other in (REPO / "snnrm" / "dra").glob("*.py"):
        text = other.read_text()
        assert "snnrm.kube.client" not in text, other.name
        assert "kubernetes_asyncio" not in text, other.name
    return _api_calls("snnrm.kube.dra")


def test_daemon_dra_rbac_is_exactly_what_the_dra_driver_calls(helm: Helm) -> None:
    calls = _dra_calls()
    assert {("resource.k8s.io", "resourceclaims", "get"), ("", "nodes", "get")} <= calls
    manifests = helm.render(ALL_FEATURES)
    assert _rules(one(manifests, "ClusterRole", "snnrm-daemon-dra")) == calls
    binding = one(manifests, "ClusterRoleBinding", "snnrm-daemon-dra")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "snnrm-daemon", "namespace": "snnrm"}]


def test_controller_deployment_runs_the_real_cli(helm: Helm, monkeypatch: pytest.MonkeyPatch) -> None:
    """args + env of the controller container parse with `snnrm controller`'s own click command into the values."""
    from snnrm.cli import main
    from snnrm.http.extender import DEFAULT_PREFIX

    values = yaml.safe_load(ALL_FEATURES.read_text())["controller"]
    dep = one(helm.render(ALL_FEATURES), "Deployment")
    c = _container(dep)
    assert c["args"] == ["controller"]
    cmd = main.commands["controller"]
    known: set[str] = set()  # click allows one variable or several per option
    for p in cmd.params:
        if isinstance(p, click.Option) and p.envvar:
            known.update([p.envvar] if isinstance(p.envvar, str) else p.envvar)
    env = {e["name"]: e for e in c["env"]}
    assert {n for n in env if n.startswith("SNNRM_")} <= known
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    for name in known:
        monkeypatch.delenv(name, raising=False)
    for name, e in env.items():
        if name.startswith("SNNRM_"):
            monkeypatch.setenv(name, e["value"])
    params = cmd.make_context("controller", []).params
    assert params["http"] == f"0.0.0.0:{c['ports'][0]['containerPort']}"
    assert params["extender_prefix"] == DEFAULT_PREFIX
    assert params["lease_name"] == "snnrm-controller"
    assert params["lease_duration"] == 15.0
    assert params["dry_run"] is values["dryRun"] is True
    assert params["reallocation"] is values["reallocation"] is False
    assert params["reservation_ttl"] == values["reservationTtlSeconds"]
    assert params["summary_stale_after"] == values["summaryStaleAfterSeconds"]
    assert params["log_format"] == values["logFormat"]
    assert params["kubeconfig"] is None
    assert params["namespace"] is None
    assert params["identity"] is None
    probes = {c["livenessProbe"]["httpGet"]["path"], c["readinessProbe"]["httpGet"]["path"]}
    assert probes == {"/healthz", "/readyz"}


def test_dra_is_off_by_default_and_on_only_where_needed(helm: Helm, tmp_path: Path) -> None:
    """Default: no DRA objects, mounts, env or token. all-features (mode only): config dra/dra_tile load, the node
    name comes from spec.nodeName, both kubelet directories are mounted read-write at the paths the config names."""
    default = helm.render()
    assert not {"DeviceClass", "ResourceClaimTemplate", "ClusterRole"} & {m["kind"] for m in default}
    pod = one(default, "DaemonSet")["spec"]["template"]["spec"]
    c = _container(one(default, "DaemonSet"))
    assert pod["automountServiceAccountToken"] is False
    assert not {"SNNRM_DRA_NODE_NAME", "NODE_NAME"} & {e["name"] for e in c["env"]}
    assert not [m for m in c["volumeMounts"] if "kubelet/plugins" in m["mountPath"]]

    manifests = helm.render(ALL_FEATURES)
    cm = one(manifests, "ConfigMap", "snnrm-daemon")
    path = tmp_path / "config.yaml"
    path.write_text(cm["data"]["config.yaml"])
    cfg = load_config(path)
    values = yaml.safe_load(ALL_FEATURES.read_text())
    assert (cfg.dra, cfg.dra_tile) == (values["dra"]["mode"], values["dra"]["tile"])
    assert cfg.dra_node_name is None
    assert cfg.dra_kubeconfig is None
    ds = one(manifests, "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    c = _container(ds)
    assert pod["automountServiceAccountToken"] is True
    env = {e["name"]: e for e in c["env"]}
    assert env["SNNRM_DRA_NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}  # placement.node_name
    assert cfg.placement.enabled
    assert cfg.placement.node_name is None
    assert cfg.placement.kubeconfig is None
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    host = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    # Only the driver's own plugin directory is mounted, not the kubelet's plugins/ with every other driver's socket.
    assert str(cfg.dra_plugin_dir.parent) not in mounts
    for d in (cfg.dra_registry_dir, cfg.dra_plugin_dir):
        m = mounts[str(d)]
        assert not m.get("readOnly")
        assert host[m["name"]] == str(d)  # the kubelet dials the paths the plugin reports: host path = container path
    classes = {m["metadata"]["name"] for m in by_kind(manifests, "DeviceClass")}
    assert classes == {"snnrm-core-group", "snnrm-chip", "snnrm-event-throughput"}
    # Token only when needed: DRA alone turns it on, nothing else does.
    dra_only = helm.render(set_=("dra.mode=on",))
    assert one(dra_only, "DaemonSet")["spec"]["template"]["spec"]["automountServiceAccountToken"] is True
    assert {m["metadata"]["name"] for m in by_kind(dra_only, "ClusterRole")} == {"snnrm-daemon-dra"}


def test_placement_follows_the_controller_unless_set(helm: Helm, tmp_path: Path) -> None:
    with_controller = helm.render(set_=("controller.enabled=true",))
    cm = one(with_controller, "ConfigMap", "snnrm-daemon")
    assert yaml.safe_load(cm["data"]["config.yaml"])["placement"] == {
        "enabled": True,
        "live_remap": True,
        "dry_run": False,
    }
    off = helm.render(set_=("controller.enabled=true", "daemon.placement.enabled=false"))
    assert "placement" not in yaml.safe_load(one(off, "ConfigMap", "snnrm-daemon")["data"]["config.yaml"])
    assert {m["metadata"]["name"] for m in by_kind(off, "ClusterRole")} == {"snnrm-controller"}


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


# -- NetworkPolicy -------------------------------------------------------------------------------------------------


def _selects(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    """A LabelSelector (matchLabels, the only form the chart renders by default) against labels."""
    if selector is None:
        return True
    assert set(selector) <= {"matchLabels"}, selector
    return all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items())


def _admits(policy: dict[str, Any], port: str, ns: str, ns_labels: dict[str, str], pod: dict[str, str]) -> bool:
    """NetworkPolicy ingress semantics for a pod client: a peer's namespaceSelector and podSelector both match
    (a podSelector alone means the policy's namespace); ipBlocks never match a pod here."""
    for rule in policy["spec"]["ingress"]:
        if port not in [p["port"] for p in rule["ports"]]:
            continue
        for peer in rule["from"]:
            if "ipBlock" in peer:
                continue
            in_ns = (
                _selects(peer["namespaceSelector"], ns_labels)
                if "namespaceSelector" in peer
                else ns == policy["metadata"]["namespace"]
            )
            if in_ns and _selects(peer.get("podSelector"), pod):
                return True
    return False


def test_network_policies_admit_only_the_scraper_controller_alertmanager_and_scheduler(helm: Helm) -> None:
    manifests = helm.render(ALL_FEATURES, namespace="snnrm")
    daemon_np = one(manifests, "NetworkPolicy", "snnrm-daemon")
    controller_np = one(manifests, "NetworkPolicy", "snnrm-controller")
    daemon, controller = one(manifests, "DaemonSet"), one(manifests, "Deployment", "snnrm-controller")
    test_pod = one(manifests, "Pod")
    # Each policy selects its own pods, on the port their container names "http".
    assert _selects(daemon_np["spec"]["podSelector"], daemon["spec"]["template"]["metadata"]["labels"])
    assert not _selects(daemon_np["spec"]["podSelector"], controller["spec"]["template"]["metadata"]["labels"])
    assert _selects(controller_np["spec"]["podSelector"], controller["spec"]["template"]["metadata"]["labels"])
    assert [p["name"] for p in _container(daemon)["ports"]] == ["http"]
    assert [p["name"] for p in _container(controller)["ports"]] == ["http"]
    for np in (daemon_np, controller_np):
        assert np["spec"]["policyTypes"] == ["Ingress"]

    mon = ("monitoring", {"kubernetes.io/metadata.name": "monitoring"})
    own = ("snnrm", {"kubernetes.io/metadata.name": "snnrm"})
    other = ("snn-jobs", {"kubernetes.io/metadata.name": "snn-jobs"})
    system = ("kube-system", {"kubernetes.io/metadata.name": "kube-system"})
    prometheus = {"app.kubernetes.io/name": "prometheus"}
    alertmanager = {"app.kubernetes.io/name": "alertmanager"}
    scheduler = {"component": "kube-scheduler", "tier": "control-plane"}
    ctrl = controller["spec"]["template"]["metadata"]["labels"]
    clients = {
        "prometheus in monitoring": (*mon, prometheus),
        "prometheus in snn-jobs": (*other, prometheus),
        "alertmanager in snn-jobs": (*other, alertmanager),
        "controller pod": (*own, ctrl),
        "helm test pod": (*own, test_pod["metadata"]["labels"]),
        "status proxy": (*own, {"app.kubernetes.io/name": "status-proxy"}),
        "any pod in the release namespace": (*own, {"app": "x"}),
        "a workload pod": (*other, {"app": "stage1"}),
        "scheduler pod": (*system, scheduler),
        "scheduler-labelled pod elsewhere": (*other, scheduler),
    }
    to_daemon = {name for name, c in clients.items() if _admits(daemon_np, "http", *c)}
    to_controller = {name for name, c in clients.items() if _admits(controller_np, "http", *c)}
    assert to_daemon == {
        "prometheus in monitoring",
        "alertmanager in snn-jobs",
        "controller pod",
        "helm test pod",
        "status proxy",
    }
    assert to_controller == {"scheduler pod", "prometheus in monitoring"}
    # A host-network scheduler has its node's address: admitted by ipBlocks only.
    assert {"ipBlock": {"cidr": "10.0.0.10/32"}} in controller_np["spec"]["ingress"][0]["from"]


def test_network_policies_are_off_by_default_and_follow_the_features(helm: Helm) -> None:
    assert [m for m in helm.render() if m["kind"] == "NetworkPolicy"] == []
    daemon_only = helm.render(set_=("networkPolicy.enabled=true",))
    [np] = [m for m in daemon_only if m["kind"] == "NetworkPolicy"]
    peers = np["spec"]["ingress"][0]["from"]
    # No controller, no hooks: only the scraper (and the helm test pod).
    assert [p.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/name") for p in peers] == [
        "prometheus",
        "snnrm",
    ]
    r = helm.template(
        set_=(
            "networkPolicy.enabled=true",
            "networkPolicy.scraper.podSelector=null",
            "networkPolicy.scraper.namespaceSelector=null",
        ),
        check=False,
    )
    assert r.returncode != 0
    assert "networkPolicy.scraper: set a namespaceSelector or a podSelector" in r.stderr


# -- requests and limits -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("where", "request_", "limit", "refused"),
    [
        ("daemon", "memory=300Mi", "memory=256Mi", True),
        ("daemon", "memory=256Mi", "memory=256Mi", False),
        ("daemon", "memory=0.5Gi", "memory=512Mi", False),
        ("daemon", "memory=1.1e9", "memory=1G", True),
        ("daemon", "memory=1e9", "memory=1G", False),
        ("daemon", "cpu=100m", "cpu=0.1", False),
        ("daemon", "cpu=101m", "cpu=0.1", True),
        ("controller", "cpu=2", "cpu=1500m", True),
        ("controller", "cpu=1", "cpu=1500m", False),
        ("controller", "memory=1Gi", "memory=1000Mi", True),
        ("controller", "ephemeral-storage=2Ki", "ephemeral-storage=2k", True),
    ],
)
def test_requests_above_limits_fail_the_render(
    helm: Helm, where: str, request_: str, limit: str, refused: bool
) -> None:
    """The apiserver would reject such a pod (for the DaemonSet: every pod, after `helm install` said deployed)."""
    name, req = request_.split("=")
    lim = limit.split("=")[1]
    r = helm.template(
        set_=(
            "controller.enabled=true",
            f"{where}.resources.requests.{name}={req}",
            f"{where}.resources.limits.{name}={lim}",
        ),
        check=False,
    )
    if refused:
        assert r.returncode != 0
        assert (
            f"{where}.resources.requests.{name} ({req}) is above {where}.resources.limits.{name} ({lim})" in r.stderr
        ), r.stderr
    else:
        assert r.returncode == 0, r.stderr


# -- own-node admission policy -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kube", "setting", "rendered"),
    [
        ("1.37.2", "auto", True),
        ("1.30.0", "auto", True),
        ("1.29.9", "auto", False),
        ("1.37.2", "false", False),
        ("1.37.2", "true", True),
    ],
)
def test_own_node_policy_follows_the_kubernetes_version(helm: Helm, kube: str, setting: str, rendered: bool) -> None:
    args = ("--set", "controller.enabled=true", "--set", f"daemon.placement.ownNodeOnly={setting}")
    out = helm.run("template", "snnrm", str(CHART), "--namespace", "snnrm", "--kube-version", kube, *args).stdout
    manifests = [d for d in yaml.safe_load_all(out) if d]
    policies = by_kind(manifests, "ValidatingAdmissionPolicy")
    assert len(policies) == (1 if rendered else 0)
    if rendered:
        [policy] = policies
        [binding] = by_kind(manifests, "ValidatingAdmissionPolicyBinding")
        assert binding["spec"] == {"policyName": policy["metadata"]["name"], "validationActions": ["Deny"]}
        [cond] = policy["spec"]["matchConditions"]
        assert cond["expression"] == "request.userInfo.username == 'system:serviceaccount:snnrm:snnrm-daemon'"
        [rule] = policy["spec"]["matchConstraints"]["resourceRules"]
        # Exactly what the placement ClusterRole lets the daemon write.
        role = one(manifests, "ClusterRole", "snnrm-daemon-placement")
        writable = {
            r for x in role["rules"] if "patch" in x["verbs"] and x["apiGroups"] == [""] for r in x["resources"]
        }
        assert set(rule["resources"]) == writable == {"nodes", "pods"}


def test_own_node_policy_insisted_on_an_old_cluster_fails_the_render(helm: Helm) -> None:
    r = helm.run(
        "template",
        "snnrm",
        str(CHART),
        "--kube-version",
        "1.29.0",
        "--set",
        "controller.enabled=true",
        "--set",
        "daemon.placement.ownNodeOnly=true",
        check=False,
    )
    assert r.returncode != 0
    assert "daemon.placement.ownNodeOnly=true needs Kubernetes 1.30+" in r.stderr


def test_no_placement_no_policy(helm: Helm) -> None:
    assert by_kind(helm.render(), "ValidatingAdmissionPolicy") == []


# -- the hooks token -----------------------------------------------------------------------------------------------

_HOOK = (
    "hooks.enabled=true",
    'hooks.rules[0].name=n,hooks.rules[0].match[0]=alertname="X",hooks.rules[0].action=webhook',
    "hooks.rules[0].url=http://127.0.0.1:1/",
    "hooks.alertmanagerConfig.enabled=true",
)


def test_an_existing_hooks_secret_is_used_and_none_is_made(helm: Helm) -> None:
    manifests = helm.render(
        set_=(*_HOOK, "hooks.token.existingSecret=my-hooks", "hooks.token.key=bearer"),
        api_versions=("monitoring.coreos.com/v1alpha1",),
    )
    assert by_kind(manifests, "Secret") == []
    volumes = one(manifests, "DaemonSet")["spec"]["template"]["spec"]["volumes"]
    [vol] = [v for v in volumes if v["name"] == "hooks-token"]
    assert vol["secret"]["secretName"] == "my-hooks"
    assert vol["secret"]["items"][0]["key"] == "bearer"
    amc = one(manifests, "AlertmanagerConfig")
    creds = amc["spec"]["receivers"][0]["webhookConfigs"][0]["httpConfig"]["authorization"]["credentials"]
    assert creds == {"name": "my-hooks", "key": "bearer"}


def test_a_pinned_hooks_token_renders_the_same_every_time_and_a_short_one_is_refused(helm: Helm) -> None:
    pinned = (*_HOOK, "hooks.token.value=pinned-token-0123456789")
    tokens = {one(helm.render(set_=pinned), "Secret")["data"]["token"] for _ in range(2)}
    assert len(tokens) == 1
    r = helm.template(set_=(*_HOOK, "hooks.token.value=short"), check=False)
    assert r.returncode != 0
    assert "/hooks/token/value" in r.stderr
