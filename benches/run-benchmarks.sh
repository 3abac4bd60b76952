#!/usr/bin/env bash
# Runs every measurement docs/BENCHMARKS.md reports, $REPEAT times, and appends the output to
# $OUT. Benchmarks on a 2-core machine are only worth reading when nothing else runs, so before
# each run it waits (up to $IDLE_WAIT_MAX seconds) for no compiler to be running and the 1-minute
# load average to fall below 1, and after it says whether a compiler started meanwhile
# ("# disturbed"): such a run is noise, not a result.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-bench-results.jsonl}
SECONDS_PER_SYSTEM=${SECONDS_PER_SYSTEM:-5}
IDLE_WAIT_MAX=${IDLE_WAIT_MAX:-900}
REPEAT=${REPEAT:-1}
busy_flag=$(mktemp)

cargo build --release -p nodedb-wal-benches --bins
# Two rounds, the second in reverse order, so no system always runs first or last.
compare=(cargo run --quiet --release -p nodedb-wal-benches --bin compare -- --rounds 2)
dwb=(cargo run --quiet --release -p nodedb-wal-benches --bin dwb --)
replay=(cargo run --quiet --release -p nodedb-wal-benches --bin replay --)
tail=(cargo run --quiet --release -p nodedb-wal-benches --bin tail --)

compiler_running() {
    ps -eo comm= | grep -Eqx 'rustc|cc1|ld|clippy-driver'
}

wait_for_idle() {
    local waited=0
    while ((waited < IDLE_WAIT_MAX)); do
        if ! compiler_running && awk "BEGIN{exit !($(cut -d' ' -f1 /proc/loadavg) < 1.0)}"; then
            return
        fi
        sleep 5
        waited=$((waited + 5))
    done
    echo "# machine still busy after ${IDLE_WAIT_MAX}s; running anyway" | tee -a "$OUT"
}

# Runs its arguments while a watcher notes whether a compiler runs at any time meanwhile.
watched() {
    wait_for_idle
    local rev watcher
    if git rev-parse --git-dir >/dev/null 2>&1; then
        rev=$(git rev-parse --short HEAD)
        git diff --quiet HEAD -- nodedb-wal || rev+='+uncommitted'
    else
        rev=${NODEDB_WAL_REV:-unknown} # an exported tree, e.g. from git archive
    fi
    echo "# $(date -u +%FT%TZ) load $(cut -d' ' -f1-3 /proc/loadavg) nodedb-wal $rev: $*" | tee -a "$OUT"
    : >"$busy_flag"
    (while sleep 1; do if compiler_running; then echo busy >"$busy_flag"; fi; done) &
    watcher=$!
    "$@" | tee -a "$OUT"
    kill "$watcher"
    if [[ -s "$busy_flag" ]]; then echo "# disturbed: a compiler ran during this run" | tee -a "$OUT"; fi
}

for _ in $(seq "$REPEAT"); do
    watched "${compare[@]}" --threads 16 --size 128 --seconds "$SECONDS_PER_SYSTEM"
    watched "${compare[@]}" --threads 64 --size 128 --seconds "$SECONDS_PER_SYSTEM"
    # nodedb-wal's log never truncated (okaywal runs as ever), growing into blocks never written
    # before; large records both ways, okaywal also with files as large as nodedb-wal's segments.
    watched "${compare[@]}" --threads 16 --size 128 --seconds "$SECONDS_PER_SYSTEM" --no-checkpoint --systems raw-floor,okaywal,nodedb-wal
    watched "${compare[@]}" --threads 16 --size 64k --seconds "$SECONDS_PER_SYSTEM" --systems raw-bandwidth,okaywal,okaywal-64m,nodedb-wal
    watched "${compare[@]}" --threads 16 --size 64k --seconds "$SECONDS_PER_SYSTEM" --no-checkpoint --systems nodedb-wal
    # Records larger than a batch (1 MiB by default), each in a one-off buffer; and one thread.
    watched "${compare[@]}" --threads 16 --size 4m --seconds "$SECONDS_PER_SYSTEM" --systems raw-bandwidth,okaywal,nodedb-wal
    watched "${compare[@]}" --threads 16 --size 16m --seconds "$SECONDS_PER_SYSTEM" --systems okaywal,nodedb-wal
    watched "${compare[@]}" --threads 1 --size 128 --seconds "$SECONDS_PER_SYSTEM" --systems raw-floor,okaywal,nodedb-wal
    watched "${compare[@]}" --pipelined --size 128 --seconds "$SECONDS_PER_SYSTEM"
    watched "${compare[@]}" --pipelined --size 128 --seconds "$SECONDS_PER_SYSTEM" --depth 16 --systems nodedb-wal,nodedb-wal-batch
    watched "${compare[@]}" --pipelined --size 4k --seconds "$SECONDS_PER_SYSTEM"
    watched "${compare[@]}" --pipelined --size 4k --seconds "$SECONDS_PER_SYSTEM" --no-checkpoint
    watched "${compare[@]}" --page-cache-check --bytes 1073741824 --size 4k
    for threads in 1 16 64; do
        watched "${compare[@]}" --threads "$threads" --seconds "$SECONDS_PER_SYSTEM" --systems raw-floor,nodedb-wal-pwrite,nodedb-wal-uring
    done
    for size in 1k 16k; do
        watched "${compare[@]}" --threads 16 --size "$size" --seconds "$SECONDS_PER_SYSTEM" --systems nodedb-wal,nodedb-wal-encrypted
    done
    watched "${replay[@]}" --size 1024
    # Records longer than a read-ahead chunk: the windows that carry them.
    watched "${replay[@]}" --size 4194304 --bytes 536870912 --rounds 2 --lazy-bytes 0 --logs plaintext
    watched "${tail[@]}"
    watched "${dwb[@]}"
    watched cargo run --quiet --release -p nodedb-wal-benches --bin engine_crypt -- 256 5
done

watched cargo bench --quiet -p nodedb-wal-benches --bench encode
rm -f "$busy_flag"
