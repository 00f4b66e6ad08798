#!/usr/bin/env bash
# One fuzzing campaign per target, one after the other, one job each, at the lowest CPU
# priority (the build machine is shared). Usage, from fuzz/:
#   ./run_campaign.sh <runs> [target...]      (default: every target)
# The working corpus grows in corpus-full/<target>/ (not committed; the committed,
# minimized corpus in corpus/<target>/ is read as a second input directory). Each job's
# libFuzzer output lands in logs/<target>.log (with -jobs=1 libFuzzer writes
# fuzz-0.log; it is moved there).
set -euo pipefail
cd "$(dirname "$0")"
runs=${1:?usage: run_campaign.sh <runs> [target...]}
shift
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(frame raft_codec handshake resp kv_request wal_recovery snapshot_file)
fi
mkdir -p logs artifacts
for target in "${targets[@]}"; do
  mkdir -p "corpus-full/$target"
  rm -f fuzz-0.log
  start=$(date +%s)
  nice -n 19 cargo +nightly fuzz run -s none "$target" "corpus-full/$target" "corpus/$target" -- \
    -jobs=1 -workers=1 -runs="$runs" -max_len=8192 -malloc_limit_mb=64 -rss_limit_mb=1024 \
    -print_final_stats=1 -artifact_prefix="artifacts/$target-" || true
  mv fuzz-0.log "logs/$target.log"
  echo "$target: $(( $(date +%s) - start )) s" >> logs/durations.txt
  tail -n 14 "logs/$target.log"
done
