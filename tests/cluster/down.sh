#!/usr/bin/env bash
# Stops the local control plane started by up.sh, by the PIDs it recorded, and
# waits for the processes to exit.
#
# Usage: tests/cluster/down.sh [--purge]
#   --purge   also remove the state dir ($M2M_CLUSTER_DIR: etcd data,
#             certificates, token, logs, kubeconfig). The binary cache stays.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"
# shellcheck source-path=SCRIPTDIR source=node.sh
source "$M2M_CLUSTER_SCRIPTS_DIR/node.sh"

usage() {
  sed -n '2,8s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2
}

purge=0
for arg in "$@"; do
  case "$arg" in
    --purge) purge=1 ;;
    -h | --help) usage; exit 0 ;;
    *) usage; m2m_die "unknown argument: $arg" ;;
  esac
done

M2M_STOP_TIMEOUT="${M2M_STOP_TIMEOUT:-30}"

stop_component() {
  local name="$1" pid deadline
  if ! pid="$(m2m_component_pid "$name")"; then
    rm -f "$(m2m_pid_file "$name")"
    return 0
  fi
  m2m_log "stopping $name (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  deadline=$((SECONDS + M2M_STOP_TIMEOUT))
  while kill -0 "$pid" 2>/dev/null; do
    if ((SECONDS >= deadline)); then
      m2m_log "$name did not exit within ${M2M_STOP_TIMEOUT}s: sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      sleep 0.5
      break
    fi
    sleep 0.2
  done
  if kill -0 "$pid" 2>/dev/null; then
    m2m_die "could not stop $name (pid $pid)"
  fi
  rm -f "$(m2m_pid_file "$name")"
}

main() {
  if [[ ! -d "$M2M_CLUSTER_DIR" ]]; then
    m2m_log "nothing to stop: $M2M_CLUSTER_DIR does not exist"
    return 0
  fi
  exec 9>"$M2M_CLUSTER_DIR/.lock"
  if ! flock -n 9; then
    m2m_log "another up.sh/down.sh is running; waiting for it"
    flock 9
  fi
  local i
  # The node first, whatever M2M_NODE says now: the kubelet (so it restarts
  # nothing), the Pods' processes, then containerd and the rest.
  stop_component apiserver-proxy
  stop_component kube-proxy
  stop_component kubelet
  stop_component kube-scheduler
  # The machine-wide parts only when the node is ours (or nobody's).
  local ours=0
  if node_owned_by_us || { [[ ! -s "$M2M_NODE_OWNER_FILE" ]] && [[ -d "$M2M_NODE_DIR" ]]; }; then
    ours=1
  fi
  ((ours == 0)) || node_kill_pods
  stop_component containerd
  stop_component registry
  ((ours == 0)) || node_cleanup
  # Reverse start order: controller manager, apiserver, etcd.
  for ((i = ${#M2M_COMPONENTS[@]} - 1; i >= 0; i--)); do
    stop_component "${M2M_COMPONENTS[i]}"
  done
  m2m_log "control plane stopped"
  exec 9>&-
  if ((purge)); then
    case "$M2M_CLUSTER_DIR" in
      "" | / | "$HOME" | "$M2M_CACHE_DIR") m2m_die "refusing to purge $M2M_CLUSTER_DIR" ;;
    esac
    m2m_log "removing $M2M_CLUSTER_DIR"
    rm -rf -- "$M2M_CLUSTER_DIR"
  fi
}

main "$@"
