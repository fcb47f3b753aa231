#!/usr/bin/env bash
# The project's test command (README): starts the local control plane
# (building it on first use), then runs every test against it — unit tests,
# integration tests with the real kube-apiserver, and the Helm chart tests.
# Nothing is skipped: a missing control plane is an error, not a pass.
#
# With M2M_TEST_MIN_K8S=1 (CI sets it) the schema and convention tests
# (tests/crds.rs, tests/examples.rs, tests/api_conventions.rs) and the chart
# tests then run once more against the oldest supported Kubernetes (M2M_K8S_MIN_VERSION in
# tests/cluster/lib.sh), on a second control plane with ports of its own
# (M2M_MIN_APISERVER_PORT etc.), stopped again afterwards.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

tests/cluster/up.sh >/dev/null
eval "$(tests/cluster/env.sh)"
kubectl version

# Integration tests spawn the operator binary; build everything first so
# compile time does not count against their timeouts. `test-hooks` compiles
# in the crash-injection failpoint the crash-recovery test needs.
cargo build --all-targets --locked --features test-hooks

# The kubelet refreshes a projected token at 80 % of its lifetime (at least
# 600 s): that test mostly waits, so it runs beside everything else, from its
# test binary directly (a second `cargo test` would wait for the first).
refresh_log="$(mktemp)"
refresh_pid=""
if [[ "$(bash -c 'source tests/cluster/lib.sh && printf %s "$M2M_NODE"')" == 1 ]]; then
  node_tests="$(cargo test --locked --features test-hooks --test node --no-run --message-format=json 2>/dev/null \
    | jq -r 'select(.target.name == "node" and .executable != null) | .executable')"
  "$node_tests" --ignored --exact the_kubelet_writes_a_projected_token_and_refreshes_it_before_expiry \
    --nocapture >"$refresh_log" 2>&1 &
  refresh_pid=$!
fi

# tests/federation.rs starts "another cluster" (a second kube-apiserver,
# tests/cluster/issuer-cluster.sh) on first use; stop it afterwards.
trap 'tests/cluster/issuer-cluster.sh down || true' EXIT
cargo test --all-targets --locked --features test-hooks -- "$@"
tests/cluster/issuer-cluster.sh down
trap - EXIT

if [[ -n "$refresh_pid" ]]; then
  printf '\n== the projected-token refresh test (ran beside the others)\n'
  refresh_status=0
  wait "$refresh_pid" || refresh_status=$?
  cat "$refresh_log"
  rm -f "$refresh_log"
  [[ "$refresh_status" == 0 ]] || { echo "the projected-token refresh test failed" >&2; exit 1; }
fi

if [[ -x tests/chart/test.sh ]]; then
  tests/chart/test.sh
fi

# The product as users run it, on the node (tests/on_node.rs): the image and
# the chart pushed to the local registry, `helm install --wait`, the examples
# as Pods, rotation and operations under load. Last, one test at a time: the
# installed operator watches every namespace.
if [[ "$(bash -c 'source tests/cluster/lib.sh && printf %s "$M2M_NODE"')" == 1 ]]; then
  printf '\n== the product on the node: image, chart, helm install, examples as Pods\n'
  scripts/image.sh >/dev/null
  # A second build of the image for the upgrade test (same binary, its own
  # manifest and revision label).
  M2M_IMAGE_SOURCE=second-build scripts/image.sh --no-build --tag 0.1.0-next >/dev/null
  scripts/chart.sh >/dev/null
  # The tags were pushed again: drop the node's cached copies, or the kubelet
  # (imagePullPolicy IfNotPresent) would run the image of an earlier run.
  node_ctr=(ctr --address "$(bash -c 'source tests/cluster/lib.sh && printf %s "$M2M_CONTAINERD_SOCKET"')" -n k8s.io)
  "${node_ctr[@]}" images ls -q | grep '/m2m-operator:' | xargs -r "${node_ctr[@]}" images rm >/dev/null || true
  cleanup_release() {
    helm uninstall m2m-operator -n m2m-system --wait >/dev/null 2>&1 || true
    kubectl delete namespace m2m-demo --ignore-not-found --wait=false >/dev/null 2>&1 || true
  }
  trap cleanup_release EXIT
  # The test binary directly: docs/install.md's commands, which the first
  # test runs, include a cargo build that a running `cargo test` would block.
  on_node_tests="$(cargo test --locked --features test-hooks --test on_node --no-run --message-format=json 2>/dev/null \
    | jq -r 'select(.target.name == "on_node" and .executable != null) | .executable')"
  M2M_TEST_SECOND_TAG=0.1.0-next "$on_node_tests" --ignored --test-threads=1 "$@"
  cleanup_release
  trap - EXIT
fi

if [[ "${M2M_TEST_MIN_K8S:-0}" == 1 ]]; then
  min_version="$(bash -c 'source tests/cluster/lib.sh && printf %s "$M2M_K8S_MIN_VERSION"')"
  printf '\n== the same schema tests against the minimum supported Kubernetes, v%s\n' "$min_version"
  (
    export M2M_K8S_VERSION="$min_version"
    export M2M_CLUSTER_DIR="$M2M_CACHE_DIR/cluster-min"
    export M2M_APISERVER_PORT="${M2M_MIN_APISERVER_PORT:-16543}"
    export M2M_ETCD_CLIENT_PORT="${M2M_MIN_ETCD_CLIENT_PORT:-23891}"
    export M2M_ETCD_PEER_PORT="${M2M_MIN_ETCD_PEER_PORT:-23901}"
    export M2M_CONTROLLER_MANAGER_PORT="${M2M_MIN_CONTROLLER_MANAGER_PORT:-16557}"
    tests/cluster/install.sh
    tests/cluster/up.sh >/dev/null
    trap 'tests/cluster/down.sh --purge' EXIT
    eval "$(tests/cluster/env.sh)"
    kubectl version
    cargo test --locked --test crds --test examples --test api_conventions -- "$@"
    tests/chart/test.sh
  )
fi
