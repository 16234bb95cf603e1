#!/usr/bin/env bash
# Run every fuzz target for SECONDS (default 60) from the committed seed
# corpora; new corpus entries go to a scratch directory, crashes to
# fuzz/artifacts/. Any single allocation over 256 MiB counts as a failure:
# memory must stay bounded whatever a peer sends.
#   bash fuzz/run.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(dimse header association)
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --version 0.13.2
# Stable toolchain: no sanitizer (coverage instrumentation still works).
cargo fuzz build -O --sanitizer none
for t in "${targets[@]}"; do
  work=$(mktemp -d)
  cp "fuzz/corpus/$t"/* "$work"/
  echo "== fuzzing $t for ${secs}s"
  cargo fuzz run -O --sanitizer none "$t" "$work" -- \
    -max_total_time="$secs" -max_len=65536 -rss_limit_mb=1024 -malloc_limit_mb=256 \
    -print_final_stats=1 2>&1 | grep -E "^(#[0-9]+ +DONE|==|SUMMARY|stat::number_of_executed_units|Done)" || true
  # A crash leaves an artifact and a non-zero status from cargo fuzz.
  if compgen -G "fuzz/artifacts/$t/*" >/dev/null; then
    echo "fuzz target $t found a failure:"; ls "fuzz/artifacts/$t"; exit 1
  fi
  rm -rf "$work"
done
