#!/usr/bin/env bash
# Build what the Helm chart tests (tests/chart) validate with: kubeconform, built from its Go module, and the JSON
# schemas it validates against, generated from upstream sources that are reachable here (GitHub, where kubeconform
# downloads schemas from by default, is not). Called by `make tools` (and so `make test`).
#
#   scripts/build-chart-tools.sh           build (or reuse) kubeconform and the schemas
#   scripts/build-chart-tools.sh --list    print versions and whether they are cached
#
# Schema sources (all fetched through the Go module proxy and verified against go.sum / the checksum database):
#   * Kubernetes: the OpenAPI v3 documents in k8s.io/kubernetes@<version>/api/openapi-spec/v3, where <version> is the
#     k8s.io/kubernetes that tools/k8s/go.mod pins (the kube-apiserver the e2e tier builds, so the offline schema
#     and the live server's agree), converted by scripts/kube_jsonschema.py to standalone strict JSON schemas.
#   * prometheus-operator CRDs (ServiceMonitor, PodMonitor, PrometheusRule, AlertmanagerConfig):
#     github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR example/prometheus-operator-crd/.
#   * KEDA ScaledObject CRD: github.com/kedacore/keda/v2@$KEDA config/crd/bases/.
#   CRDs are converted by kubeconform's own converter (scripts/openapi2jsonschema.py in its module), with the root
#   closed too (DENY_ROOT_ADDITIONAL_PROPERTIES). The CRD YAML files are kept beside the schemas (crds/): the
#   apiserver tests install them before applying the chart.
#
# Layout: $SNNRM_TOOLS_CACHE/kubeconform-<v>/bin/kubeconform and $SNNRM_TOOLS_CACHE/kube-schemas-<key>/{*.json,crds/},
# each with a .key hashing what decides it. Paths for the tests: $SNNRM_TOOLS_CACHE/checkouts/<id>.chart.env
# (SNNRM_KUBECONFORM, SNNRM_KUBE_SCHEMAS, SNNRM_CHART_CRDS, ...), read by tests/chart/chart_support.py; a variable
# set in the environment wins. kubeconform finds a schema with
#   -schema-location "$SNNRM_KUBE_SCHEMAS/{{ .Group }}-{{ .ResourceKind }}-{{ .ResourceAPIVersion }}.json"
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
CACHE="${SNNRM_TOOLS_CACHE:-$HOME/.cache/snnrm-tools}"
# CRD sources: the newest releases the Go module proxy serves (2026-11).
PROMETHEUS_OPERATOR=v0.85.0
KEDA=v2.21.0
OPERATOR_CRDS="monitoring.coreos.com_servicemonitors.yaml monitoring.coreos.com_podmonitors.yaml
  monitoring.coreos.com_prometheusrules.yaml monitoring.coreos.com_alertmanagerconfigs.yaml"
KEDA_CRDS="keda.sh_scaledobjects.yaml"

export GOTOOLCHAIN=local CGO_ENABLED=0
export GOFLAGS="-trimpath -mod=readonly -buildvcs=false"

die() { echo "build-chart-tools: $*" >&2; exit 1; }
say() { echo "build-chart-tools: $*"; }

module_version() { # dir module -> the version its go.mod requires
  awk -v m="$2" '
    $1 == "require" && $2 == m { print $3; exit }
    $1 == "require" && $2 == "(" { inreq = 1; next }
    inreq && $1 == ")" { inreq = 0; next }
    inreq && $1 == m { print $2; exit }
  ' "$ROOT/$1/go.mod"
}

module_dir() { # module@version -> its directory in GOMODCACHE (downloaded and checksum-verified if needed)
  local dir
  dir="$(cd "$ROOT/tools/kubeconform" && go mod download -json "$1" | awk -F'"' '$2 == "Dir" { print $4 }')"
  [[ -d "$dir" ]] || die "cannot download $1 through the Go module proxy"
  echo "$dir"
}

list_only=0
for arg in "$@"; do
  case "$arg" in
    --list) list_only=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $arg" ;;
  esac
done

command -v go >/dev/null || die "go is not on PATH"
GO_VERSION="$(go env GOVERSION)"
KC_VERSION="$(module_version tools/kubeconform github.com/yannh/kubeconform)"
K8S_VERSION="$(module_version tools/k8s k8s.io/kubernetes)"
[[ -n "$KC_VERSION" && -n "$K8S_VERSION" ]] || die "cannot read pinned versions from tools/{kubeconform,k8s}/go.mod"
PYTHON="$ROOT/.venv/bin/python"
[[ -x "$PYTHON" ]] || PYTHON="$(command -v python3)"

kc_out="$CACHE/kubeconform-$KC_VERSION"
kc_bin="$kc_out/bin/kubeconform"
kc_ldflags="-s -w -X main.version=$KC_VERSION"
kc_key="$({
  echo "go=$GO_VERSION $(go env GOOS GOARCH | tr '\n' ' ') cgo=$CGO_ENABLED flags=$GOFLAGS ldflags=$kc_ldflags"
  sha256sum "$ROOT/tools/kubeconform/go.mod" "$ROOT/tools/kubeconform/go.sum" | cut -d' ' -f1
} | sha256sum | cut -c1-16)"
sc_key="$({
  echo "k8s=$K8S_VERSION operator=$PROMETHEUS_OPERATOR keda=$KEDA kubeconform=$KC_VERSION"
  echo "$OPERATOR_CRDS $KEDA_CRDS"
  sha256sum "$ROOT/scripts/kube_jsonschema.py" | cut -d' ' -f1
} | sha256sum | cut -c1-16)"
sc_out="$CACHE/kube-schemas-$K8S_VERSION-$sc_key"

kc_cached=0; [[ -x "$kc_bin" && "$(cat "$kc_out/.key" 2>/dev/null)" == "$kc_key" ]] && kc_cached=1
sc_cached=0; [[ -f "$sc_out/.key" && "$(cat "$sc_out/.key")" == "$sc_key" ]] && sc_cached=1
if [[ $list_only -eq 1 ]]; then
  printf '%-14s %-10s %-8s %s\n' kubeconform "$KC_VERSION" "$([[ $kc_cached -eq 1 ]] && echo cached || echo missing)" "$kc_bin"
  printf '%-14s %-10s %-8s %s\n' kube-schemas "$K8S_VERSION" "$([[ $sc_cached -eq 1 ]] && echo cached || echo missing)" "$sc_out"
  exit 0
fi

mkdir -p "$CACHE/checkouts"
exec 9>"$CACHE/.lock"  # shared with the other build scripts: one build at a time on a shared cache
flock 9

if [[ $kc_cached -eq 0 ]]; then
  say "building kubeconform $KC_VERSION ..."
  tmp="$kc_out.tmp.$$"; rm -rf "$tmp"; mkdir -p "$tmp/bin"
  (cd "$ROOT/tools/kubeconform" && go build -o "$tmp/bin/kubeconform" -ldflags "$kc_ldflags" \
    github.com/yannh/kubeconform/cmd/kubeconform) || { rm -rf "$tmp"; die "building kubeconform failed"; }
  echo "$kc_key" >"$tmp/.key"; rm -rf "$kc_out"; mv "$tmp" "$kc_out"
  say "built kubeconform -> $kc_bin"
else
  say "kubeconform $KC_VERSION cached ($kc_bin)"
fi

if [[ $sc_cached -eq 0 ]]; then
  say "generating schemas: Kubernetes $K8S_VERSION, prometheus-operator $PROMETHEUS_OPERATOR, KEDA $KEDA ..."
  k8s_dir="$(module_dir "k8s.io/kubernetes@$K8S_VERSION")"
  op_dir="$(module_dir "github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR")"
  keda_dir="$(module_dir "github.com/kedacore/keda/v2@$KEDA")"
  kc_dir="$(module_dir "github.com/yannh/kubeconform@$KC_VERSION")"
  tmp="$sc_out.tmp.$$"; rm -rf "$tmp"; mkdir -p "$tmp/crds"
  "$PYTHON" "$ROOT/scripts/kube_jsonschema.py" "$k8s_dir/api/openapi-spec/v3" "$tmp" || { rm -rf "$tmp"; die "kube_jsonschema failed"; }
  for f in $OPERATOR_CRDS; do cp "$op_dir/example/prometheus-operator-crd/$f" "$tmp/crds/"; done
  for f in $KEDA_CRDS; do cp "$keda_dir/config/crd/bases/$f" "$tmp/crds/"; done
  chmod -R u+w "$tmp"
  (cd "$tmp" && FILENAME_FORMAT='{fullgroup}-{kind}-{version}' DENY_ROOT_ADDITIONAL_PROPERTIES=1 \
    "$PYTHON" "$kc_dir/scripts/openapi2jsonschema.py" crds/*.yaml >/dev/null) ||
    { rm -rf "$tmp"; die "kubeconform's openapi2jsonschema.py failed"; }
  echo "$sc_key" >"$tmp/.key"; rm -rf "$sc_out"; mv "$tmp" "$sc_out"
  say "wrote $(find "$sc_out" -maxdepth 1 -name '*.json' | wc -l) schemas -> $sc_out"
else
  say "schemas cached ($sc_out)"
fi

checkout_id="$(printf '%s' "$ROOT" | sha256sum | cut -c1-12)"
envfile="$CACHE/checkouts/$checkout_id.chart.env"
{
  echo "# written by $ROOT/scripts/build-chart-tools.sh at $(date -u +%FT%TZ); go=$GO_VERSION"
  echo "export SNNRM_KUBECONFORM=$kc_bin"
  echo "export SNNRM_KUBECONFORM_VERSION=$KC_VERSION"
  echo "export SNNRM_KUBE_SCHEMAS=$sc_out"
  echo "export SNNRM_KUBE_SCHEMAS_K8S_VERSION=$K8S_VERSION"
  echo "export SNNRM_CHART_CRDS=$sc_out/crds"
  echo "export SNNRM_PROMETHEUS_OPERATOR_VERSION=$PROMETHEUS_OPERATOR"
  echo "export SNNRM_KEDA_VERSION=$KEDA"
} >"$envfile.tmp"
mv "$envfile.tmp" "$envfile"
say "paths in $envfile"
