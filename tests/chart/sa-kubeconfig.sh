#!/usr/bin/env bash
# Writes a kubeconfig that authenticates as a core ServiceAccount, with a
# short-lived token from the TokenRequest API (`kubectl create token`), so
# the operator binary can run on the host with exactly the permissions the
# chart gives its pods:
#
#   tests/chart/sa-kubeconfig.sh <namespace> <serviceaccount> <out-file> [duration]
#
#   # e.g. after `helm install m2m-operator charts/m2m-operator -n m2m-system`:
#   tests/chart/sa-kubeconfig.sh m2m-system m2m-operator-token-server /tmp/ts.kubeconfig
#   KUBECONFIG=/tmp/ts.kubeconfig m2m-operator token-server --namespace m2m-system
#
# The cluster (server, CA) is taken from $KUBECONFIG, else the local control
# plane's kubeconfig. Duration defaults to 1h.
set -euo pipefail

if [[ $# -lt 3 ]]; then
  sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
fi
namespace="$1" serviceaccount="$2" out="$3" duration="${4:-1h}"

M2M_CACHE_DIR="${M2M_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/m2m-operator}"
CLUSTER_DIR="${M2M_CLUSTER_DIR:-$M2M_CACHE_DIR/cluster}"
export KUBECONFIG="${KUBECONFIG:-$CLUSTER_DIR/kubeconfig}"
kubectl="$M2M_CACHE_DIR/bin/kubectl"
[[ -x "$kubectl" ]] || kubectl="$(command -v kubectl)"

server="$("$kubectl" config view --raw --minify -o jsonpath='{.clusters[0].cluster.server}')"
ca="$("$kubectl" config view --raw --minify -o jsonpath='{.clusters[0].cluster.certificate-authority-data}')"
token="$("$kubectl" create token "$serviceaccount" -n "$namespace" --duration="$duration")"

umask 077
cat >"$out" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: cluster
  cluster:
    server: $server
    certificate-authority-data: $ca
users:
- name: $serviceaccount
  user:
    token: $token
contexts:
- name: $serviceaccount
  context:
    cluster: cluster
    user: $serviceaccount
    namespace: $namespace
current-context: $serviceaccount
EOF
printf '%s\n' "$out"
