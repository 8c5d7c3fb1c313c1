#!/usr/bin/env bash
# The benchmark of issue 8 (not a test): do snapshots stall the write path?
#
# For each node binary given and each snapshot setting, starts three nodes on loopback (fsync on,
# fresh data directories), preloads 100,000 keys, then has 64 clients write 256-byte values to
# random keys for 10 s with `raft-kv bench`, and prints the bench result plus each node's RSS and
# snapshot count at the end. Run every binary in the same invocation so they share the machine's
# load; quote medians of several invocations.
#
# usage: benches/snapshot-stall.sh BENCH_CLIENT_BIN NODE_BIN[:label] [NODE_BIN[:label] ...]
#   BENCH_CLIENT_BIN  a raft-kv whose `bench` has --preload (this branch's)
#   NODE_BIN          the raft-kv whose nodes are measured (e.g. this branch's and main's)
# env: KEYS (100000), CLIENTS (64), SECONDS_RUN (10), VALUE_BYTES (256), BASE_PORT (18100),
#      LOAD (bench | wrk): who writes during the timed run. `bench` is `raft-kv bench`; `wrk`
#      (Debian package wrk) runs benches/wrk-put.lua against the leader with 2 threads, the
#      issue's own measurement. wrk uses less CPU than the Rust client, which matters when the
#      client shares two cores with three nodes.
set -euo pipefail

client_bin=$1
shift
keys=${KEYS:-100000}
clients=${CLIENTS:-64}
seconds=${SECONDS_RUN:-10}
value_bytes=${VALUE_BYTES:-256}
base_port=${BASE_PORT:-18100}
. "$(dirname "$0")/three-nodes.sh"
WORK=$(mktemp -d /tmp/raft-kv-bench.XXXXXX)
trap three_nodes_cleanup EXIT

rss_mb() { awk '/^VmRSS:/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }

run_one() {
    local bin=$1 label=$2 setting=$3 snapshot_entries=$4
    local dir="$WORK/$label-$setting" i
    RAFT_KV_SNAPSHOT_ENTRIES=$snapshot_entries three_nodes_start "$bin" "$dir" "$base_port"
    local endpoints=$ENDPOINTS
    echo "=== $label, snapshots $setting (RAFT_KV_SNAPSHOT_ENTRIES=$snapshot_entries, load ${LOAD:-bench}) ==="
    if [ "${LOAD:-bench}" = wrk ]; then
        # Preload (untimed; the one-second run after it is not reported), then wrk the leader.
        "$client_bin" bench --endpoints "$endpoints" --clients "$clients" --seconds 1 \
            --value-bytes "$value_bytes" --keys "$keys" --preload | grep preloaded
        local leader
        leader=$(curl -s "http://127.0.0.1:$((base_port + 1))/v1/cluster" |
            python3 -c 'import json, sys; print([m["addr"] for m in json.load(sys.stdin)["members"] if m["is_leader"]][0])')
        KEYS=$keys VALUE_BYTES=$value_bytes wrk -t2 -c"$clients" -d"${seconds}s" \
            -s "$(dirname "$0")/wrk-put.lua" "http://$leader" | grep 'wrk:'
    else
        "$client_bin" bench --endpoints "$endpoints" --clients "$clients" --seconds "$seconds" \
            --value-bytes "$value_bytes" --keys "$keys" --preload | grep -v '^ \{2,\}[0-9]* s '
    fi
    for i in 1 2 3; do
        local snapshots
        snapshots=$(curl -s "http://127.0.0.1:$((base_port + i))/metrics" |
            awk '/^raft_snapshots_total / { print $2 }')
        echo "  node n$i: rss $(rss_mb "${PIDS[$((i - 1))]}") MB, snapshots ${snapshots:-?}, data dir $(du -sm "$dir/n$i" | cut -f1) MB"
    done
    three_nodes_stop
    base_port=$((base_port + 10))
}

for spec in "$@"; do
    bin=${spec%%:*}
    label=${spec#*:}
    [ "$label" = "$spec" ] && label=$(basename "$bin")
    run_one "$bin" "$label" "every-20000" 20000
    run_one "$bin" "$label" "off" 100000000
done
