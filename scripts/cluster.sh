#!/usr/bin/env bash
# A real single-node Kubernetes on this machine, with snnrm installed by its Helm chart (`make cluster`).
#
#   scripts/cluster.sh up       start (or finish starting) everything; idempotent
#   scripts/cluster.sh down     stop everything `up` started, by PID, and remove its mounts, network devices,
#                               iptables chains, cgroups and state; idempotent
#   scripts/cluster.sh image    rebuild the snnrm image from the Dockerfile and import it into the runtime
#   scripts/cluster.sh status   what runs, and where the logs are
#   scripts/cluster.sh chart [--set k=v]...   reinstall the chart with the cluster's values plus these
#   scripts/cluster.sh restart-kubelet   stop the kubelet, wipe its socket, start it again (tests/node)
#
# What runs, all built here without a registry or the internet beyond PyPI, the Go module proxy and Debian:
#   etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kube-proxy, kubelet, kubectl (Go modules at
#   the one Kubernetes release pinned in tools/k8s and tools/node-k8s, built and cached by scripts/build-tools.sh);
#   containerd 2.x with CDI enabled (tools/containerd), runc and the CNI plugins (Debian packages); a pause image
#   compiled from the kubelet release's own build/pause/linux/pause.c; the snnrm image built by buildah from the
#   repo's Dockerfile on a Debian base made by mmdebstrap (Debian packages only).
#
# Files: .cluster/kubeconfig (admin), .cluster/bin/{kubectl,helm}, .cluster/logs/*.log, .cluster/pids/*.pid.
# Runtime state lives in /var/lib/snnrm-cluster and /run/snnrm-cluster; the kubelet uses its default root
# /var/lib/kubelet so the chart's default hostPaths are the ones exercised. Heavy outputs (the base image, the
# buildah layer cache) are cached in ${SNNRM_CLUSTER_CACHE:-$HOME/.cache/snnrm-cluster}, keyed by content.
#
# Needs root, cgroups (v1 or v2) and overlayfs; a machine without them is refused in one line.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
CL="$ROOT/.cluster"
RUN=/run/snnrm-cluster
VAR=/var/lib/snnrm-cluster
KUBELET_ROOT=/var/lib/kubelet
CACHE="${SNNRM_CLUSTER_CACHE:-$HOME/.cache/snnrm-cluster}"
TOOLS_CACHE="${SNNRM_TOOLS_CACHE:-$HOME/.cache/snnrm-tools}"
NODE="${SNNRM_CLUSTER_NODE:-snnrm-node}"
BRIDGE=snnrm0
POD_CIDR=10.88.0.0/16
SERVICE_CIDR=10.96.0.0/24
API_SERVICE_IP=10.96.0.1
API_PORT=6443
ETCD_PORT=2479
SANDBOX_IMAGE=registry.k8s.io/pause:3.10.2
RELEASE=snnrm
# Bearer token for POST /sim/faults on the node (tests/node inject core failures and hot spots with it).
FAULT_TOKEN=snnrm-cluster-fault-token
NAMESPACE=snnrm
CONTAINERD_SOCK="$RUN/containerd/containerd.sock"
APT_PACKAGES=(runc containernetworking-plugins buildah mmdebstrap iptables conntrack openssl curl)
NODE_TOOLS=(etcd kube-apiserver kube-scheduler kube-controller-manager kube-proxy kubelet kubectl containerd
  containerd-shim-runc-v2 ctr helm)

say() { echo "cluster: $*" >&2; }
die() { echo "cluster: $*" >&2; exit 1; }

preflight() {
  [[ "$(id -u)" -eq 0 ]] || die "needs root (a kubelet and a container runtime manage cgroups, mounts and network namespaces)"
  [[ -f /sys/fs/cgroup/cgroup.controllers || -d /sys/fs/cgroup/memory ]] ||
    die "no cgroup filesystem at /sys/fs/cgroup (neither v2 nor a v1 memory hierarchy)"
  grep -qw overlay /proc/filesystems || modprobe overlay 2>/dev/null || die "the kernel has no overlayfs"
  ip link add snnrm-probe type bridge 2>/dev/null && ip link del snnrm-probe ||
    die "cannot create a bridge network device (CNI bridge plugin needs one)"
}

install_packages() {
  local need=()
  for p in "${APT_PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || need+=("$p"); done
  [[ ${#need[@]} -eq 0 ]] && return
  say "installing Debian packages: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
}

build_tools() {
  bash "$ROOT/scripts/build-tools.sh" "${NODE_TOOLS[@]}" >&2
  bash "$ROOT/scripts/build-chart-tools.sh" >&2
  local envfile
  envfile="$TOOLS_CACHE/checkouts/$(printf '%s' "$ROOT" | sha256sum | cut -c1-12).env"
  # shellcheck disable=SC1090
  . "$envfile"
  [[ -n "${SNNRM_HELM:-}" ]] || SNNRM_HELM="$(ls -d "$TOOLS_CACHE"/helm-*/bin/helm | tail -1)"
  mkdir -p "$CL/bin"
  ln -sf "$SNNRM_KUBECTL" "$CL/bin/kubectl"
  ln -sf "$SNNRM_HELM" "$CL/bin/helm"
  # containerd finds its shim on PATH.
  mkdir -p "$RUN/bin"
  ln -sf "$SNNRM_CONTAINERD_SHIM" "$RUN/bin/containerd-shim-runc-v2"
}

host_ip() {
  ip -4 -o addr show scope global | awk '{split($4, a, "/"); print a[1]; exit}'
}

# -- certificates ------------------------------------------------------------------------------------------

cert() { # name subject [sans]
  local d="$CL/pki" name="$1" subj="$2" sans="${3:-}"
  [[ -f "$d/$name.crt" ]] && return
  openssl req -new -newkey rsa:2048 -nodes -keyout "$d/$name.key" -out "$d/$name.csr" -subj "$subj" 2>/dev/null
  local ext="$d/$name.ext"
  {
    echo "basicConstraints=CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=serverAuth,clientAuth"
    [[ -n "$sans" ]] && echo "subjectAltName=$sans"
  } >"$ext"
  openssl x509 -req -in "$d/$name.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial -days 30 \
    -extfile "$ext" -out "$d/$name.crt" 2>/dev/null
}

certs() {
  local d="$CL/pki" ip="$1"
  mkdir -p "$d"
  if [[ ! -f "$d/ca.crt" ]]; then
    openssl req -x509 -new -newkey rsa:2048 -nodes -keyout "$d/ca.key" -out "$d/ca.crt" -days 30 \
      -subj "/CN=snnrm-cluster-ca" 2>/dev/null
  fi
  [[ -f "$d/sa.key" ]] || { openssl genrsa -out "$d/sa.key" 2048 2>/dev/null; openssl rsa -in "$d/sa.key" -pubout -out "$d/sa.pub" 2>/dev/null; }
  cert apiserver "/CN=kube-apiserver" \
    "IP:$API_SERVICE_IP,IP:$ip,IP:127.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost"
  cert admin "/O=system:masters/CN=snnrm-cluster-admin"
  cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client"
  cert kubelet "/O=system:nodes/CN=system:node:$NODE" "DNS:$NODE,IP:$ip,IP:127.0.0.1"
  cert controller-manager "/CN=system:kube-controller-manager"
  cert scheduler "/CN=system:kube-scheduler"
  cert proxy "/CN=system:kube-proxy"
}

kubeconfig() { # file cert-name
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: snnrm
  cluster: {server: "https://$HOST_IP:$API_PORT", certificate-authority: "$CL/pki/ca.crt"}
users:
- name: $2
  user: {client-certificate: "$CL/pki/$2.crt", client-key: "$CL/pki/$2.key"}
contexts:
- name: snnrm
  context: {cluster: snnrm, user: $2}
current-context: snnrm
EOF
}

# -- processes ---------------------------------------------------------------------------------------------

alive() { [[ -f "$CL/pids/$1.pid" ]] && kill -0 "$(cat "$CL/pids/$1.pid")" 2>/dev/null; }

spawn() { # name argv...
  local name="$1"; shift
  if alive "$name"; then return; fi
  mkdir -p "$CL/logs" "$CL/pids"
  # setsid: the process outlives this script and never receives the terminal's Ctrl-C.
  PATH="$RUN/bin:$PATH" setsid "$@" >>"$CL/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$CL/pids/$name.pid"
  say "started $name (pid $!, log .cluster/logs/$name.log)"
}

wait_for() { # what seconds command...
  local what="$1" within="$2"; shift 2
  local deadline=$((SECONDS + within))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "timed out after ${within}s waiting for $what (logs in $CL/logs)"
    sleep 0.5
  done
}

kc() { "$SNNRM_KUBECTL" --kubeconfig "$CL/kubeconfig" "$@"; }

# -- images ------------------------------------------------------------------------------------------------

BUILDAH=(buildah --root "$CACHE/buildah/storage" --runroot "$RUN/buildah" --storage-driver vfs)

base_image() {
  # The Dockerfile's PYTHON_IMAGE, from Debian packages: python3 3.11 with venv, like python:3.11-slim-bookworm.
  local key tar
  key="$(printf '%s\n' bookworm minbase python3 python3-venv python-is-python3 ca-certificates | sha256sum | cut -c1-12)"
  tar="$CACHE/base-bookworm-$key.tar"
  if [[ ! -f "$tar" ]]; then
    say "building the base image rootfs with mmdebstrap (Debian bookworm, python3) ..."
    mkdir -p "$CACHE"
    # The target must end in .tar: mmdebstrap picks its output format from the name (a name ending in .tmp gave a
    # directory, so the -f test above never held and the next run failed on the non-empty leftover).
    rm -rf "$tar.tmp" "$tar.tmp.tar"
    [[ -d "$tar" ]] && rm -rf "$tar"  # a directory left by that bug
    mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,python-is-python3,ca-certificates \
      bookworm "$tar.tmp.tar" http://deb.debian.org/debian
    mv "$tar.tmp.tar" "$tar"
  fi
  if ! "${BUILDAH[@]}" inspect --type image "localhost/snnrm-base:$key" >/dev/null 2>&1; then
    local c
    c="$("${BUILDAH[@]}" from scratch)"
    "${BUILDAH[@]}" add "$c" "$tar" / >/dev/null
    "${BUILDAH[@]}" config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --cmd python3 "$c"
    "${BUILDAH[@]}" commit -q "$c" "localhost/snnrm-base:$key" >/dev/null
    "${BUILDAH[@]}" rm "$c" >/dev/null
  fi
  BASE_IMAGE="localhost/snnrm-base:$key"
}

pause_image() {
  local src mod
  mod="$(cd "$ROOT/tools/node-k8s" && go list -m -f '{{.Dir}}' k8s.io/kubernetes)"
  src="$mod/build/pause/linux/pause.c"
  [[ -f "$src" ]] || die "no pause.c in the kubelet's module ($src)"
  if ! "${BUILDAH[@]}" inspect --type image "$SANDBOX_IMAGE" >/dev/null 2>&1; then
    local tmp c
    tmp="$(mktemp -d)"
    gcc -Os -static -DVERSION="${SANDBOX_IMAGE##*:}-snnrm" -o "$tmp/pause" "$src"
    c="$("${BUILDAH[@]}" from scratch)"
    "${BUILDAH[@]}" copy "$c" "$tmp/pause" /pause >/dev/null
    "${BUILDAH[@]}" config --entrypoint '["/pause"]' --user 65535:65535 "$c"
    "${BUILDAH[@]}" commit -q "$c" "$SANDBOX_IMAGE" >/dev/null
    "${BUILDAH[@]}" rm "$c" >/dev/null
    rm -rf "$tmp"
  fi
  import_image "$SANDBOX_IMAGE"
}

image_tag() {
  # Content-addressed: the image changes exactly when what the Dockerfile copies changes.
  (cd "$ROOT" && git ls-files -co --exclude-standard Dockerfile pyproject.toml setup.py README.md snnrm sim_hw |
    LC_ALL=C sort | xargs sha256sum | sha256sum | cut -c1-12)
}

snnrm_image() {
  base_image
  IMAGE_TAG="dev-$(image_tag)"
  local ref="docker.io/library/snnrm:$IMAGE_TAG"
  if ! "${BUILDAH[@]}" inspect --type image "$ref" >/dev/null 2>&1; then
    prune_images "$ref" /dev/null  # room first: other source trees' images and a failed build's leftovers
    say "building $ref from the Dockerfile (base $BASE_IMAGE) ..."
    # RUN steps fetch wheels from PyPI: they trust what this host trusts (a TLS-intercepting proxy's CA, say).
    local trust=() log
    [[ -f /etc/ssl/certs/ca-certificates.crt ]] &&
      trust=(-v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro)
    log="$(mktemp)"
    "${BUILDAH[@]}" build --layers --isolation chroot --network host --pull-never "${trust[@]}" \
      --build-arg "PYTHON_IMAGE=$BASE_IMAGE" -t "$ref" -f "$ROOT/Dockerfile" "$ROOT" >"$log" 2>&1 ||
      { cat "$log" >>"$CL/logs/image-build.log"; rm -f "$log"; die "building the image failed (log: $CL/logs/image-build.log)"; }
    cat "$log" >>"$CL/logs/image-build.log"
    prune_images "$ref" "$log"
    rm -f "$log"
  fi
  import_image "$ref"
}

prune_images() { # keep_ref build_log
  # The vfs storage copies every layer: each source change used to leave 1-2 GB behind (55 GB after two days
  # here, and a build then failed with no space left). Keep the image being used and the layer images its build
  # made or took from the cache (the next build's cache); drop other snnrm images, stale working containers and
  # every other dangling layer image.
  local keep="$1" log="$2" keep_ids ref id
  "${BUILDAH[@]}" rm --all >/dev/null 2>&1 || true
  for ref in $("${BUILDAH[@]}" images --format '{{.Name}}:{{.Tag}}' 2>/dev/null | grep '^docker.io/library/snnrm:dev-' || true); do
    [[ "$ref" == "$keep" ]] || "${BUILDAH[@]}" rmi -f "$ref" >/dev/null 2>&1 || true
  done
  [[ "$log" == /dev/null ]] && return 0
  # buildah prints each step's image as "--> <11 hex>" and a cache hit as "--> Using cache <64 hex>".
  keep_ids="$(grep -oE -- '--> (Using cache )?[0-9a-f]{11,}' "$log" | grep -oE '[0-9a-f]{11,}$' | cut -c1-11 | sort -u || true)"
  for id in $("${BUILDAH[@]}" images --filter dangling=true --format '{{.ID}}' 2>/dev/null); do
    grep -qx "${id:0:11}" <<<"$keep_ids" || "${BUILDAH[@]}" rmi -f "$id" >/dev/null 2>&1 || true
  done
}

import_image() { # ref
  local ref="$1"
  if "$SNNRM_CTR" -a "$CONTAINERD_SOCK" -n k8s.io images ls -q 2>/dev/null | grep -qx "$ref"; then return; fi
  local tmp
  tmp="$(mktemp -d)"
  "${BUILDAH[@]}" push -q "$ref" "docker-archive:$tmp/image.tar:$ref" >/dev/null
  "$SNNRM_CTR" -a "$CONTAINERD_SOCK" -n k8s.io images import "$tmp/image.tar" >/dev/null 2>&1 ||
    die "ctr could not import $ref into containerd"
  rm -rf "$tmp"
  say "imported $ref into containerd"
}

# -- configuration -----------------------------------------------------------------------------------------

write_configs() {
  mkdir -p "$CL/etc" "$CL/cni" "$VAR" "$RUN/containerd"
  # CAP_SYS_RESOURCE is bit 24 of the effective capability set.
  RESTRICT_OOM=false
  (( (0x$(awk '/^CapEff/ {print $2}' /proc/self/status) >> 24) & 1 )) || RESTRICT_OOM=true
  cat >"$CL/etc/containerd.toml" <<EOF
version = 3
root = "$VAR/containerd"
state = "$RUN/containerd/state"

[grpc]
  address = "$CONTAINERD_SOCK"

[plugins.'io.containerd.cri.v1.runtime']
  enable_cdi = true
  # Without CAP_SYS_RESOURCE (some VMs and sandboxes) no process may lower its oom_score_adj, and runc fails
  # every sandbox the kubelet asks to protect (-998); then keep containers' scores at or above containerd's.
  restrict_oom_score_adj = $RESTRICT_OOM
  cdi_spec_dirs = ["/etc/cdi", "/var/run/cdi"]
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = "$(command -v runc)"
        Root = "$RUN/runc"
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = "$CL/cni"

[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "$SANDBOX_IMAGE"
EOF
  cat >"$CL/cni/10-snnrm.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "snnrm",
  "plugins": [
    {"type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "$POD_CIDR"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "loopback"}
  ]
}
EOF
  local cgroup_v1=false
  [[ -f /sys/fs/cgroup/cgroup.controllers ]] || cgroup_v1=true
  cat >"$CL/etc/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# This machine may have only cgroup v1; recent kubelets refuse it unless told (KEP-4569).
failCgroupV1: false
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
address: $HOST_IP
port: 10250
readOnlyPort: 0
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: "$CL/pki/ca.crt"}
authorization: {mode: Webhook}
tlsCertFile: "$CL/pki/kubelet.crt"
tlsPrivateKeyFile: "$CL/pki/kubelet.key"
clusterDomain: cluster.local
resolvConf: /etc/resolv.conf
failSwapOn: false
podLogsDir: $VAR/pod-logs
# A test machine's disk is shared with builds: do not evict pods over disk pressure.
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%"}
imageGCHighThresholdPercent: 100
serializeImagePulls: false
# Node status (and so status.allocatable) every second instead of 10 s: on one node the apiserver load is
# nothing, and tests/node watch a failed core leave allocatable.
nodeStatusUpdateFrequency: 1s
EOF
  echo "cgroup_v1=$cgroup_v1" >"$CL/etc/host.facts"
}

# -- up ----------------------------------------------------------------------------------------------------

up() {
  preflight
  install_packages
  build_tools
  HOST_IP="$(host_ip)"
  [[ -n "$HOST_IP" ]] || die "no global IPv4 address on this machine for the apiserver and the kubelet"
  mkdir -p "$CL/logs" "$CL/pids" "$RUN" "$VAR"
  echo "$HOST_IP" >"$CL/host-ip"
  certs "$HOST_IP"
  kubeconfig "$CL/kubeconfig" admin
  for n in kubelet controller-manager scheduler proxy; do kubeconfig "$CL/$n.kubeconfig" "$n"; done
  write_configs

  spawn etcd "$SNNRM_ETCD" --data-dir "$VAR/etcd" --name snnrm \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" \
    --initial-advertise-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" \
    --initial-cluster "snnrm=http://127.0.0.1:$((ETCD_PORT + 1))" --log-level warn
  wait_for etcd 30 curl -sf "http://127.0.0.1:$ETCD_PORT/health"

  local p="$CL/pki"
  spawn kube-apiserver "$SNNRM_KUBE_APISERVER" --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
    --bind-address "$HOST_IP" --advertise-address "$HOST_IP" --secure-port "$API_PORT" \
    --tls-cert-file "$p/apiserver.crt" --tls-private-key-file "$p/apiserver.key" --client-ca-file "$p/ca.crt" \
    --kubelet-client-certificate "$p/apiserver-kubelet-client.crt" --kubelet-client-key "$p/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority "$p/ca.crt" --kubelet-preferred-address-types InternalIP,Hostname \
    --service-cluster-ip-range "$SERVICE_CIDR" --allow-privileged=true \
    --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
    --service-account-issuer "https://kubernetes.default.svc" --service-account-key-file "$p/sa.pub" \
    --service-account-signing-key-file "$p/sa.key" --profiling=false --v=1
  wait_for kube-apiserver 90 curl -sf --cacert "$p/ca.crt" --cert "$p/admin.crt" --key "$p/admin.key" \
    "https://$HOST_IP:$API_PORT/readyz"

  spawn kube-controller-manager "$SNNRM_KUBE_CONTROLLER_MANAGER" --kubeconfig "$CL/controller-manager.kubeconfig" \
    --authentication-kubeconfig "$CL/controller-manager.kubeconfig" \
    --authorization-kubeconfig "$CL/controller-manager.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port 10357 --leader-elect=false --use-service-account-credentials \
    --service-account-private-key-file "$p/sa.key" --root-ca-file "$p/ca.crt" \
    --cluster-signing-cert-file "$p/ca.crt" --cluster-signing-key-file "$p/ca.key" \
    --v=1
  [[ -f "$CL/etc/scheduler.yaml" ]] || scheduler_config ""
  start_scheduler

  spawn containerd "$SNNRM_CONTAINERD" --config "$CL/etc/containerd.toml"
  wait_for containerd 30 "$SNNRM_CTR" -a "$CONTAINERD_SOCK" version
  pause_image
  snnrm_image

  start_kubelet
  spawn kube-proxy "$SNNRM_KUBE_PROXY" --kubeconfig "$CL/proxy.kubeconfig" --hostname-override "$NODE" \
    --proxy-mode iptables --cluster-cidr "$POD_CIDR" --bind-address 127.0.0.1 --metrics-bind-address 127.0.0.1:10249 \
    --healthz-bind-address 127.0.0.1:10256 --v=1
  wait_for "node $NODE to be Ready" 120 bash -c \
    "'$SNNRM_KUBECTL' --kubeconfig '$CL/kubeconfig' get node '$NODE' -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}' | grep -qx True"

  # The chart's DaemonSet runs where chips are (snnrm.io/present=true): this node has simulated ones.
  kc label node "$NODE" snnrm.io/present=true --overwrite >/dev/null
  install_chart
  wire_extender
  say "up: node $NODE Ready, snnrm installed. KUBECONFIG=$CL/kubeconfig, kubectl and helm in $CL/bin, logs in $CL/logs"
}

scheduler_config() { # extenders yaml (list items), or ""
  {
    echo "apiVersion: kubescheduler.config.k8s.io/v1"
    echo "kind: KubeSchedulerConfiguration"
    echo "clientConnection: {kubeconfig: \"$CL/scheduler.kubeconfig\"}"
    echo "leaderElection: {leaderElect: false}"
    echo "profiles:"
    echo "- schedulerName: default-scheduler"
    echo "- schedulerName: snnrm-scheduler"
    if [[ -n "$1" ]]; then echo "extenders:"; echo "$1"; fi
  } >"$CL/etc/scheduler.yaml.new"
  if cmp -s "$CL/etc/scheduler.yaml.new" "$CL/etc/scheduler.yaml"; then rm "$CL/etc/scheduler.yaml.new"; return 1; fi
  mv "$CL/etc/scheduler.yaml.new" "$CL/etc/scheduler.yaml"
}

start_scheduler() {
  spawn kube-scheduler "$SNNRM_KUBE_SCHEDULER" --config "$CL/etc/scheduler.yaml" \
    --authentication-kubeconfig "$CL/scheduler.kubeconfig" --authorization-kubeconfig "$CL/scheduler.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port 10359 --v=1
}

# The chart's extenders entry (ConfigMap <release>-scheduler-extender) into this scheduler's configuration. The
# scheduler runs on the host, outside cluster DNS, so the Service name becomes its ClusterIP (kube-proxy routes
# it), as on any cluster whose scheduler is not a pod.
wire_extender() {
  local extenders ip
  extenders="$(kc -n "$NAMESPACE" get configmap "$RELEASE-scheduler-extender" -o jsonpath='{.data.extenders\.yaml}')"
  ip="$(kc -n "$NAMESPACE" get service "$RELEASE-extender" -o jsonpath='{.spec.clusterIP}')"
  [[ -n "$extenders" && -n "$ip" ]] || die "the chart installed no scheduler extender ConfigMap or Service"
  extenders="$(sed "s#http://$RELEASE-extender\.$NAMESPACE\.svc:#http://$ip:#" <<<"$extenders")"
  if scheduler_config "$extenders"; then
    stop kube-scheduler
    start_scheduler
  fi
  kc -n "$NAMESPACE" rollout status "deployment/$RELEASE-controller" --timeout 180s >>"$CL/logs/helm.log" 2>&1 ||
    die "the snnrm controller did not become ready (kubectl -n $NAMESPACE describe pods; logs in $CL/logs)"
}

start_kubelet() {
  spawn kubelet "$SNNRM_KUBELET" --config "$CL/etc/kubelet.yaml" --kubeconfig "$CL/kubelet.kubeconfig" \
    --hostname-override "$NODE" --node-ip "$HOST_IP" --v=1
}

install_chart() {
  say "helm upgrade --install $RELEASE charts/snnrm (image snnrm:$IMAGE_TAG, backend sim) ..."
  "$SNNRM_HELM" --kubeconfig "$CL/kubeconfig" upgrade --install "$RELEASE" "$ROOT/charts/snnrm" \
    --namespace "$NAMESPACE" --create-namespace \
    --set image.tag="$IMAGE_TAG" --set image.pullPolicy=Never \
    --set daemon.config.backend=sim --set daemon.config.simFaultInjection=token \
    --set controller.enabled=true --set controller.replicas=1 --set controller.podDisruptionBudget.enabled=false \
    --set-string daemon.simFaultToken.value="$FAULT_TOKEN" \
    "$@" \
    --wait --timeout 5m >>"$CL/logs/helm.log" 2>&1 ||
    die "helm install failed (log: $CL/logs/helm.log; pods: $CL/bin/kubectl --kubeconfig $CL/kubeconfig -n $NAMESPACE get pods)"
  # helm's --wait counts a DaemonSet with nothing scheduled yet as ready: wait for the pod itself.
  kc -n "$NAMESPACE" rollout status "daemonset/$RELEASE-daemon" --timeout 180s >>"$CL/logs/helm.log" 2>&1 ||
    die "the snnrm DaemonSet did not become ready (kubectl -n $NAMESPACE describe pods; logs in $CL/logs)"
}

# -- down --------------------------------------------------------------------------------------------------

stop() { # name
  local f="$CL/pids/$1.pid"
  [[ -f "$f" ]] || return 0
  local pid
  pid="$(cat "$f")"
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    say "stopped $1 (pid $pid)"
  fi
  rm -f "$f"
}

iptables_cleanup() {
  # Chains kube-proxy and the kubelet created (KUBE-*) and any CNI-* chain: jumps first, then the chains.
  local ipt table
  for ipt in iptables ip6tables; do
    command -v "$ipt" >/dev/null || continue
    for table in filter nat mangle; do
      "$ipt" -t "$table" -S 2>/dev/null | { grep -E '^-A [A-Z]+ .*-j (KUBE|CNI)-' || true; } | sed 's/^-A/-D/' |
        while read -r rule; do eval "$ipt -t $table $rule" 2>/dev/null || true; done
      "$ipt" -t "$table" -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^(KUBE|CNI)-/ {print $2}' |
        while read -r chain; do "$ipt" -t "$table" -F "$chain" 2>/dev/null || true; done
      "$ipt" -t "$table" -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^(KUBE|CNI)-/ {print $2}' |
        while read -r chain; do "$ipt" -t "$table" -X "$chain" 2>/dev/null || true; done
    done
  done
}

down() {
  [[ "$(id -u)" -eq 0 ]] || die "needs root"
  stop kube-proxy
  stop kubelet
  # Containers: kill every task in the runtime while it still answers, then the runtime, then any shim left.
  if [[ -S "$CONTAINERD_SOCK" ]]; then
    local ctr_bin
    ctr_bin="$(ls -d "$TOOLS_CACHE"/ctr-*/bin/ctr 2>/dev/null | tail -1)"
    if [[ -n "$ctr_bin" ]]; then
      for t in $("$ctr_bin" -a "$CONTAINERD_SOCK" -n k8s.io tasks ls -q 2>/dev/null); do
        "$ctr_bin" -a "$CONTAINERD_SOCK" -n k8s.io tasks kill -a -s KILL "$t" >/dev/null 2>&1 || true
      done
    fi
  fi
  stop containerd
  pkill -KILL -f "containerd-shim-runc-v2 .*$RUN" 2>/dev/null || true
  # Anything still in the pods' cgroups (a container whose shim died first).
  for procs in /sys/fs/cgroup/*/kubepods*/**/cgroup.procs /sys/fs/cgroup/kubepods*/**/cgroup.procs; do
    [[ -f "$procs" ]] && xargs -r kill -KILL <"$procs" 2>/dev/null || true
  done
  stop kube-scheduler
  stop kube-controller-manager
  stop kube-apiserver
  stop etcd

  # Mounts under our directories (pod volumes, overlay snapshots, sandbox shm, network namespaces), deepest first.
  findmnt -rn -o TARGET | awk -v a="$KUBELET_ROOT" -v b="$RUN" -v c="$VAR" \
    'index($0, a) == 1 || index($0, b) == 1 || index($0, c) == 1 || $0 ~ "^/(var/)?run/netns/cni-"' |
    sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
  for ns in $(ip netns list 2>/dev/null | awk '$1 ~ /^cni-/ {print $1}'); do ip netns delete "$ns" 2>/dev/null || true; done
  # `ip netns` and containerd bind-mount /run/netns onto itself; drop it once no namespace is left in it.
  if [[ -d /run/netns && -z "$(ls -A /run/netns)" ]] && findmnt -rn /run/netns >/dev/null; then umount /run/netns || true; fi
  ip link show "$BRIDGE" >/dev/null 2>&1 && ip link delete "$BRIDGE"
  iptables_cleanup
  # Pod cgroups the kubelet created (cgroupfs driver), deepest first.
  find /sys/fs/cgroup -depth -type d -name 'kubepods*' 2>/dev/null | while read -r d; do
    find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  done
  find /var/log/containers -maxdepth 1 -lname "$VAR/*" -delete 2>/dev/null || true
  rm -rf "$KUBELET_ROOT" "$RUN" "$VAR" /var/lib/snnrm /var/run/cdi/snnrm* "$CL/pids" "$CL/pki" "$CL/etc"
  say "down: nothing of the cluster runs; logs kept in $CL/logs"
}

status() {
  for n in etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet kube-proxy; do
    if alive "$n"; then echo "$n: running (pid $(cat "$CL/pids/$n.pid"), log $CL/logs/$n.log)"; else echo "$n: stopped"; fi
  done
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  image)
    build_tools
    HOST_IP="$(cat "$CL/host-ip")"
    snnrm_image
    install_chart ;;
  status) status ;;
  chart)
    # Reinstall the chart with the cluster's values plus any `--set k=v` given (tests/node switch DRA on and off).
    shift
    build_tools >/dev/null 2>&1
    HOST_IP="$(cat "$CL/host-ip")"
    snnrm_image  # the sources may have changed since `up`: the chart must name an image the runtime has
    install_chart "$@" ;;
  restart-kubelet)
    # What a kubelet upgrade or crash looks like to the plugins: the process goes, its sockets are wiped, a new
    # one starts and recreates kubelet.sock (pods keep running).
    build_tools >/dev/null 2>&1
    HOST_IP="$(cat "$CL/host-ip")"
    stop kubelet
    rm -f "$KUBELET_ROOT/device-plugins/kubelet.sock"
    start_kubelet ;;
  *) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 2 ;;
esac
