#!/usr/bin/env bash
# Scale benchmark on the local control plane: N credentials (default 5,000)
# across several namespaces, `controller` and `token-server` as separate
# processes; prints convergence, writes, RSS, restart writes, revocation
# latency, token-server CPU per rotation and throughput under rotation churn.
#
# Usage (control plane up, see tests/cluster; needs wrk and python3):
#   eval "$(tests/cluster/env.sh)"
#   bench/scale.sh                   # N=5000
#   SCALE_N=50000 SCALE_NAMESPACES=50 bench/scale.sh
#   bench/scale.sh --pinned          # control plane + controller on CPU 0,
#                                    # token server + wrk on CPU 1 (SCALE_PIN=1)
# Settings: see bench/README.md (SCALE_*, M2M_BIN, RUST_LOG).
set -euo pipefail

if [[ "${1:-}" == --pinned ]]; then export SCALE_PIN=1; shift; fi
[[ $# -eq 0 ]] || { echo "usage: bench/scale.sh [--pinned]" >&2; exit 2; }
if [[ -n "${SCALE_PIN:-}" && "${SCALE_PIN}" != 0 ]]; then
  command -v taskset >/dev/null || { echo "taskset not found: apt-get install -y util-linux" >&2; exit 1; }
  [[ -n "${M2M_CLUSTER_DIR:-}" ]] || { echo "M2M_CLUSTER_DIR unset: eval \"\$(tests/cluster/env.sh)\"" >&2; exit 1; }
fi

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
command -v wrk >/dev/null || { echo "wrk not found: apt-get install -y wrk" >&2; exit 1; }
command -v kubectl >/dev/null || { echo "kubectl not found: eval \"\$(tests/cluster/env.sh)\"" >&2; exit 1; }
kubectl get --raw /readyz >/dev/null || { echo "no reachable apiserver (KUBECONFIG=${KUBECONFIG:-})" >&2; exit 1; }
if [[ -z "${M2M_BIN:-}" ]]; then
  echo "building the release binary..." >&2
  cargo build --release --quiet --bin m2m-operator --manifest-path "$repo/Cargo.toml"
  M2M_BIN="$(cargo metadata --format-version 1 --no-deps --manifest-path "$repo/Cargo.toml" \
    | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')/release/m2m-operator"
fi
export M2M_BIN
exec python3 "$here/scale.py"
