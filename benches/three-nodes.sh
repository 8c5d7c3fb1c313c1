# Sourced by the bench scripts: three raft-kv nodes on loopback (fsync on, fresh data
# directories), and their cleanup.
#
#   three_nodes_start BIN DIR BASE_PORT   starts n1..n3 on BASE_PORT+1..+3 with data and logs in
#                                         DIR and the caller's environment (for example
#                                         `RAFT_KV_SNAPSHOT_ENTRIES=20000 three_nodes_start ...`);
#                                         sets ENDPOINTS and PIDS (n1's pid first)
#   three_nodes_stop                      kills and reaps them
#
# Install `trap three_nodes_cleanup EXIT` (after setting WORK) so an interrupted run leaves no node
# or directory behind.

PIDS=()
ENDPOINTS=""

three_nodes_start() {
    local bin=$1 dir=$2 base=$3 i peers
    ENDPOINTS=""
    PIDS=()
    for i in 1 2 3; do
        ENDPOINTS+="${ENDPOINTS:+,}127.0.0.1:$((base + i))"
    done
    mkdir -p "$dir"
    for i in 1 2 3; do
        peers=$(echo "$ENDPOINTS" | tr ',' '\n' | grep -v ":$((base + i))$" | paste -sd,)
        "$bin" --id "n$i" --host 127.0.0.1 --port $((base + i)) --peers "$peers" \
            --data-dir "$dir/n$i" --log-level warn >"$dir/n$i.log" 2>&1 &
        PIDS+=($!)
    done
}

three_nodes_stop() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    PIDS=()
}

three_nodes_cleanup() {
    three_nodes_stop
    rm -rf "${WORK:?}"
}
