#!/usr/bin/env bash
# Run every cargo-fuzz target (fuzz/fuzz_targets) for a while, starting from
# the seed corpus in fuzz/corpus/<target>/, and print executions per target.
#
#   scripts/fuzz.sh                 # each target for 60 s
#   scripts/fuzz.sh 300             # each target for 5 minutes
#   scripts/fuzz.sh 60 form duration
#
# Works on a stable toolchain (RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass its
# nightly flags). New inputs found go to fuzz/work/<target>/ (not committed);
# a crash stops the run, leaves its input in fuzz/artifacts/<target>/ and
# exits non-zero: turn it into a regression unit test next to the code.
# FUZZ_SANITIZER=address enables ASan (slower; the code is safe Rust, so
# the default is none).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

secs="${1:-${FUZZ_SECS:-60}}"
shift || true
sanitizer="${FUZZ_SANITIZER:-none}"

if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
if ! rustc --version | grep -q nightly; then
  export RUSTC_BOOTSTRAP=1
fi

cd fuzz
if [[ $# -gt 0 ]]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo fuzz list)
fi

cargo fuzz build -s "$sanitizer"

summary=()
status=0
for t in "${targets[@]}"; do
  mkdir -p "work/$t" "corpus/$t"
  log="work/$t.log"
  echo "== $t: ${secs}s"
  if cargo fuzz run -s "$sanitizer" "$t" "work/$t" "corpus/$t" -- \
      -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
      -print_final_stats=1 >"$log" 2>&1; then
    result=ok
  else
    result="CRASH (see fuzz/$log and fuzz/artifacts/$t/)"
    status=1
    tail -n 40 "$log"
  fi
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1 || true)
  summary+=("$(printf '%-16s %12s execs  %-10s %s' "$t" "$execs" "$cov" "$result")")
done

echo
echo "target           executions         coverage   result"
printf '%s\n' "${summary[@]}"
exit "$status"
