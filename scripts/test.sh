#!/usr/bin/env bash
# The project's test command (README): starts the local control plane
# (building it on first use), then runs every test against it — unit tests,
# integration tests with the real kube-apiserver, and the Helm chart tests.
# Nothing is skipped: a missing control plane is an error, not a pass.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

tests/cluster/up.sh >/dev/null
eval "$(tests/cluster/env.sh)"

# Integration tests spawn the operator binary; build everything first so
# compile time does not count against their timeouts. `test-hooks` compiles
# in the crash-injection failpoint the crash-recovery test needs.
cargo build --all-targets --locked --features test-hooks
cargo test --all-targets --locked --features test-hooks -- "$@"

if [[ -x tests/chart/test.sh ]]; then
  tests/chart/test.sh
fi
