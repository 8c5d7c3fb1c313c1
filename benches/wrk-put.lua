-- wrk script for benches/snapshot-stall.sh (the measurement of issue 8): PUT a VALUE_BYTES
-- value (default 256) to a random key among KEYS (default 100,000), and print one summary line.
local keys = tonumber(os.getenv("KEYS") or "100000")
local value = string.rep("v", tonumber(os.getenv("VALUE_BYTES") or "256"))
local headers = { ["Content-Type"] = "application/octet-stream" }

function setup(thread)
  thread:set("id", math.random(1, 1000000))
end

function init(args)
  math.randomseed(os.time() + id)
end

function request()
  -- The key names of `raft-kv bench`, so the preloaded keys are the ones overwritten.
  return wrk.format("PUT", string.format("/v1/kv/bench-%08d", math.random(0, keys - 1)), headers, value)
end

function done(summary, latency, requests)
  local seconds = summary.duration / 1e6
  io.write(string.format(
    "  wrk: %d writes in %.1f s, %.0f writes/s, p50 %.2f ms, p99 %.2f ms, p999 %.2f ms, non-2xx %d, socket errors %d\n",
    summary.requests, seconds, summary.requests / seconds, latency:percentile(50) / 1000,
    latency:percentile(99) / 1000, latency:percentile(99.9) / 1000, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
