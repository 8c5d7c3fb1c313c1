#!/usr/bin/env bash
# Memory of a cluster at rest (a benchmark, not a test; issue 8's "RSS per node with 100,000
# keys of 256 B"): starts three nodes on loopback per binary given (fresh data directories),
# preloads KEYS keys of VALUE_BYTES with `raft-kv bench --preload`, waits REST_S seconds, then
# prints each node's RSS, its anonymous part, and glibc's heap totals (`malloc_stats()` called
# in the node through gdb, printed into the node's log; skipped if gdb is missing).
#
# usage: benches/rss-at-rest.sh BENCH_CLIENT_BIN NODE_BIN [NODE_BIN ...]
# env: KEYS (100000), VALUE_BYTES (256), REST_S (5), BASE_PORT (18500)
set -euo pipefail

client_bin=$1
shift
keys=${KEYS:-100000}
value_bytes=${VALUE_BYTES:-256}
base_port=${BASE_PORT:-18500}
. "$(dirname "$0")/three-nodes.sh"
WORK=$(mktemp -d /tmp/raft-kv-rss.XXXXXX)
trap three_nodes_cleanup EXIT

for bin in "$@"; do
    dir="$WORK/run-$base_port"
    three_nodes_start "$bin" "$dir" "$base_port"
    endpoints=$ENDPOINTS
    echo "=== $bin: $keys keys of $value_bytes B"
    "$client_bin" bench --endpoints "$endpoints" --clients 64 --seconds 1 \
        --value-bytes "$value_bytes" --keys "$keys" --preload | grep preloaded
    sleep "${REST_S:-5}"
    for i in 1 2 3; do
        pid=${PIDS[$((i - 1))]}
        rss=$(awk '/^Rss:/ { printf "%.1f", $2 / 1024 }' "/proc/$pid/smaps_rollup")
        anon=$(awk '/^Anonymous:/ { printf "%.1f", $2 / 1024 }' "/proc/$pid/smaps_rollup")
        heap=""
        if command -v gdb >/dev/null; then
            gdb -p "$pid" -batch -ex 'call (void)malloc_stats()' >/dev/null 2>&1 || true
            sleep 0.2
            heap=$(grep -A2 '^Total (incl. mmap):' "$dir/n$i.log" | tail -2 |
                awk '{ printf "%s %.1f MB, ", $1 == "system" ? "heap held" : "in use", $NF / 1048576 }')
        fi
        echo "  node n$i: rss $rss MB (anonymous $anon MB), ${heap:-no gdb}"
    done
    three_nodes_stop
    base_port=$((base_port + 10))
done
