#!/usr/bin/env bash
# Build the observability programs the alerting and dashboard tests run (promtool, prometheus, alertmanager) from
# pinned Go modules, into the same cache as scripts/build-tools.sh. Called by `make tools` (and so `make test`).
#
#   scripts/build-observability-tools.sh            build (or reuse) every tool
#   scripts/build-observability-tools.sh NAME...    only these; SNNRM_OBS_TOOLS="NAME ..." does the same
#   scripts/build-observability-tools.sh --list     print the tools, their versions and whether they are cached
#
# Layout (shared with build-tools.sh): ${SNNRM_TOOLS_CACHE:-$HOME/.cache/snnrm-tools}/<name>-<version>/bin/<binary>
# plus a .key file hashing what decides the binary (tools module go.mod/go.sum, Go version, GOOS/GOARCH, build
# tags and ldflags); a tool whose key matches is not rebuilt. <version> is the Go module version pinned in
# tools/<module>/go.mod (Prometheus tags its Go module v0.3MM.P for release 3.MM.P).
#
# Paths for the tests: $SNNRM_TOOLS_CACHE/checkouts/<sha256(repo path)[:12]>.observability.env, lines
# `export NAME=value` (a separate file from build-tools.sh's <id>.env so the two scripts never overwrite each
# other's; snnrm/testing/tools.py reads both). A variable set in the environment wins over the file.
#
# Why these versions: the Go module proxy serves Prometheus 3.16.0 (v0.316.0) and Alertmanager 0.35.0; Debian
# bookworm ships 2.42.0 and 0.25.0, which predate Prometheus 3's strict scrape Content-Type handling and
# Alertmanager's webhook `notification_reason`/`routeLabels` fields.
#
# Prometheus is built with `remove_all_sd` (only static/file service discovery: the tests scrape a loopback
# target) and without the `builtinassets` tag (no web UI bundle: the HTTP API is all the tests use). Both cut the
# build roughly in half. Builds run one at a time under the cache's flock, also shared with build-tools.sh.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
CACHE="${SNNRM_TOOLS_CACHE:-$HOME/.cache/snnrm-tools}"

export GOTOOLCHAIN=local CGO_ENABLED=0
# -mod=readonly: a go.sum that does not match go.mod is an error, never a silent edit of the repo.
export GOFLAGS="-trimpath -mod=readonly -buildvcs=false"

# Both upstreams stamp their version through prometheus/common/version ({APP} = the release version).
PROM_LDFLAGS='-s -w -X github.com/prometheus/common/version.Version={APP} -X github.com/prometheus/common/version.Branch=HEAD -X github.com/prometheus/common/version.BuildUser=snnrm -X github.com/prometheus/common/version.Revision=module-{V}'

# Alertmanager's ui package `//go:embed`s app/dist, which its Go module does not ship (it is built with npm).
# The build copies the module source out of GOMODCACHE, drops a one-page placeholder at each path listed here, and
# builds against that copy through a `replace` in a temporary copy of the tools go.mod (-modfile), so the repo's
# go.mod stays pinned to the upstream module. `go build -overlay` cannot do this: it refuses files under GOMODCACHE.
AM_UI_STUBS='ui/app/dist/elm/index.html ui/app/dist/mantine/index.html'

# name | tools module dir | module whose version names the cache dir | env var | package | build tags | ldflags
# | embed stubs (paths inside the module that get a placeholder file)
TOOLS=(
  "promtool|tools/prometheus|github.com/prometheus/prometheus|SNNRM_PROMTOOL|github.com/prometheus/prometheus/cmd/promtool|remove_all_sd|$PROM_LDFLAGS|"
  "prometheus|tools/prometheus|github.com/prometheus/prometheus|SNNRM_PROMETHEUS|github.com/prometheus/prometheus/cmd/prometheus|remove_all_sd|$PROM_LDFLAGS|"
  "alertmanager|tools/alertmanager|github.com/prometheus/alertmanager|SNNRM_ALERTMANAGER|github.com/prometheus/alertmanager/cmd/alertmanager||$PROM_LDFLAGS|$AM_UI_STUBS"
)

die() { echo "build-observability-tools: $*" >&2; exit 1; }
say() { echo "build-observability-tools: $*"; }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

# The version of module $2 required by the go.mod in directory $1.
module_version() {
  awk -v m="$2" '
    $1 == "require" && $2 == m { print $3; exit }
    $1 == "require" && $2 == "(" { inreq = 1; next }
    inreq && $1 == ")" { inreq = 0; next }
    inreq && $1 == m { print $2; exit }
  ' "$ROOT/$1/go.mod"
}

# Release version from a Go module version: Prometheus v0.316.0 -> 3.16.0; others just drop the "v".
app_version() {
  local v="${1#v}"
  if [[ "$2" == github.com/prometheus/prometheus && "$v" =~ ^0\.([0-9])([0-9][0-9])\.([0-9]+)$ ]]; then
    echo "${BASH_REMATCH[1]}.$((10#${BASH_REMATCH[2]})).${BASH_REMATCH[3]}"
  else
    echo "$v"
  fi
}

tool_key() { # dir pkg tags ldflags stubs
  {
    echo "go=$GO_VERSION $(go env GOOS GOARCH | tr '\n' ' ') cgo=$CGO_ENABLED flags=$GOFLAGS"
    echo "build $2 tags=$3 ldflags=$4${5:+ stubs=$5}"
    (cd "$ROOT/$1" && find . -maxdepth 1 \( -name go.mod -o -name go.sum -o -name '*.go' \) -type f \
      | LC_ALL=C sort | xargs sha256sum)
  } | sha256sum | cut -c1-16
}

# Copy module $2@$3 (required by tools dir $1) into $4/src with a placeholder at each of $5, and print the path of
# a temporary go.mod (in $4/mod, with its go.sum) that replaces the module with that copy.
stubbed_module() {
  local dir="$1" mod="$2" version="$3" work="$4" stubs="$5" src modcache
  modcache="$(cd "$ROOT/$dir" && go mod download -json "$mod@$version" | awk -F'"' '$2 == "Dir" { print $4 }')"
  [[ -d "$modcache" ]] || die "cannot download $mod@$version"
  src="$work/src"
  rm -rf "$src"; cp -r "$modcache" "$src"; chmod -R u+w "$src"
  for f in $stubs; do
    mkdir -p "$(dirname "$src/$f")"
    echo '<!doctype html><title>UI not built</title><p>This build ships the HTTP API only (snnrm tests).</p>' >"$src/$f"
  done
  mkdir -p "$work/mod"
  cp "$ROOT/$dir/go.mod" "$work/mod/go.mod"; cp "$ROOT/$dir/go.sum" "$work/mod/go.sum"
  (cd "$ROOT/$dir" && go mod edit -modfile "$work/mod/go.mod" -replace "$mod=$src")
  echo "$work/mod/go.mod"
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
if [[ ${#want[@]} -eq 0 && -n "${SNNRM_OBS_TOOLS:-}" ]]; then
  read -r -a want <<<"$SNNRM_OBS_TOOLS"
fi
for w in "${want[@]}"; do
  found=0
  for t in "${TOOLS[@]}"; do [[ "${t%%|*}" == "$w" ]] && found=1; done
  [[ $found -eq 1 ]] || die "unknown tool '$w' (known: $(for t in "${TOOLS[@]}"; do printf '%s ' "${t%%|*}"; done))"
done

command -v go >/dev/null || die "go is not on PATH (Prometheus 3.16 needs Go >= 1.26.7)"
GO_VERSION="$(go env GOVERSION)"
mkdir -p "$CACHE/checkouts"
exec 9>"$CACHE/.lock"
flock 9

env_lines=()
total_start="$(now)"
built=0
for t in "${TOOLS[@]}"; do
  IFS='|' read -r name dir versmod envvar pkg tags ldflags stubs <<<"$t"
  [[ -f "$ROOT/$dir/go.mod" ]] || die "$dir/go.mod is missing"
  version="$(module_version "$dir" "$versmod")"
  [[ -n "$version" ]] || die "$dir/go.mod does not require $versmod"
  app="$(app_version "$version" "$versmod")"
  out="$CACHE/$name-$version"
  bin="$out/bin/$name"
  selected=1
  if [[ ${#want[@]} -gt 0 ]]; then
    selected=0
    for w in "${want[@]}"; do [[ "$w" == "$name" ]] && selected=1; done
  fi
  ldflags="${ldflags//\{V\}/$version}"; ldflags="${ldflags//\{APP\}/$app}"
  key="$(tool_key "$dir" "$pkg" "$tags" "$ldflags" "$stubs")"
  cached=0
  [[ -x "$bin" && -f "$out/.key" && "$(cat "$out/.key")" == "$key" ]] && cached=1

  if [[ $list_only -eq 1 ]]; then
    printf '%-14s %-10s %-8s %-8s %s\n' "$name" "$version" "$app" "$([[ $cached -eq 1 ]] && echo cached || echo missing)" "$bin"
    continue
  fi
  if [[ $selected -eq 1 && $cached -eq 0 ]]; then
    say "building $name $app (module $version, $pkg${tags:+, tags $tags}) ..."
    start="$(now)"
    tmp="$out.tmp.$$"
    rm -rf "$tmp"; mkdir -p "$tmp/bin"
    modflags=()
    if [[ -n "$stubs" ]]; then
      modflags=(-modfile "$(stubbed_module "$dir" "$versmod" "$version" "$tmp" "$stubs")")
    fi
    if ! (cd "$ROOT/$dir" && go build "${modflags[@]}" -o "$tmp/bin/$name" -tags "$tags" -ldflags "$ldflags" "$pkg"); then
      rm -rf "$tmp"
      die "building $name $version failed (module $dir; see the go errors above)"
    fi
    rm -rf "$tmp/src" "$tmp/mod"
    echo "$key" >"$tmp/.key"
    rm -rf "$out"; mv "$tmp" "$out"
    took="$(secs "$start" "$(now)")"
    size="$(du -m "$bin" | cut -f1)"
    say "built $name $app in ${took}s (${size} MB) -> $bin"
    echo "$(date -u +%FT%TZ) $name $version ${took}s go=$GO_VERSION" >>"$CACHE/build-times.log"
    built=$((built + 1))
    cached=1
  elif [[ $selected -eq 1 ]]; then
    say "$name $app cached ($bin)"
  fi
  if [[ $cached -eq 1 ]]; then
    env_lines+=("export $envvar=$bin" "export ${envvar}_VERSION=$app")
  fi
done
[[ $list_only -eq 1 ]] && exit 0

checkout_id="$(printf '%s' "$ROOT" | sha256sum | cut -c1-12)"
envfile="$CACHE/checkouts/$checkout_id.observability.env"
{
  echo "# written by $ROOT/scripts/build-observability-tools.sh at $(date -u +%FT%TZ); go=$GO_VERSION"
  echo "export SNNRM_TOOLS_CACHE=$CACHE"
  printf '%s\n' "${env_lines[@]}"
} >"$envfile.tmp"
mv "$envfile.tmp" "$envfile"
say "$built built, total $(secs "$total_start" "$(now)")s; paths in $envfile"
