#!/usr/bin/env bash
# Load-test POST /oauth/token on this machine, cluster-free.
#
# For each signing algorithm (ES256, EdDSA, RS256) it starts
# `m2m-operator bench-server` (hidden subcommand: one generated credential
# and signing key in memory, the production handlers) and drives it with wrk
# at 16, 64 and 256 connections, first on /oauth/token, then on
# /bench/token-unsigned: the same handler doing everything except signing
# (form parsing, client authentication, grant checks, claims, JSON, audit
# log), the baseline that shows what signing costs. Server and load
# generator share the machine, as in the issue's goal.
#
# The "workload identity" columns are the same /oauth/token with an RFC 7523
# client assertion (a service-account-token-shaped JWT) instead of HTTP
# Basic: the bench server pre-seeds its assertion cache (there is no
# apiserver), so they measure the steady state, where every request is a
# cache hit (SHA-256 of the ~1 KB assertion + a map lookup); "wi/secret" is
# its throughput relative to the secret-based column of the same row.
#
# The "API token" columns use the same server: "introspect/s" is
# POST /oauth/introspect of an API token (the caller authenticates with
# HTTP Basic; no signing), "exchange/s" is RFC 8693 token exchange of that
# API token for a JWT at /oauth/token (signed like a client_credentials
# token); "i/cc" and "x/cc" are their throughput relative to the
# client_credentials ("secret") column of the same row.
#
# The sender-constrained table (printed after the first, same run, same
# servers) puts the bearer column beside DPoP (RFC 9449) and mTLS (RFC 8705):
# "DPoP ES256"/"DPoP EdDSA" are the same client_credentials request with a
# fresh DPoP proof per request (pre-signed by `m2m-operator bench-dpop`, so
# the load generator signs nothing during the run; the server verifies each
# and records its jti); "ratio" is their throughput relative to bearer. The
# TLS columns use ab (apache2-utils: wrk has no client certificates) with
# keep-alive on the bench server's TLS listener: "TLS bearer" is
# client_secret_basic without a client certificate, "mTLS" is
# tls_client_auth with one (certificate-bound tokens); the handshake is paid
# once per connection. Below it, the micro-benchmark: the server's
# verification of one proof (stateless checks + replay cache, one core), and
# per-request time differences (1/rate) to compare it with.
#
# Usage: bench/token-bench.sh            (needs wrk and ab: apt-get install -y wrk apache2-utils)
# Settings: BENCH_DURATION (seconds per point, default 10),
#           BENCH_CONNECTIONS (default "16 64 256"), BENCH_ALGS,
#           BENCH_THREADS (wrk threads, default 2), M2M_BIN (prebuilt binary),
#           BENCH_PORT (default 18080; BENCH_PORT+1 serves TLS),
#           BENCH_DPOP_RATE (proofs made per second of a point, default
#           12000), RUST_LOG (server log filter; the audit
#           log is on by default and written to a file, as in production).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
duration="${BENCH_DURATION:-10}"
connections="${BENCH_CONNECTIONS:-16 64 256}"
algs="${BENCH_ALGS:-ES256 EdDSA RS256}"
threads="${BENCH_THREADS:-2}"
port="${BENCH_PORT:-18080}"
workdir="$(mktemp -d)"
server_pid=""

cleanup() {
  if [[ -n "$server_pid" ]]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  rm -rf "$workdir"
}
trap cleanup EXIT

command -v wrk >/dev/null || { echo "wrk not found: apt-get install -y wrk" >&2; exit 1; }
command -v ab >/dev/null || { echo "ab not found: apt-get install -y apache2-utils" >&2; exit 1; }
tls_port=$((port + 1))
dpop_rate="${BENCH_DPOP_RATE:-12000}"
htu="https://m2m.bench.example/oauth/token"
bench_san="spiffe://bench.example/ns/bench/sa/bench"
bin="${M2M_BIN:-}"
if [[ -z "$bin" ]]; then
  echo "building the release binary..." >&2
  cargo build --release --quiet --features bench --bin m2m-operator --manifest-path "$repo/Cargo.toml"
  bin="$(cargo metadata --format-version 1 --no-deps --manifest-path "$repo/Cargo.toml" \
    | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')/release/m2m-operator"
fi

run_wrk() { # path connections [assertion] [mode] [dpop proofs file] -> RESULT line
  M2M_BENCH_CREDENTIALS="$(cat "$workdir/credentials")" M2M_BENCH_PATH="$1" \
    M2M_BENCH_ASSERTION="${3:-}" M2M_BENCH_MODE="${4:-}" \
    M2M_BENCH_DPOP_PROOFS="${5:-}" M2M_BENCH_THREADS="$threads" \
    M2M_BENCH_API_TOKEN="$(cat "$workdir/api-token")" \
    wrk -t"$threads" -c"$2" -d"${duration}s" --latency -s "$here/token.lua" \
    "http://127.0.0.1:$port" | grep '^RESULT'
}
field() { sed -n "s/.*$1=\([^ ]*\).*/\1/p" <<<"$2"; }

# Client and server certificates for the TLS listener (openssl).
pki() {
  local d="$workdir/pki"
  mkdir -p "$d"
  openssl ecparam -name prime256v1 -genkey -noout -out "$d/ca.key" 2>/dev/null
  openssl req -x509 -new -key "$d/ca.key" -subj "/CN=bench CA" -days 1 -out "$d/ca.crt" 2>/dev/null
  local name ext
  for name in server client; do
    openssl ecparam -name prime256v1 -genkey -noout -out "$d/$name.key" 2>/dev/null
    openssl req -new -key "$d/$name.key" -subj "/CN=$name" -out "$d/$name.csr" 2>/dev/null
    if [[ "$name" == server ]]; then ext="subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth"
    else ext="subjectAltName=URI:$bench_san\nextendedKeyUsage=clientAuth"; fi
    printf "$ext\n" >"$d/$name.ext"
    openssl x509 -req -in "$d/$name.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial \
      -days 1 -extfile "$d/$name.ext" -out "$d/$name.crt" 2>/dev/null
  done
  cat "$d/client.crt" "$d/client.key" >"$d/client.pem"
}
pki

run_ab() { # connections mode(bearer|mtls) -> RESULT line like run_wrk's
  local args=(-k -q -c "$1" -t "$duration" -n 100000000 -T application/x-www-form-urlencoded)
  if [[ "$2" == mtls ]]; then
    printf 'grant_type=client_credentials&scope=bench%%3Aread&client_id=%s' \
      "$(cut -d: -f1 "$workdir/credentials")" >"$workdir/ab-body"
    args+=(-E "$workdir/pki/client.pem")
  else
    printf 'grant_type=client_credentials&scope=bench%%3Aread' >"$workdir/ab-body"
    args+=(-H "Authorization: Basic $(tr -d '\n' <"$workdir/credentials" | base64 -w0)")
  fi
  local out
  out="$(ab "${args[@]}" -p "$workdir/ab-body" "https://127.0.0.1:$tls_port/oauth/token" 2>&1)" || true
  local rps p50 p99 failed non2xx
  rps="$(awk '/^Requests per second/ {printf "%.0f", $4}' <<<"$out")"
  p50="$(awk '$1 == "50%" {print $2}' <<<"$out")"
  p99="$(awk '$1 == "99%" {print $2}' <<<"$out")"
  failed="$(awk '/^Failed requests/ {print $3}' <<<"$out")"
  non2xx="$(awk '/^Non-2xx responses/ {print $3}' <<<"$out")"
  echo "RESULT rps=${rps:-0} p50_ms=${p50:-0} p99_ms=${p99:-0} errors=$(( ${failed:-0} + ${non2xx:-0} ))"
}

# Micro-benchmark first: one proof's verification on one core, per algorithm.
declare -A verify_us
for palg in ES256 EdDSA; do
  verify_us[$palg]="$(field verify_us "$("$bin" bench-dpop --alg "$palg" --htu "$htu" --count 1000 \
    --out "$workdir/micro" --verify-iterations 5000)")"
done
sender_rows=()

ratio() { echo "$(( 100 * $1 / ($2 + 1) ))%"; }
printf '%-6s %5s | %10s %8s %8s | %10s %8s %8s %9s | %12s %8s %8s | %12s %8s %8s %6s %6s | %6s\n' \
  "" "" "secret" "" "" "workload" "identity" "" "" "unsigned" "" "" "API token" "" "" "" "" ""
printf '%-6s %5s | %10s %8s %8s | %10s %8s %8s %9s | %12s %8s %8s | %12s %8s %10s %6s %6s | %6s\n' \
  alg conns "tokens/s" "p50 ms" "p99 ms" "tokens/s" "p50 ms" "p99 ms" "wi/secret" "baseline/s" "p50 ms" "p99 ms" \
  "introspect/s" "p50 ms" "exchange/s" "i/cc" "x/cc" errors
printf -- '-%.0s' {1..170}; echo
for alg in $algs; do
  rm -f "$workdir/credentials"
  RUST_LOG="${RUST_LOG:-info}" "$bin" bench-server --listen "127.0.0.1:$port" \
    --tls-listen "127.0.0.1:$tls_port" --tls-cert "$workdir/pki/server.crt" \
    --tls-key "$workdir/pki/server.key" --tls-client-ca "$workdir/pki/ca.crt" \
    --signing-alg "$alg" --credentials-file "$workdir/credentials" \
    --assertion-file "$workdir/assertion" --api-token-file "$workdir/api-token" \
    2>"$workdir/server-$alg.log" &
  server_pid=$!
  for _ in $(seq 100); do
    [[ -s "$workdir/credentials" && -s "$workdir/api-token" ]] && (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
  done
  # The API token requests must succeed (wrk counts only non-2xx as errors,
  # and an inactive introspection is a 200).
  curl -fsS -u "$(cat "$workdir/credentials")" -d "token=$(cat "$workdir/api-token")" \
    "http://127.0.0.1:$port/oauth/introspect" | grep -q '"active":true' \
    || { echo "introspection of the bench API token is not active" >&2; exit 1; }
  curl -fsS "http://127.0.0.1:$port/oauth/token" \
    -d grant_type=urn:ietf:params:oauth:grant-type:token-exchange \
    -d subject_token_type=urn:ietf:params:oauth:token-type:access_token \
    -d "subject_token=$(cat "$workdir/api-token")" -d scope=bench:read | grep -q access_token \
    || { echo "token exchange of the bench API token failed" >&2; exit 1; }
  # Warm-up: connections, caches, CPU frequency.
  BENCH_DURATION=2 run_wrk /oauth/token 16 >/dev/null
  for c in $connections; do
    signed="$(run_wrk /oauth/token "$c")"
    wi="$(run_wrk /oauth/token "$c" "$(cat "$workdir/assertion")")"
    base="$(run_wrk /bench/token-unsigned "$c")"
    intro="$(run_wrk /oauth/introspect "$c" "" introspect)"
    exch="$(run_wrk /oauth/token "$c" "" exchange)"
    printf '%-6s %5s | %10s %8s %8s | %10s %8s %8s %9s | %12s %8s %8s | %12s %8s %10s %6s %6s | %6s\n' "$alg" "$c" \
      "$(field rps "$signed")" "$(field p50_ms "$signed")" "$(field p99_ms "$signed")" \
      "$(field rps "$wi")" "$(field p50_ms "$wi")" "$(field p99_ms "$wi")" \
      "$(ratio "$(field rps "$wi")" "$(field rps "$signed")")" \
      "$(field rps "$base")" "$(field p50_ms "$base")" "$(field p99_ms "$base")" \
      "$(field rps "$intro")" "$(field p50_ms "$intro")" "$(field rps "$exch")" \
      "$(ratio "$(field rps "$intro")" "$(field rps "$signed")")" \
      "$(ratio "$(field rps "$exch")" "$(field rps "$signed")")" \
      "$(( $(field errors "$signed") + $(field errors "$wi") + $(field errors "$base") + $(field errors "$intro") + $(field errors "$exch") ))"
    # Sender-constrained columns, against the same server.
    declare -A dp=()
    for palg in ES256 EdDSA; do
      "$bin" bench-dpop --alg "$palg" --htu "$htu" --count "$((dpop_rate * duration))" \
        --out "$workdir/proofs" --verify-iterations 1 >/dev/null
      dp[$palg]="$(run_wrk /oauth/token "$c" "" "" "$workdir/proofs")"
    done
    tls_bearer="$(run_ab "$c" bearer)"
    mtls="$(run_ab "$c" mtls)"
    sender_rows+=("$(printf '%-6s %5s | %10s %8s | %10s %8s %6s | %10s %8s %6s | %10s %8s | %10s %8s %6s | %6s' "$alg" "$c" \
      "$(field rps "$signed")" "$(field p99_ms "$signed")" \
      "$(field rps "${dp[ES256]}")" "$(field p99_ms "${dp[ES256]}")" "$(ratio "$(field rps "${dp[ES256]}")" "$(field rps "$signed")")" \
      "$(field rps "${dp[EdDSA]}")" "$(field p99_ms "${dp[EdDSA]}")" "$(ratio "$(field rps "${dp[EdDSA]}")" "$(field rps "$signed")")" \
      "$(field rps "$tls_bearer")" "$(field p99_ms "$tls_bearer")" \
      "$(field rps "$mtls")" "$(field p99_ms "$mtls")" "$(ratio "$(field rps "$mtls")" "$(field rps "$tls_bearer")")" \
      "$(( $(field errors "${dp[ES256]}") + $(field errors "${dp[EdDSA]}") + $(field errors "$tls_bearer") + $(field errors "$mtls") ))")")
    # Per-request time differences (µs, wall clock at this concurrency).
    us() { awk -v a="$1" -v b="$2" 'BEGIN { if (a > 0 && b > 0) printf "%.1f", 1e6 / a - 1e6 / b; else print "-" }'; }
    sender_rows+=("$(printf '%14s   Δ per request vs bearer: DPoP ES256 %s µs, DPoP EdDSA %s µs; mTLS vs TLS bearer %s µs' "" \
      "$(us "$(field rps "${dp[ES256]}")" "$(field rps "$signed")")" \
      "$(us "$(field rps "${dp[EdDSA]}")" "$(field rps "$signed")")" \
      "$(us "$(field rps "$mtls")" "$(field rps "$tls_bearer")")")")
  done
  kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=""
done
echo "($(nproc) CPUs shared by server and wrk; ${duration}s per point; errors = non-2xx or socket errors)"
echo
echo "Sender-constrained tokens (same run, same servers; wrk for bearer and DPoP, ab -k for the TLS columns)"
printf '%-6s %5s | %10s %8s | %10s %8s %6s | %10s %8s %6s | %10s %8s | %10s %8s %6s | %6s\n' \
  "" "" "bearer" "" "DPoP ES256" "" "" "DPoP EdDSA" "" "" "TLS bearer" "" "mTLS" "" "" ""
printf '%-6s %5s | %10s %8s | %10s %8s %6s | %10s %8s %6s | %10s %8s | %10s %8s %6s | %6s\n' \
  alg conns "tokens/s" "p99 ms" "tokens/s" "p99 ms" ratio "tokens/s" "p99 ms" ratio "tokens/s" "p99 ms" "tokens/s" "p99 ms" ratio errors
printf -- '-%.0s' {1..150}; echo
printf '%s\n' "${sender_rows[@]}"
echo "proof verification (micro-benchmark, one core, distinct proofs, checks + replay cache): ES256 ${verify_us[ES256]} µs, EdDSA ${verify_us[EdDSA]} µs"
