# shellcheck shell=bash
# The local cluster's node: one kubelet (containerd + runc, CNI bridge), kube-proxy
# (iptables), kube-scheduler, an OCI registry on loopback that containerd
# mirrors docker.io and registry.k8s.io to, and CoreDNS as the cluster DNS.
# Sourced by up.sh and down.sh after lib.sh; not run on its own.
#
# Network: Pods live on the bridge $M2M_NODE_BRIDGE ($M2M_POD_CIDR); its
# gateway address is the node's InternalIP. Service IPs are routed to the
# bridge, nothing is masqueraded, and the forward chain drops whatever would
# cross from the bridge to another interface or back: Pods reach each other,
# Services, the node and the apiserver (through a proxy on the gateway
# address), and nothing beyond this machine.

# --- ownership: one node per machine ------------------------------------------
node_claim() {
  local owner
  owner="$(cat "$M2M_NODE_OWNER_FILE" 2>/dev/null || true)"
  if [[ -n "$owner" && "$owner" != "$M2M_CLUSTER_DIR" && -d "$owner" ]]; then
    local pid
    pid="$(cat "$owner/run/kubelet.pid" 2>/dev/null || true)"
    if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
      m2m_die "the node of the control plane in $owner runs on this machine (one node per machine: it owns $M2M_NODE_BRIDGE, iptables and the kubepods cgroups); stop it, or start this control plane with M2M_NODE=0"
    fi
  fi
  printf '%s\n' "$M2M_CLUSTER_DIR" >"$M2M_NODE_OWNER_FILE"
}

node_owned_by_us() {
  [[ "$(cat "$M2M_NODE_OWNER_FILE" 2>/dev/null || true)" == "$M2M_CLUSTER_DIR" ]]
}

# --- certificates and kubeconfigs ---------------------------------------------
# node_client_cert NAME CN [O]: a client certificate signed by the cluster CA.
node_client_cert() {
  local name="$1" cn="$2" org="${3:-}" d="$M2M_PKI_DIR" subj
  [[ -s "$d/$name.crt" && -s "$d/$name.key" ]] && return 0
  subj="/CN=$cn"
  [[ -z "$org" ]] || subj="/O=$org$subj"
  openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
    -keyout "$d/$name.key" -out "$d/$name.csr" -subj "$subj" 2>/dev/null \
    || m2m_die "openssl: $name key"
  printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n' >"$d/$name.ext"
  openssl x509 -req -in "$d/$name.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial \
    -days 3650 -sha256 -extfile "$d/$name.ext" -out "$d/$name.crt" 2>/dev/null \
    || m2m_die "openssl: $name certificate"
  rm -f "$d/$name.csr" "$d/$name.ext"
  chmod 0600 "$d/$name.key"
}

# node_kubeconfig FILE CERT_NAME: a kubeconfig authenticating with that cert.
node_kubeconfig() {
  local file="$1" name="$2"
  (umask 077 && cat >"$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: $M2M_CONTEXT
  cluster:
    server: $M2M_APISERVER_URL
    certificate-authority: $M2M_CA_CERT
users:
- name: $name
  user:
    client-certificate: $M2M_PKI_DIR/$name.crt
    client-key: $M2M_PKI_DIR/$name.key
contexts:
- name: $M2M_CONTEXT
  context: {cluster: $M2M_CONTEXT, user: $name}
current-context: $M2M_CONTEXT
EOF
  )
}

node_pki() {
  mkdir -p "$M2M_NODE_DIR"
  # Identities the apiserver's Node authorizer and default RBAC know.
  node_client_cert kubelet "system:node:$M2M_NODE_NAME" system:nodes
  node_client_cert kube-proxy system:kube-proxy
  node_client_cert kube-scheduler system:kube-scheduler
  # The apiserver's identity towards the kubelet (logs, exec, port-forward).
  node_client_cert apiserver-kubelet-client kube-apiserver-kubelet-client system:masters
  node_kubeconfig "$M2M_NODE_DIR/kubelet.kubeconfig" kubelet
  node_kubeconfig "$M2M_NODE_DIR/kube-proxy.kubeconfig" kube-proxy
  node_kubeconfig "$M2M_NODE_DIR/kube-scheduler.kubeconfig" kube-scheduler
}

# --- network --------------------------------------------------------------------
node_network_up() {
  local state="$M2M_NODE_DIR/sysctl.saved"
  mkdir -p "$M2M_NODE_DIR"
  if [[ ! -s "$state" ]]; then
    printf 'net.ipv4.ip_forward=%s\n' "$(cat /proc/sys/net/ipv4/ip_forward)" >"$state"
  fi
  [[ -e /proc/sys/net/bridge/bridge-nf-call-iptables ]] || modprobe br_netfilter 2>/dev/null \
    || m2m_die "br_netfilter is not available: bridged Pod traffic would bypass kube-proxy's rules"
  # Service traffic between two Pods on the bridge must pass iptables (DNAT
  # and its reverse); routing through the node needs forwarding on.
  sysctl -q -w net.bridge.bridge-nf-call-iptables=1 net.ipv4.ip_forward=1 >/dev/null \
    || m2m_die "could not set the node's sysctls"
  if ! ip link show "$M2M_NODE_BRIDGE" >/dev/null 2>&1; then
    ip link add "$M2M_NODE_BRIDGE" type bridge || m2m_die "could not create bridge $M2M_NODE_BRIDGE"
  fi
  local prefix="${M2M_POD_CIDR#*/}"
  if ! ip -4 addr show dev "$M2M_NODE_BRIDGE" | grep -q "inet $M2M_NODE_IP/"; then
    ip addr add "$M2M_NODE_IP/$prefix" dev "$M2M_NODE_BRIDGE"
  fi
  ip link set "$M2M_NODE_BRIDGE" up
  # Service IPs never take the default route off the machine.
  ip route replace "$M2M_SERVICE_CLUSTER_IP_RANGE" dev "$M2M_NODE_BRIDGE" src "$M2M_NODE_IP"
  # Nothing forwarded between the bridge and any other interface.
  iptables -w -N M2M-NODE-FORWARD 2>/dev/null || iptables -w -F M2M-NODE-FORWARD
  iptables -w -A M2M-NODE-FORWARD -i "$M2M_NODE_BRIDGE" -o "$M2M_NODE_BRIDGE" -j RETURN
  iptables -w -A M2M-NODE-FORWARD -j DROP
  iptables -w -C FORWARD -j M2M-NODE-FORWARD 2>/dev/null || iptables -w -I FORWARD 1 -j M2M-NODE-FORWARD
}

node_network_down() {
  iptables -w -D FORWARD -j M2M-NODE-FORWARD 2>/dev/null || true
  iptables -w -F M2M-NODE-FORWARD 2>/dev/null || true
  iptables -w -X M2M-NODE-FORWARD 2>/dev/null || true
  local proxy
  proxy="$(m2m_bin kube-proxy)"
  if [[ -n "$proxy" ]]; then
    "$proxy" --cleanup >/dev/null 2>&1 || true
  fi
  ip route del "$M2M_SERVICE_CLUSTER_IP_RANGE" dev "$M2M_NODE_BRIDGE" 2>/dev/null || true
  ip link del "$M2M_NODE_BRIDGE" 2>/dev/null || true
  if [[ -s "$M2M_NODE_DIR/sysctl.saved" ]]; then
    sysctl -q -p "$M2M_NODE_DIR/sysctl.saved" >/dev/null 2>&1 || true
    rm -f "$M2M_NODE_DIR/sysctl.saved"
  fi
}

# --- registry -------------------------------------------------------------------
registry_ready() {
  curl --silent --fail --max-time 2 -o /dev/null "http://$M2M_REGISTRY/v2/"
}

launch_registry() {
  ensure_port_free registry "$M2M_REGISTRY_PORT"
  mkdir -p "$M2M_NODE_DIR/registry"
  cat >"$M2M_NODE_DIR/registry.yml" <<EOF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: $M2M_NODE_DIR/registry
  delete:
    enabled: true
http:
  addr: $M2M_REGISTRY
  debug:
    addr: ""
EOF
  spawn registry env -u REGISTRY_HTTP_ADDR "$(m2m_bin registry)" serve "$M2M_NODE_DIR/registry.yml"
}

# The images the node needs before anything else can run, under the names the
# manifests use: pushed once per registry (the layout is built by install.sh).
push_node_images() {
  # shellcheck source=../../scripts/lib/oci.sh
  source "$M2M_CLUSTER_SCRIPTS_DIR/../../scripts/lib/oci.sh"
  local layout="$M2M_NODE_BUILD_OUT/images" tag dest
  local -A images=(
    [pause]="pause:$M2M_PAUSE_VERSION"
    [coredns]="coredns/coredns:v$M2M_COREDNS_VERSION"
    [curl]="curlimages/curl:8.11.1"
  )
  for tag in "${!images[@]}"; do
    dest="${images[$tag]}"
    if curl --silent --fail --max-time 5 -o /dev/null -I \
      -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
      "http://$M2M_REGISTRY/v2/${dest%:*}/manifests/${dest##*:}"; then
      continue
    fi
    m2m_log "pushing $dest to the local registry"
    oci_push "$layout" "$tag" "$M2M_REGISTRY/$dest" || m2m_die "could not push $dest to $M2M_REGISTRY"
  done
}

# --- containerd -------------------------------------------------------------------
containerd_ready() {
  [[ -S "$M2M_CONTAINERD_SOCKET" ]] && ctr --address "$M2M_CONTAINERD_SOCKET" version >/dev/null 2>&1
}

write_containerd_config() {
  local d="$M2M_NODE_DIR/containerd" reg
  mkdir -p "$d/root" "$d/state" "$d/certs.d" "$M2M_NODE_DIR/cni/net.d" "$M2M_NODE_DIR/cni/ipam"
  # Every mirrored name and the registry's own address resolve to the local
  # registry only: `server` (not a mirror `host`) so nothing falls back to
  # the real upstream.
  for reg in "${M2M_MIRRORED_REGISTRIES[@]}" "$M2M_REGISTRY" "localhost:$M2M_REGISTRY_PORT"; do
    mkdir -p "$d/certs.d/$reg"
    printf 'server = "http://%s"\n\n[host."http://%s"]\n  capabilities = ["pull", "resolve", "push"]\n' \
      "$M2M_REGISTRY" "$M2M_REGISTRY" >"$d/certs.d/$reg/hosts.toml"
  done
  cat >"$d/config.toml" <<EOF
version = 2
root = "$d/root"
state = "$d/state"
# This VM refuses negative oom_score_adj values (docs/development.md).
oom_score = 0
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "$M2M_CONTAINERD_SOCKET"

[ttrpc]
  address = "$M2M_CONTAINERD_SOCKET.ttrpc"

[debug]
  level = "warn"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "$d/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:$M2M_PAUSE_VERSION"
  # The kubelet asks for -998 for sandboxes; clamp to containerd's own score.
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "$(command -v runc)"
        # The kubelet's cgroupDriver is cgroupfs too (cgroup v1, no systemd).
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$M2M_NODE_DIR/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "$d/certs.d"
EOF
  cat >"$M2M_NODE_DIR/cni/net.d/10-m2m.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "m2m-pods",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$M2M_NODE_BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$M2M_POD_CIDR", "gateway": "$M2M_NODE_IP"}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": "$M2M_NODE_DIR/cni/ipam"
      }
    }
  ]
}
EOF
}

launch_containerd() {
  write_containerd_config
  # An image from any registry the mirror does not cover (quay.io/...,
  # example.invalid/...) must fail here, not be looked up through the
  # machine's resolver: containerd's registry client honours the proxy
  # variables, so every such request goes to a closed loopback port instead
  # (no DNS lookup happens when a proxy is set); loopback is never proxied.
  spawn containerd env HTTP_PROXY=http://127.0.0.1:9 HTTPS_PROXY=http://127.0.0.1:9 \
    NO_PROXY=127.0.0.1,localhost http_proxy= https_proxy= no_proxy= \
    containerd --config "$M2M_NODE_DIR/containerd/config.toml"
}

# --- kube-scheduler, kubelet, kube-proxy, the apiserver proxy -------------------------
scheduler_ready() {
  curl --silent --fail --insecure --max-time 2 -o /dev/null "https://127.0.0.1:$M2M_SCHEDULER_PORT/healthz"
}

launch_scheduler() {
  ensure_port_free kube-scheduler "$M2M_SCHEDULER_PORT"
  local kc="$M2M_NODE_DIR/kube-scheduler.kubeconfig"
  spawn kube-scheduler "$(m2m_bin kube-scheduler)" \
    --kubeconfig="$kc" --authentication-kubeconfig="$kc" --authorization-kubeconfig="$kc" \
    --leader-elect=false --bind-address=127.0.0.1 --secure-port="$M2M_SCHEDULER_PORT" \
    --cert-dir="$M2M_NODE_DIR/kube-scheduler-certs" --profiling=false --v=0
}

node_ready() {
  [[ "$(kubectl_admin get node "$M2M_NODE_NAME" \
    -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" == True ]]
}

kubectl_admin() {
  "$(m2m_bin kubectl)" --kubeconfig "$M2M_KUBECONFIG" "$@"
}

launch_kubelet() {
  ensure_port_free kubelet "$M2M_KUBELET_PORT"
  local d="$M2M_NODE_DIR"
  mkdir -p "$d/kubelet" "$d/pod-logs" "$d/manifests"
  # Pods with dnsPolicy Default get this instead of the host's resolver:
  # nothing to resolve outside the cluster.
  printf 'options ndots:1\n' >"$d/resolv.conf"
  cat >"$d/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# cgroup v1 on this VM: kubelets >= 1.35 refuse it unless told (KEP-5573).
failCgroupV1: false
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://$M2M_CONTAINERD_SOCKET
address: $M2M_NODE_IP
port: $M2M_KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $M2M_KUBELET_HEALTHZ_PORT
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $M2M_CA_CERT}
authorization:
  mode: Webhook
clusterDNS: [$M2M_CLUSTER_DNS_IP]
clusterDomain: $M2M_CLUSTER_DOMAIN
resolvConf: $d/resolv.conf
syncFrequency: $M2M_KUBELET_SYNC_FREQUENCY
staticPodPath: $d/manifests
podLogsDir: $d/pod-logs
failSwapOn: false
# This VM refuses negative oom_score_adj values.
oomScoreAdj: 0
serializeImagePulls: false
imageGCHighThresholdPercent: 99
imageGCLowThresholdPercent: 98
evictionHard:
  memory.available: 100Mi
  nodefs.available: 1%
  nodefs.inodesFree: 1%
  imagefs.available: 1%
rotateCertificates: false
serverTLSBootstrap: false
EOF
  spawn kubelet "$(m2m_bin kubelet)" \
    --config="$d/kubelet.yaml" \
    --kubeconfig="$d/kubelet.kubeconfig" \
    --root-dir="$d/kubelet" \
    --cert-dir="$d/kubelet-certs" \
    --hostname-override="$M2M_NODE_NAME" \
    --node-ip="$M2M_NODE_IP" \
    --node-labels="m2m.dev/local-node=true" \
    --v="${M2M_KUBELET_VERBOSITY:-0}"
}

kube_proxy_ready() {
  curl --silent --fail --max-time 2 -o /dev/null "http://127.0.0.1:$M2M_KUBE_PROXY_HEALTHZ_PORT/healthz"
}

launch_kube_proxy() {
  cat >"$M2M_NODE_DIR/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: $M2M_NODE_DIR/kube-proxy.kubeconfig
mode: iptables
hostnameOverride: $M2M_NODE_NAME
clusterCIDR: $M2M_POD_CIDR
detectLocalMode: ClusterCIDR
bindAddress: $M2M_NODE_IP
healthzBindAddress: 127.0.0.1:$M2M_KUBE_PROXY_HEALTHZ_PORT
metricsBindAddress: 127.0.0.1:$M2M_KUBE_PROXY_METRICS_PORT
# NodePorts only on the node's bridge address, never on the VM's interfaces.
nodePortAddresses: ["$M2M_NODE_IP/32"]
conntrack:
  # Leave the machine's conntrack table size alone.
  maxPerCore: 0
  min: 0
EOF
  spawn kube-proxy "$(m2m_bin kube-proxy)" --config="$M2M_NODE_DIR/kube-proxy.yaml" --v=0
}

# Pods reach the apiserver at its Service IP; kube-proxy sends that to the
# endpoint the apiserver advertises ($M2M_NODE_IP), where this forwards to
# the apiserver's loopback listener (TLS passes through untouched).
apiserver_proxy_ready() {
  (exec 3<>"/dev/tcp/$M2M_NODE_IP/$M2M_APISERVER_PORT") 2>/dev/null
}

launch_apiserver_proxy() {
  spawn apiserver-proxy socat \
    "TCP-LISTEN:$M2M_APISERVER_PORT,bind=$M2M_NODE_IP,fork,reuseaddr" \
    "TCP:$M2M_BIND_ADDRESS:$M2M_APISERVER_PORT"
}

coredns_ready() {
  [[ "$(kubectl_admin -n kube-system get deployment coredns \
    -o jsonpath='{.status.readyReplicas}' 2>/dev/null)" -ge 1 ]] 2>/dev/null
}

deploy_coredns() {
  sed -e "s/@COREDNS_VERSION@/$M2M_COREDNS_VERSION/g" \
    -e "s/@CLUSTER_DOMAIN@/$M2M_CLUSTER_DOMAIN/g" \
    -e "s/@CLUSTER_DNS_IP@/$M2M_CLUSTER_DNS_IP/g" \
    "$M2M_CLUSTER_SCRIPTS_DIR/manifests/coredns.yaml" \
    | kubectl_admin apply --server-side --force-conflicts --field-manager=m2m-cluster -f - >/dev/null \
    || m2m_die "could not apply CoreDNS"
  local deadline=$((SECONDS + M2M_READY_TIMEOUT))
  until coredns_ready; do
    if ((SECONDS >= deadline)); then
      kubectl_admin -n kube-system get pods -o wide >&2 || true
      kubectl_admin -n kube-system describe pods -l k8s-app=kube-dns 2>/dev/null | tail -n 30 >&2 || true
      m2m_die "timed out after ${M2M_READY_TIMEOUT}s waiting for CoreDNS to be Ready"
    fi
    sleep 1
  done
}

start_node() {
  node_claim
  ensure_up registry launch_registry "the registry at http://$M2M_REGISTRY" registry_ready
  push_node_images
  ensure_up containerd launch_containerd "containerd at $M2M_CONTAINERD_SOCKET" containerd_ready
  ensure_up kube-scheduler launch_scheduler "kube-scheduler" scheduler_ready
  ensure_up apiserver-proxy launch_apiserver_proxy "the apiserver at $M2M_NODE_IP:$M2M_APISERVER_PORT" apiserver_proxy_ready
  ensure_up kubelet launch_kubelet "node $M2M_NODE_NAME to be Ready" node_ready
  ensure_up kube-proxy launch_kube_proxy "kube-proxy" kube_proxy_ready
  m2m_log "node $M2M_NODE_NAME Ready (registry $M2M_REGISTRY)"
  deploy_coredns
  m2m_log "CoreDNS Ready at $M2M_CLUSTER_DNS_IP"
}

# --- teardown ---------------------------------------------------------------------
# Every process in the kubelet's cgroups (the Pods' containers), then the
# containerd shims of our containerd, so nothing outlives the node.
node_kill_pods() {
  local pids pid
  pids="$(find /sys/fs/cgroup/pids/kubepods /sys/fs/cgroup/memory/kubepods -name cgroup.procs \
    -exec cat {} + 2>/dev/null | sort -u)"
  for pid in $pids; do
    kill -KILL "$pid" 2>/dev/null || true
  done
  pkill -KILL -f "containerd-shim-runc-v2 .*-address $M2M_CONTAINERD_SOCKET" 2>/dev/null || true
}

# Mounts the kubelet and containerd left (volumes, rootfs overlays, shm),
# network namespaces the CNI plugins made, and the kubepods cgroups.
node_cleanup() {
  local m
  while read -r m; do
    umount -l "$m" 2>/dev/null || true
  done < <(awk -v d="$M2M_NODE_DIR" 'index($5, d) == 1 {print $5}' /proc/self/mountinfo | sort -r)
  local ns
  for ns in $(ip netns list 2>/dev/null | awk '/^cni-/{print $1}'); do
    ip netns delete "$ns" 2>/dev/null || true
  done
  find /sys/fs/cgroup/*/kubepods -depth -type d -exec rmdir {} + 2>/dev/null || true
  node_network_down
  if node_owned_by_us; then
    rm -f "$M2M_NODE_OWNER_FILE"
  fi
}
