#!/usr/bin/env bash
# Packages charts/m2m-operator and pushes it to an OCI registry (default: the
# local cluster's), the way users install it:
#
#   helm install m2m-operator oci://<registry>/charts/m2m-operator --version <v> ...
#
# Usage: scripts/chart.sh [--registry HOST:PORT] [--version VERSION] [--app-version V]
#   --registry     where to push (default: the local registry, $M2M_REGISTRY)
#   --version      chart version (default: Chart.yaml's)
#   --app-version  appVersion, the default image tag (default: Chart.yaml's)
#
# Prints the chart reference (oci://<registry>/charts/m2m-operator) on stdout.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# shellcheck source=../tests/cluster/lib.sh
source tests/cluster/lib.sh

registry="$M2M_REGISTRY" version="" app_version=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --registry) registry="$2"; shift 2 ;;
    --version) version="$2"; shift 2 ;;
    --app-version) app_version="$2"; shift 2 ;;
    -h | --help) sed -n '2,12s/^# \{0,1\}//p' "$0" >&2; exit 0 ;;
    *) m2m_die "unknown argument: $1" ;;
  esac
done

helm="$(m2m_bin helm)"
[[ -n "$helm" ]] || helm="$(command -v helm || true)"
[[ -n "$helm" ]] || m2m_die "helm not found (tests/cluster/install.sh installs it)"

out=target/charts
mkdir -p "$out"
args=(package charts/m2m-operator --destination "$out")
[[ -z "$version" ]] || args+=(--version "$version")
[[ -z "$app_version" ]] || args+=(--app-version "$app_version")
package="$("$helm" "${args[@]}" | sed -n 's/^Successfully packaged chart and saved it to: //p')"
[[ -f "$package" ]] || m2m_die "helm package produced no archive"

push_args=()
case "$registry" in
  127.0.0.1:* | localhost:*) push_args+=(--plain-http) ;;
esac
"$helm" push "$package" "oci://$registry/charts" "${push_args[@]}" >&2 \
  || m2m_die "helm push of $package to oci://$registry/charts failed"
m2m_log "pushed $(basename "$package") to oci://$registry/charts/m2m-operator"
printf 'oci://%s/charts/m2m-operator\n' "$registry"
