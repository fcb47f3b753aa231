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

run_wrk() { # path connections [assertion] -> RESULT line
  M2M_BENCH_CREDENTIALS="$(cat "$workdir/credentials")" M2M_BENCH_PATH="$1" \
    M2M_BENCH_ASSERTION="${3:-}" \
    wrk -t"$threads" -c"$2" -d"${duration}s" --latency -s "$here/token.lua" \
    "http://127.0.0.1:$port" | grep '^RESULT'
}
field() { sed -n "s/.*$1=\([^ ]*\).*/\1/p" <<<"$2"; }

printf '%-6s %5s | %10s %8s %8s | %10s %8s %8s %9s | %6s | %12s %8s %8s\n' \
  "" "" "secret" "" "" "workload" "identity" "" "" "" "unsigned" "" ""
printf '%-6s %5s | %10s %8s %8s | %10s %8s %8s %9s | %6s | %12s %8s %8s\n' \
  alg conns "tokens/s" "p50 ms" "p99 ms" "tokens/s" "p50 ms" "p99 ms" "wi/secret" errors "baseline/s" "p50 ms" "p99 ms"
printf -- '-%.0s' {1..128}; echo
for alg in $algs; do
  rm -f "$workdir/credentials"
  RUST_LOG="${RUST_LOG:-info}" "$bin" bench-server --listen "127.0.0.1:$port" \
    --signing-alg "$alg" --credentials-file "$workdir/credentials" \
    --assertion-file "$workdir/assertion" \
    2>"$workdir/server-$alg.log" &
  server_pid=$!
  for _ in $(seq 100); do
    [[ -s "$workdir/credentials" ]] && (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
  done
  # Warm-up: connections, caches, CPU frequency.
  BENCH_DURATION=2 run_wrk /oauth/token 16 >/dev/null
  for c in $connections; do
    signed="$(run_wrk /oauth/token "$c")"
    wi="$(run_wrk /oauth/token "$c" "$(cat "$workdir/assertion")")"
    base="$(run_wrk /bench/token-unsigned "$c")"
    printf '%-6s %5s | %10s %8s %8s | %10s %8s %8s %8s%% | %6s | %12s %8s %8s\n' "$alg" "$c" \
      "$(field rps "$signed")" "$(field p50_ms "$signed")" "$(field p99_ms "$signed")" \
      "$(field rps "$wi")" "$(field p50_ms "$wi")" "$(field p99_ms "$wi")" \
      "$(( 100 * $(field rps "$wi") / ($(field rps "$signed") + 1) ))" \
      "$(( $(field errors "$signed") + $(field errors "$wi") + $(field errors "$base") ))" \
      "$(field rps "$base")" "$(field p50_ms "$base")" "$(field p99_ms "$base")"
  done
  kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=""
done
echo "($(nproc) CPUs shared by server and wrk; ${duration}s per point; errors = non-2xx or socket errors)"
