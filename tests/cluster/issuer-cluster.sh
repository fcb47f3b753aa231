#!/usr/bin/env bash
# "Another cluster" for the federation tests (tests/federation.rs): a second
# kube-apiserver + etcd from the same cached binaries, on loopback ports of
# its own, with its own CA, service-account issuer and signing key, serving
# OIDC discovery as Kubernetes serves it (--service-account-issuer,
# --service-account-jwks-uri, and the system:service-account-issuer-discovery
# role bound to system:unauthenticated so that discovery and the JWKS are
# readable without credentials).
#
# Usage: tests/cluster/issuer-cluster.sh up|down|rotate|env
#   up      start it (idempotent); prints the env lines of `env`
#   down    stop it and remove its state
#   rotate  restart it with a new signing key; the previous public key stays
#           a verification key (--service-account-key-file), so the JWKS
#           lists both and tokens of either verify
#   env     print M2M_ISSUER_URL, M2M_ISSUER_KUBECONFIG, M2M_ISSUER_CA
#
# Ports: M2M_ISSUER_APISERVER_PORT etc., default the main cluster's + 200
# (the minimum-version cluster of scripts/test.sh uses + 100).
set -euo pipefail

scripts_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache_dir="${M2M_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/m2m-operator}"
main_dir="${M2M_CLUSTER_DIR:-$cache_dir/cluster}"
export M2M_NODE=0
export M2M_CLUSTER_DIR="${M2M_ISSUER_CLUSTER_DIR:-$main_dir-issuer}"
export M2M_APISERVER_PORT="${M2M_ISSUER_APISERVER_PORT:-$((${M2M_APISERVER_PORT:-16443} + 200))}"
export M2M_ETCD_CLIENT_PORT="${M2M_ISSUER_ETCD_CLIENT_PORT:-$((${M2M_ETCD_CLIENT_PORT:-23791} + 200))}"
export M2M_ETCD_PEER_PORT="${M2M_ISSUER_ETCD_PEER_PORT:-$((${M2M_ETCD_PEER_PORT:-23801} + 200))}"
export M2M_CONTROLLER_MANAGER_PORT="${M2M_ISSUER_CONTROLLER_MANAGER_PORT:-$((${M2M_CONTROLLER_MANAGER_PORT:-16457} + 200))}"
export M2M_CONTEXT=m2m-issuer
issuer="https://127.0.0.1:$M2M_APISERVER_PORT"
export M2M_SERVICE_ACCOUNT_ISSUER="$issuer"
export M2M_API_AUDIENCES="$issuer"
# Only the ServiceAccount controller: nothing else of a controller manager is needed.
export M2M_CONTROLLERS=serviceaccount
pki="$M2M_CLUSTER_DIR/pki"

log() { printf '[issuer-cluster] %s\n' "$*" >&2; }

apiserver_args() {
  local extra="--service-account-jwks-uri=$issuer/openid/v1/jwks"
  if [[ -s "$pki/sa-previous.pub" ]]; then
    extra+=" --service-account-key-file=$pki/sa-previous.pub"
  fi
  export M2M_APISERVER_EXTRA_ARGS="$extra"
}

print_env() {
  printf 'export M2M_ISSUER_URL=%q\n' "$issuer"
  printf 'export M2M_ISSUER_KUBECONFIG=%q\n' "$M2M_CLUSTER_DIR/kubeconfig"
  printf 'export M2M_ISSUER_CA=%q\n' "$pki/ca.crt"
}

up() {
  apiserver_args
  "$scripts_dir/up.sh" >/dev/null
  local kubectl
  kubectl="$(bash -c "source '$scripts_dir/lib.sh' && m2m_bin kubectl")"
  # Discovery and the JWKS readable without credentials, as clusters that
  # federate their service-account tokens publish them.
  "$kubectl" --kubeconfig "$M2M_CLUSTER_DIR/kubeconfig" apply -f - >/dev/null <<YAML
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: { name: m2m-federation-issuer-discovery }
roleRef: { apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: system:service-account-issuer-discovery }
subjects: [{ apiGroup: rbac.authorization.k8s.io, kind: Group, name: system:unauthenticated }]
YAML
  print_env
}

rotate() {
  "$scripts_dir/down.sh" >/dev/null
  [[ -s "$pki/sa.key" ]] || { log "no signing key to rotate: run up first"; exit 1; }
  mv -f "$pki/sa.pub" "$pki/sa-previous.pub"
  rm -f "$pki/sa.key"
  log "new service-account signing key; the previous one stays a verification key"
  openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
  openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
  chmod 0600 "$pki/sa.key"
  up
}

case "${1:-}" in
  up) up ;;
  down) "$scripts_dir/down.sh" --purge >/dev/null ;;
  rotate) rotate ;;
  env) print_env ;;
  *) sed -n '2,21s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2; exit 2 ;;
esac
