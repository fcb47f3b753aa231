#!/usr/bin/env bash
# Prints shell `export` lines for using the local control plane:
#   eval "$(tests/cluster/env.sh)"
# Sets KUBECONFIG to the cluster's kubeconfig and puts the cache's bin dir
# (kubectl, helm, kube-apiserver, etcd, kubernetes-validate) first on PATH.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

new_path="$M2M_BIN_DIR"
if [[ -n "${KUBEBUILDER_ASSETS:-}" && -d "${KUBEBUILDER_ASSETS}" ]]; then
  new_path="$KUBEBUILDER_ASSETS:$new_path"
fi
# Drop earlier copies of our entries from PATH so repeated evals don't grow it.
IFS=: read -r -a parts <<<"${PATH:-}"
for p in "${parts[@]}"; do
  [[ "$p" == "$M2M_BIN_DIR" || ( -n "${KUBEBUILDER_ASSETS:-}" && "$p" == "$KUBEBUILDER_ASSETS" ) || -z "$p" ]] && continue
  new_path="$new_path:$p"
done

printf 'export M2M_CACHE_DIR=%q\n' "$M2M_CACHE_DIR"
printf 'export M2M_CLUSTER_DIR=%q\n' "$M2M_CLUSTER_DIR"
printf 'export KUBECONFIG=%q\n' "$M2M_KUBECONFIG"
printf 'export PATH=%q\n' "$new_path"
if [[ ! -s "$M2M_KUBECONFIG" ]]; then
  m2m_log "note: $M2M_KUBECONFIG does not exist yet: run tests/cluster/up.sh"
fi
