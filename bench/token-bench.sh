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
# Usage: bench/token-bench.sh            (needs wrk: apt-get install -y wrk)
# Settings: BENCH_DURATION (seconds per point, default 10),
#           BENCH_CONNECTIONS (default "16 64 256"), BENCH_ALGS,
#           BENCH_THREADS (wrk threads, default 2), M2M_BIN (prebuilt binary),
#           BENCH_PORT (default 18080), RUST_LOG (server log filter; the audit
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
bin="${M2M_BIN:-}"
if [[ -z "$bin" ]]; then
  echo "building the release binary..." >&2
  cargo build --release --quiet --features bench --bin m2m-operator --manifest-path "$repo/Cargo.toml"
  bin="$(cargo metadata --format-version 1 --no-deps --manifest-path "$repo/Cargo.toml" \
    | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')/release/m2m-operator"
fi

run_wrk() { # path connections [assertion] [mode] -> RESULT line
  M2M_BENCH_CREDENTIALS="$(cat "$workdir/credentials")" M2M_BENCH_PATH="$1" \
    M2M_BENCH_ASSERTION="${3:-}" M2M_BENCH_MODE="${4:-}" \
    M2M_BENCH_API_TOKEN="$(cat "$workdir/api-token")" \
    wrk -t"$threads" -c"$2" -d"${duration}s" --latency -s "$here/token.lua" \
    "http://127.0.0.1:$port" | grep '^RESULT'
}
field() { sed -n "s/.*$1=\([^ ]*\).*/\1/p" <<<"$2"; }

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
  done
  kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=""
done
echo "($(nproc) CPUs shared by server and wrk; ${duration}s per point; errors = non-2xx or socket errors)"
