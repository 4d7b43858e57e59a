-- Shared by every bench script (bench/wrk.py prepends it): per-thread counters, a wall clock
-- in ms (LuaJIT's ffi), and done() printing one JSON line that bench/wrk.py parses.
--
-- Per-thread globals (read back in done() with thread:get):
--   statuses   status code -> count
--   kinds      "reserve_ok" / "claim_ok" / ... -> count (scripts that tell requests apart)
--   oks        wall-clock ms of successful responses, at most BENCH_KEEP_OKS of them
--   first_ms   wall-clock ms of the thread's first request
local ffi = require("ffi")
ffi.cdef[[
  typedef struct { long tv_sec; long tv_usec; } bench_timeval;
  int gettimeofday(bench_timeval *tv, void *tz);
]]
local tv = ffi.new("bench_timeval")

function now_ms()
  ffi.C.gettimeofday(tv, nil)
  return tonumber(tv.tv_sec) * 1000 + tonumber(tv.tv_usec) / 1000
end

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function bench_init()
  statuses = {}
  kinds = {}
  oks = {}
  first_ms = nil
  keep_oks = tonumber(os.getenv("BENCH_KEEP_OKS") or "0")
  secret = os.getenv("BENCH_SECRET") or ""
  wrk.headers["Content-Type"] = "application/json"
  if secret ~= "" then
    wrk.headers["Authorization"] = "Bearer " .. secret
  end
end

function bench_count(status, kind)
  if not first_ms then first_ms = now_ms() end
  statuses[status] = (statuses[status] or 0) + 1
  if kind then kinds[kind] = (kinds[kind] or 0) + 1 end
  if status == 200 and #oks < keep_oks then oks[#oks + 1] = now_ms() end
end

local function json_map(t)
  local parts = {}
  for k, v in pairs(t) do
    parts[#parts + 1] = string.format('"%s": %s', tostring(k), tostring(v))
  end
  return "{" .. table.concat(parts, ", ") .. "}"
end

function done(summary, latency, requests)
  local all_statuses, all_kinds, all_oks, first = {}, {}, {}, nil
  for _, thread in ipairs(threads) do
    for k, v in pairs(thread:get("statuses") or {}) do all_statuses[k] = (all_statuses[k] or 0) + v end
    for k, v in pairs(thread:get("kinds") or {}) do all_kinds[k] = (all_kinds[k] or 0) + v end
    for _, ts in ipairs(thread:get("oks") or {}) do all_oks[#all_oks + 1] = ts end
    local f = thread:get("first_ms")
    if f and (not first or f < first) then first = f end
  end
  table.sort(all_oks)
  local oks_out = {}
  for i, ts in ipairs(all_oks) do oks_out[i] = string.format("%.3f", ts - (first or 0)) end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "bytes": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"latency_us": {"mean": %.1f, "p50": %d, "p90": %d, "p99": %d, "max": %d}, ' ..
    '"statuses": %s, "kinds": %s, "ok_ms": [%s]}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    json_map(all_statuses), json_map(all_kinds), table.concat(oks_out, ", ")))
end
