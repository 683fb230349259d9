#!/usr/bin/env bash
# Build the upstream Kubernetes components the e2e tier runs (tests/e2e), from pinned Go modules, into a cache
# outside the repo. Called by `make tools` (and so by `make test`).
#
#   scripts/build-tools.sh              build (or reuse) every tool
#   scripts/build-tools.sh NAME...      only these (names below); SNNRM_TOOLS="NAME ..." does the same
#   scripts/build-tools.sh --list       print the tools, their versions and whether they are cached
#
# Layout: ${SNNRM_TOOLS_CACHE:-$HOME/.cache/snnrm-tools}/<name>-<version>/bin/<binary>, plus a .key file. The
# key hashes everything that decides the binary: the tools module's go.mod/go.sum (and the harness's Go source),
# the Go version, GOOS/GOARCH and the build command. A tool whose key matches is not rebuilt, so a warm run
# takes a second or two. Versions are pinned in one place only: the go.mod of each tools module.
#
# Paths for the tests: $SNNRM_TOOLS_CACHE/checkouts/<sha256(repo path)[:12]>.env (what pytest's
# tests/e2e/conftest.py reads; one per checkout so two worktrees sharing the cache don't disagree) and a copy
# at $SNNRM_TOOLS_CACHE/env.sh for humans (`. ~/.cache/snnrm-tools/env.sh`). Lines are `export NAME=value`.
#
# Builds run one at a time: on 2 cores a parallel build only adds memory pressure (kube-apiserver peaks at
# ~2.3 GB RSS). GOMODCACHE and GOCACHE stay at Go's defaults (outside the repo) and make a rebuild after a
# go.mod bump incremental.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
CACHE="${SNNRM_TOOLS_CACHE:-$HOME/.cache/snnrm-tools}"

export GOTOOLCHAIN=local CGO_ENABLED=0
# -mod=readonly: a go.sum that does not match go.mod is an error, never a silent edit of the repo.
export GOFLAGS="-trimpath -mod=readonly -buildvcs=false"

# name | tools module dir | module whose version names the cache dir | env var | package to build | ldflags
# ({V} in ldflags is replaced by that version).
K8S_LDFLAGS='-s -w -X k8s.io/component-base/version.gitVersion={V} -X k8s.io/component-base/version.gitMajor={MAJOR} -X k8s.io/component-base/version.gitMinor={MINOR} -X k8s.io/component-base/version.gitTreeState=clean'
TOOLS=(
  "devicemanager-harness|tests/e2e/devicemanager|k8s.io/kubernetes|SNNRM_DEVICEMANAGER_HARNESS|.|-s -w"
  "dra-harness|tests/e2e/dra|k8s.io/kubernetes|SNNRM_DRA_HARNESS|.|-s -w"
  "etcd|tools/etcd|go.etcd.io/etcd/server/v3|SNNRM_ETCD|go.etcd.io/etcd/server/v3|-s -w"
  "kube-apiserver|tools/k8s|k8s.io/kubernetes|SNNRM_KUBE_APISERVER|k8s.io/kubernetes/cmd/kube-apiserver|$K8S_LDFLAGS"
  "kube-scheduler|tools/k8s|k8s.io/kubernetes|SNNRM_KUBE_SCHEDULER|k8s.io/kubernetes/cmd/kube-scheduler|$K8S_LDFLAGS"
  "helm|tools/helm|helm.sh/helm/v3|SNNRM_HELM|helm.sh/helm/v3/cmd/helm|-s -w -X helm.sh/helm/v3/internal/version.version={V} -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
  "kwok|tools/kwok|sigs.k8s.io/kwok|SNNRM_KWOK|sigs.k8s.io/kwok/cmd/kwok|-s -w -X sigs.k8s.io/kwok/pkg/consts.Version={V}"
  # The real node of `make cluster` (scripts/cluster.sh).
  "kubelet|tools/node-k8s|k8s.io/kubernetes|SNNRM_KUBELET|k8s.io/kubernetes/cmd/kubelet|$K8S_LDFLAGS"
  "kube-controller-manager|tools/node-k8s|k8s.io/kubernetes|SNNRM_KUBE_CONTROLLER_MANAGER|k8s.io/kubernetes/cmd/kube-controller-manager|$K8S_LDFLAGS"
  "kube-proxy|tools/node-k8s|k8s.io/kubernetes|SNNRM_KUBE_PROXY|k8s.io/kubernetes/cmd/kube-proxy|$K8S_LDFLAGS"
  "kubectl|tools/node-k8s|k8s.io/kubernetes|SNNRM_KUBECTL|k8s.io/kubernetes/cmd/kubectl|$K8S_LDFLAGS"
  "containerd|tools/containerd|github.com/containerd/containerd/v2|SNNRM_CONTAINERD|-tags no_btrfs,no_devmapper,no_zfs github.com/containerd/containerd/v2/cmd/containerd|-s -w -X github.com/containerd/containerd/v2/version.Version={V}"
  "containerd-shim-runc-v2|tools/containerd|github.com/containerd/containerd/v2|SNNRM_CONTAINERD_SHIM|github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2|-s -w -X github.com/containerd/containerd/v2/version.Version={V}"
  "ctr|tools/containerd|github.com/containerd/containerd/v2|SNNRM_CTR|github.com/containerd/containerd/v2/cmd/ctr|-s -w -X github.com/containerd/containerd/v2/version.Version={V}"
)

die() { echo "build-tools: $*" >&2; exit 1; }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

# The version of module $2 required by the go.mod in directory $1 (a require line; replaces are not consulted).
module_version() {
  awk -v m="$2" '
    $1 == "require" && $2 == m { print $3; exit }
    $1 == "require" && $2 == "(" { inreq = 1; next }
    inreq && $1 == ")" { inreq = 0; next }
    inreq && $1 == m { print $2; exit }
  ' "$ROOT/$1/go.mod"
}

tool_key() { # dir pkg ldflags
  local dir="$1"
  {
    echo "go=$GO_VERSION $(go env GOOS GOARCH | tr '\n' ' ') cgo=$CGO_ENABLED flags=$GOFLAGS"
    echo "build $2 ldflags=$3"
    (cd "$ROOT/$dir" && find . -maxdepth 1 \( -name go.mod -o -name go.sum -o -name '*.go' \) -type f \
      | LC_ALL=C sort | xargs sha256sum)
  } | sha256sum | cut -c1-16
}

list_only=0
want=()
for arg in "$@"; do
  case "$arg" in
    --list) list_only=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) die "unknown option $arg" ;;
    *) want+=("$arg") ;;
  esac
done
if [[ ${#want[@]} -eq 0 && -n "${SNNRM_TOOLS:-}" ]]; then
  read -r -a want <<<"$SNNRM_TOOLS"
fi
for w in "${want[@]}"; do
  found=0
  for t in "${TOOLS[@]}"; do [[ "${t%%|*}" == "$w" ]] && found=1; done
  [[ $found -eq 1 ]] || die "unknown tool '$w' (known: $(for t in "${TOOLS[@]}"; do printf '%s ' "${t%%|*}"; done))"
done

command -v go >/dev/null || die "go is not on PATH (the e2e tier needs Go >= 1.26)"
# The kubelet code in the harness and the control plane must be the same Kubernetes release.
harness_k8s="$(module_version tests/e2e/devicemanager k8s.io/kubernetes)"
tools_k8s="$(module_version tools/k8s k8s.io/kubernetes)"
[[ "$harness_k8s" == "$tools_k8s" ]] ||
  die "k8s.io/kubernetes is $harness_k8s in tests/e2e/devicemanager/go.mod but $tools_k8s in tools/k8s/go.mod"
node_k8s="$(module_version tools/node-k8s k8s.io/kubernetes)"
[[ "$node_k8s" == "$tools_k8s" ]] ||
  die "k8s.io/kubernetes is $node_k8s in tools/node-k8s/go.mod but $tools_k8s in tools/k8s/go.mod"
dra_k8s="$(module_version tests/e2e/dra k8s.io/kubernetes)"
[[ "$dra_k8s" == "$tools_k8s" ]] ||
  die "k8s.io/kubernetes is $dra_k8s in tests/e2e/dra/go.mod but $tools_k8s in tools/k8s/go.mod"
GO_VERSION="$(go env GOVERSION)"
mkdir -p "$CACHE/checkouts"
# Serialise concurrent `make tools` runs (several checkouts may share the cache).
exec 9>"$CACHE/.lock"
flock 9

env_lines=()
total_start="$(now)"
built=0
for t in "${TOOLS[@]}"; do
  IFS='|' read -r name dir versmod envvar pkg ldflags <<<"$t"
  [[ -f "$ROOT/$dir/go.mod" ]] || die "$dir/go.mod is missing"
  version="$(module_version "$dir" "$versmod")"
  [[ -n "$version" ]] || die "$dir/go.mod does not require $versmod"
  out="$CACHE/$name-$version"
  bin="$out/bin/$name"
  selected=1
  if [[ ${#want[@]} -gt 0 ]]; then
    selected=0
    for w in "${want[@]}"; do [[ "$w" == "$name" ]] && selected=1; done
  fi
  minor="${version#v*.}"; minor="${minor%%.*}"; major="${version#v}"; major="${major%%.*}"
  ldflags="${ldflags//\{V\}/$version}"; ldflags="${ldflags//\{MAJOR\}/$major}"; ldflags="${ldflags//\{MINOR\}/$minor}"
  key="$(tool_key "$dir" "$pkg" "$ldflags")"
  cached=0
  [[ -x "$bin" && -f "$out/.key" && "$(cat "$out/.key")" == "$key" ]] && cached=1

  if [[ $list_only -eq 1 ]]; then
    printf '%-22s %-10s %-8s %s\n' "$name" "$version" "$([[ $cached -eq 1 ]] && echo cached || echo missing)" "$bin"
    continue
  fi
  if [[ $selected -eq 1 && $cached -eq 0 ]]; then
    echo "build-tools: building $name $version ($pkg in $dir) ..."
    start="$(now)"
    tmp="$out.tmp.$$"
    rm -rf "$tmp"; mkdir -p "$tmp/bin"
    # $pkg may carry build flags before the package (e.g. -tags): split on spaces on purpose.
    # shellcheck disable=SC2086
    if ! (cd "$ROOT/$dir" && go build -o "$tmp/bin/$name" -ldflags "$ldflags" $pkg); then
      rm -rf "$tmp"
      die "building $name $version failed (module $dir; see the go errors above)"
    fi
    echo "$key" >"$tmp/.key"
    rm -rf "$out"; mv "$tmp" "$out"
    took="$(secs "$start" "$(now)")"
    size="$(du -m "$bin" | cut -f1)"
    echo "build-tools: built $name $version in ${took}s (${size} MB) -> $bin"
    echo "$(date -u +%FT%TZ) $name $version ${took}s go=$GO_VERSION" >>"$CACHE/build-times.log"
    built=$((built + 1))
    cached=1
  elif [[ $selected -eq 1 ]]; then
    echo "build-tools: $name $version cached ($bin)"
  fi
  if [[ $cached -eq 1 ]]; then
    env_lines+=("export $envvar=$bin" "export ${envvar}_VERSION=$version")
  fi
done
[[ $list_only -eq 1 ]] && exit 0

checkout_id="$(printf '%s' "$ROOT" | sha256sum | cut -c1-12)"
envfile="$CACHE/checkouts/$checkout_id.env"
{
  echo "# written by $ROOT/scripts/build-tools.sh at $(date -u +%FT%TZ); go=$GO_VERSION"
  echo "export SNNRM_TOOLS_CACHE=$CACHE"
  printf '%s\n' "${env_lines[@]}"
} >"$envfile.tmp"
mv "$envfile.tmp" "$envfile"
cp "$envfile" "$CACHE/env.sh.tmp" && mv "$CACHE/env.sh.tmp" "$CACHE/env.sh"
echo "build-tools: $built built, total $(secs "$total_start" "$(now)")s; paths in $envfile"
