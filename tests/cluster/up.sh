#!/usr/bin/env bash
# Starts a local Kubernetes control plane (etcd, kube-apiserver,
# kube-controller-manager) on loopback, in the background, detached from the
# calling shell. Idempotent: if it already runs and is healthy, it only prints
# the kubeconfig path.
#
# Prints the kubeconfig path on stdout (and nothing else); progress on stderr.
# Logs:  $M2M_CLUSTER_DIR/logs/<component>.log
# PIDs:  $M2M_CLUSTER_DIR/run/<component>.pid
# Stop:  tests/cluster/down.sh [--purge]
#
# Settings (environment): see lib.sh.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"
# shellcheck source-path=SCRIPTDIR source=node.sh
source "$M2M_CLUSTER_SCRIPTS_DIR/node.sh"

# --- binaries ----------------------------------------------------------------
ensure_binaries() {
  if [[ -z "$(m2m_bin kube-apiserver)" || -z "$(m2m_bin etcd)" || -z "$(m2m_bin kubectl)" ]] \
    || { ! m2m_use_assets && [[ -z "$(m2m_bin kube-controller-manager)" ]]; } \
    || { [[ "$M2M_NODE" == 1 ]] && [[ -z "$(m2m_bin kubelet)" || -z "$(m2m_bin kube-proxy)" \
      || -z "$(m2m_bin kube-scheduler)" || -z "$(m2m_bin coredns)" || -z "$(m2m_bin registry)" ]]; }; then
    m2m_log "binaries missing: running install.sh"
    "$M2M_CLUSTER_SCRIPTS_DIR/install.sh"
  fi
  ETCD_BIN="$(m2m_bin etcd)"
  APISERVER_BIN="$(m2m_bin kube-apiserver)"
  CONTROLLER_MANAGER_BIN="$(m2m_bin kube-controller-manager)"
  [[ -n "$ETCD_BIN" ]] || m2m_die "etcd binary not found (run tests/cluster/install.sh)"
  [[ -n "$APISERVER_BIN" ]] || m2m_die "kube-apiserver binary not found (run tests/cluster/install.sh)"
  if [[ -z "$CONTROLLER_MANAGER_BIN" ]]; then
    m2m_log "warning: no kube-controller-manager: no garbage collection or namespace deletion"
  fi
}

# --- certificates, keys, token -------------------------------------------------
ensure_pki() {
  mkdir -p "$M2M_PKI_DIR"
  chmod 0700 "$M2M_PKI_DIR"
  local d="$M2M_PKI_DIR"
  if [[ ! -s "$d/ca.crt" || ! -s "$d/ca.key" ]]; then
    m2m_log "generating cluster CA"
    rm -f "$d/apiserver.crt" "$d/apiserver.key"
    openssl req -x509 -new -nodes -newkey rsa:2048 -sha256 -days 3650 \
      -keyout "$d/ca.key" -out "$d/ca.crt" -subj "/CN=m2m-local-ca" \
      -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
      -addext "subjectKeyIdentifier=hash" 2>/dev/null \
      || m2m_die "openssl: could not create the CA"
  fi
  # A node's Pods reach the apiserver at the node's address: it must be a SAN.
  if [[ "$M2M_NODE" == 1 && -s "$d/apiserver.crt" ]] \
    && ! openssl x509 -in "$d/apiserver.crt" -noout -ext subjectAltName 2>/dev/null | grep -q "IP Address:$M2M_NODE_IP\b"; then
    rm -f "$d/apiserver.crt" "$d/apiserver.key"
  fi
  if [[ ! -s "$d/apiserver.crt" || ! -s "$d/apiserver.key" ]]; then
    m2m_log "generating kube-apiserver serving certificate (SAN 127.0.0.1, localhost)"
    # The first IP of the service range is the in-cluster `kubernetes` service.
    local svc_ip
    svc_ip="$(awk -F'[./]' '{printf "%d.%d.%d.%d", $1, $2, $3, $4 + 1}' <<<"$M2M_SERVICE_CLUSTER_IP_RANGE")"
    local bind_san="IP:::1"
    if [[ "$M2M_BIND_ADDRESS" != 127.0.0.1 ]]; then
      bind_san="IP:$M2M_BIND_ADDRESS"
    fi
    cat >"$d/apiserver.ext" <<EOF
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
authorityKeyIdentifier=keyid
subjectAltName=IP:127.0.0.1,DNS:localhost,$bind_san,IP:$svc_ip,IP:$M2M_NODE_IP,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local
EOF
    openssl req -new -nodes -newkey rsa:2048 -sha256 \
      -keyout "$d/apiserver.key" -out "$d/apiserver.csr" -subj "/CN=kube-apiserver" 2>/dev/null \
      || m2m_die "openssl: could not create the serving key"
    openssl x509 -req -in "$d/apiserver.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" \
      -CAcreateserial -days 3650 -sha256 -extfile "$d/apiserver.ext" \
      -out "$d/apiserver.crt" 2>/dev/null \
      || m2m_die "openssl: could not sign the serving certificate"
    rm -f "$d/apiserver.csr"
  fi
  if [[ ! -s "$d/sa.key" || ! -s "$d/sa.pub" ]]; then
    m2m_log "generating service account signing key pair"
    openssl genrsa -out "$d/sa.key" 2048 2>/dev/null || m2m_die "openssl: sa.key"
    openssl rsa -in "$d/sa.key" -pubout -out "$d/sa.pub" 2>/dev/null || m2m_die "openssl: sa.pub"
  fi
  if [[ ! -s "$M2M_TOKEN_FILE" ]]; then
    m2m_log "generating static admin token"
    (umask 077 && openssl rand -hex 32 >"$M2M_TOKEN_FILE")
  fi
  local token
  token="$(m2m_admin_token)"
  # token,user,uid,"group1,group2"
  (umask 077 && printf '%s,admin,admin,"system:masters"\n' "$token" >"$d/tokens.csv")
  chmod 0600 "$d"/*.key "$M2M_TOKEN_FILE"
  if [[ "$M2M_NODE" == 1 ]]; then
    node_pki
  fi
}

# Writes a kubeconfig using the admin token and the cluster CA.
write_kubeconfig() {
  local file="$1" user="$2" token ca_data tmp
  token="$(m2m_admin_token)"
  ca_data="$(base64 -w0 <"$M2M_CA_CERT")"
  tmp="$file.tmp.$$"
  (umask 077 && cat >"$tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: $M2M_CONTEXT
  cluster:
    server: $M2M_APISERVER_URL
    certificate-authority-data: $ca_data
users:
- name: $user
  user:
    token: $token
contexts:
- name: $M2M_CONTEXT
  context:
    cluster: $M2M_CONTEXT
    user: $user
    namespace: default
current-context: $M2M_CONTEXT
preferences: {}
EOF
  )
  mv -f "$tmp" "$file"
}

# --- processes -----------------------------------------------------------------
# Starts "$@" detached (new session, no stdin, output to the component log) and
# records its PID. The install/up lock fd 9 is closed for the child.
spawn() {
  local name="$1"
  shift
  local log="$M2M_LOG_DIR/$name.log"
  {
    printf '\n==== %s starting %s\n' "$(date -u +%FT%TZ)" "$name"
    printf '%q ' "$@"
    printf '\n'
  } >>"$log"
  setsid nohup "$@" >>"$log" 2>&1 </dev/null 9>&- &
  local pid=$!
  printf '%s\n' "$pid" >"$(m2m_pid_file "$name")"
  m2m_log "started $name (pid $pid, log $log)"
}

show_log_tail() {
  m2m_log "last lines of $M2M_LOG_DIR/$1.log:"
  tail -n 30 "$M2M_LOG_DIR/$1.log" >&2 || true
}

# Fails with the log tail if the component died.
check_alive() {
  local name="$1"
  if ! m2m_component_running "$name"; then
    show_log_tail "$name"
    m2m_die "$name failed to start"
  fi
}

# Waits until "$@" succeeds. Returns 1 if the component's process exits
# meanwhile; fails on timeout.
wait_ready() {
  local name="$1" what="$2"
  shift 2
  local deadline=$((SECONDS + M2M_READY_TIMEOUT))
  until "$@"; do
    # Just spawned, the PID may still be setsid/nohup/env about to exec the
    # component: only a PID that is gone means the component exited.
    m2m_component_running "$name" || kill -0 "$(cat "$(m2m_pid_file "$name")" 2>/dev/null)" 2>/dev/null || return 1
    if ((SECONDS >= deadline)); then
      show_log_tail "$name"
      m2m_die "timed out after ${M2M_READY_TIMEOUT}s waiting for $what"
    fi
    sleep 0.5
  done
}

# Starts a component unless it runs, then waits for it to be ready. A process
# found running that exits while we wait (say, one that was being stopped) is
# started once more.
ensure_up() {
  local name="$1" launch="$2" what="$3"
  shift 3
  local attempt started
  for attempt in 1 2; do
    started=0
    if m2m_component_running "$name"; then
      m2m_log "$name already running (pid $(m2m_component_pid "$name"))"
    else
      "$launch"
      started=1
    fi
    m2m_log "waiting for $what"
    if wait_ready "$name" "$what" "$@"; then
      return 0
    fi
    if ((attempt == 1 && started == 0)); then
      m2m_log "$name exited while we waited for it; starting it again"
      continue
    fi
    show_log_tail "$name"
    m2m_die "$name exited during startup"
  done
}

ensure_port_free() {
  local name="$1" port="$2"
  if m2m_port_in_use "$port"; then
    m2m_die "port $port (for $name) is already in use by another process; set the matching M2M_*_PORT variable"
  fi
}

etcd_healthy() {
  curl --silent --fail --max-time 3 "$M2M_ETCD_URL/health" 2>/dev/null | grep -q '"health":"true"'
}

launch_etcd() {
  ensure_port_free etcd "$M2M_ETCD_CLIENT_PORT"
  ensure_port_free etcd-peer "$M2M_ETCD_PEER_PORT"
  mkdir -p "$M2M_ETCD_DATA_DIR"
  chmod 0700 "$M2M_ETCD_DATA_DIR"
  local peer="http://$M2M_BIND_ADDRESS:$M2M_ETCD_PEER_PORT"
  local extra=()
  read -r -a extra <<<"$M2M_ETCD_EXTRA_ARGS"
  # Clear ETCD_* variables: etcd reads them as flags and refuses duplicates.
  local unset_env=()
  local v
  while read -r v; do
    unset_env+=(-u "$v")
  done < <(env | sed -n 's/^\(ETCD_[A-Za-z0-9_]*\)=.*/\1/p')
  spawn etcd env "${unset_env[@]}" "$ETCD_BIN" \
    --name m2m-local \
    --data-dir "$M2M_ETCD_DATA_DIR" \
    --listen-client-urls "$M2M_ETCD_URL" \
    --advertise-client-urls "$M2M_ETCD_URL" \
    --listen-peer-urls "$peer" \
    --initial-advertise-peer-urls "$peer" \
    --initial-cluster "m2m-local=$peer" \
    --initial-cluster-state new \
    --logger zap --log-level warn \
    "${extra[@]}"
}

start_etcd() {
  ensure_up etcd launch_etcd "etcd at $M2M_ETCD_URL" etcd_healthy
  m2m_log "etcd healthy at $M2M_ETCD_URL"
}

launch_apiserver() {
  ensure_port_free kube-apiserver "$M2M_APISERVER_PORT"
  local extra=()
  read -r -a extra <<<"$M2M_APISERVER_EXTRA_ARGS"
  mkdir -p "$M2M_CLUSTER_DIR/apiserver-certs"
  # With a node, the `kubernetes` Service's endpoint is the node's address
  # (Pods cannot reach loopback), kept by the apiserver's lease reconciler;
  # the apiserver talks to the kubelet with a client certificate, and the
  # Node authorizer (lib.sh) with NodeRestriction limits what the kubelet may do.
  local node_args=(--advertise-address="$M2M_BIND_ADDRESS" --endpoint-reconciler-type=none)
  if [[ "$M2M_NODE" == 1 ]]; then
    node_args=(
      --advertise-address="$M2M_NODE_IP"
      --endpoint-reconciler-type=lease
      --kubelet-client-certificate="$M2M_PKI_DIR/apiserver-kubelet-client.crt"
      --kubelet-client-key="$M2M_PKI_DIR/apiserver-kubelet-client.key"
      --kubelet-preferred-address-types=InternalIP,Hostname
      --enable-admission-plugins=NodeRestriction
    )
  fi
  spawn kube-apiserver "$APISERVER_BIN" \
    --etcd-servers="$M2M_ETCD_URL" \
    --bind-address="$M2M_BIND_ADDRESS" \
    "${node_args[@]}" \
    --secure-port="$M2M_APISERVER_PORT" \
    --cert-dir="$M2M_CLUSTER_DIR/apiserver-certs" \
    --tls-cert-file="$M2M_PKI_DIR/apiserver.crt" \
    --tls-private-key-file="$M2M_PKI_DIR/apiserver.key" \
    --client-ca-file="$M2M_CA_CERT" \
    --token-auth-file="$M2M_PKI_DIR/tokens.csv" \
    --authorization-mode="$M2M_AUTHORIZATION_MODE" \
    --service-account-issuer="$M2M_SERVICE_ACCOUNT_ISSUER" \
    --api-audiences="$M2M_API_AUDIENCES" \
    --service-account-key-file="$M2M_PKI_DIR/sa.pub" \
    --service-account-signing-key-file="$M2M_PKI_DIR/sa.key" \
    --service-cluster-ip-range="$M2M_SERVICE_CLUSTER_IP_RANGE" \
    --allow-privileged=true \
    --profiling=false \
    --v="${M2M_APISERVER_VERBOSITY:-0}" \
    "${extra[@]}"
}

start_apiserver() {
  ensure_up kube-apiserver launch_apiserver "$M2M_APISERVER_URL/readyz" m2m_apiserver_ready
  m2m_log "kube-apiserver ready at $M2M_APISERVER_URL"
}

start_controller_manager() {
  [[ -n "$CONTROLLER_MANAGER_BIN" ]] || return 0
  if m2m_component_running kube-controller-manager; then
    m2m_log "kube-controller-manager already running (pid $(m2m_component_pid kube-controller-manager))"
    return 0
  fi
  ensure_port_free kube-controller-manager "$M2M_CONTROLLER_MANAGER_PORT"
  local kubeconfig="$M2M_CLUSTER_DIR/controller-manager.kubeconfig"
  write_kubeconfig "$kubeconfig" kube-controller-manager
  local extra=()
  read -r -a extra <<<"$M2M_CONTROLLER_MANAGER_EXTRA_ARGS"
  spawn kube-controller-manager "$CONTROLLER_MANAGER_BIN" \
    --kubeconfig="$kubeconfig" \
    --bind-address="$M2M_BIND_ADDRESS" \
    --secure-port="$M2M_CONTROLLER_MANAGER_PORT" \
    --cert-dir="$M2M_CLUSTER_DIR/controller-manager-certs" \
    --controllers="$M2M_CONTROLLERS" \
    --leader-elect=false \
    --use-service-account-credentials=false \
    --service-account-private-key-file="$M2M_PKI_DIR/sa.key" \
    --root-ca-file="$M2M_CA_CERT" \
    --profiling=false \
    --v="${M2M_CONTROLLER_MANAGER_VERBOSITY:-0}" \
    "${extra[@]}"
  # Give it a moment to fail fast on bad flags.
  sleep 1
  check_alive kube-controller-manager
}

ensure_namespace() {
  local ns="$1" code
  code="$(m2m_api_curl -o /dev/null -w '%{http_code}' "$M2M_APISERVER_URL/api/v1/namespaces/$ns")" \
    || m2m_die "could not query namespace $ns"
  case "$code" in
    200) ;;
    404)
      m2m_log "creating namespace $ns"
      code="$(m2m_api_curl -o /dev/null -w '%{http_code}' -X POST \
        -H 'Content-Type: application/json' \
        --data "{\"apiVersion\":\"v1\",\"kind\":\"Namespace\",\"metadata\":{\"name\":\"$ns\"}}" \
        "$M2M_APISERVER_URL/api/v1/namespaces")" || m2m_die "could not create namespace $ns"
      [[ "$code" == 201 || "$code" == 409 ]] || m2m_die "creating namespace $ns: HTTP $code"
      ;;
    *) m2m_die "querying namespace $ns: HTTP $code" ;;
  esac
}

main() {
  mkdir -p "$M2M_CLUSTER_DIR" "$M2M_RUN_DIR" "$M2M_LOG_DIR"
  # Serialise concurrent up.sh/down.sh runs; children get fd 9 closed.
  exec 9>"$M2M_CLUSTER_DIR/.lock"
  if ! flock -n 9; then
    m2m_log "another up.sh/down.sh is running; waiting for it"
    flock 9
  fi

  if m2m_cluster_healthy && [[ -s "$M2M_KUBECONFIG" ]]; then
    m2m_log "cluster already running and healthy"
    printf '%s\n' "$M2M_KUBECONFIG"
    return 0
  fi

  local start=$SECONDS
  ensure_binaries
  ensure_pki
  start_etcd
  start_apiserver
  write_kubeconfig "$M2M_KUBECONFIG" admin
  start_controller_manager
  ensure_namespace "$M2M_NAMESPACE"
  if [[ "$M2M_NODE" == 1 ]]; then
    node_network_up
    start_node
  fi
  m2m_log "control plane up in $((SECONDS - start)) s; kubeconfig: $M2M_KUBECONFIG (context $M2M_CONTEXT)"
  m2m_log "use it with: eval \"\$($M2M_CLUSTER_SCRIPTS_DIR/env.sh)\""
  printf '%s\n' "$M2M_KUBECONFIG"
}

main "$@"
