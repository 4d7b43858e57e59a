-- Shared by every bench script (bench/wrk.py prepends it): per-thread counters, a wall clock
-- in ms (LuaJIT's ffi), and done() printing one JSON line that bench/wrk.py parses.
--
-- Per-thread globals (read back in done() with thread:get):
--   statuses   status code -> count
--   kinds      "reserve_ok" / "claim_ok" / ... -> count (scripts that tell requests apart)
--   oks        wall-clock ms of successful responses, at most BENCH_KEEP_OKS of them
--   first_ms   wall-clock ms of the thread's first request
--   lat_kinds  request types timed apart ("reserve", "claim"), for scripts that send
--              bench_headers(): the type a response answers is known from the X-Request-ID the
--              server echoes (wrk's response() callback does not say which connection or request
--              it belongs to, and its own histogram mixes every type)
--   lat_<type> latencies in ms of that type's answers (one flat table per type: wrk 4.1's
--              thread:get crashes on nested tables)
--
-- Idempotency-Key: when BENCH_KEY_PREFIX is set (bench/scenarios.py makes a random one per run),
-- bench_headers() sends a fresh key with every request: prefix .. type letter .. thread id ..
-- "-" .. counter, so no key repeats across connections, threads or runs, and the checks find
-- this run's keys by their prefix.
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
  thread:set("bench_thread_id", #threads)
end

function bench_init()
  statuses = {}
  kinds = {}
  oks = {}
  first_ms = nil
  lat_kinds = {}
  sent_kind, sent_ms = {}, {}
  sent_n = 0
  key_prefix = os.getenv("BENCH_KEY_PREFIX") or ""
  keyed = key_prefix ~= ""
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

-- Splits a request made by wrk.format() after its request line, so that bench_headers() can
-- put per-request header lines there by concatenation.
function bench_split(req)
  local i = string.find(req, "\r\n", 1, true)
  return string.sub(req, 1, i + 1), string.sub(req, i + 2)
end

-- The request (head, rest from bench_split) of type `kind` with an X-Request-ID of its own
-- (to time it by type), and a fresh Idempotency-Key when the run is keyed.
function bench_headers(head, rest, kind)
  sent_n = sent_n + 1
  local id = "b" .. bench_thread_id .. "." .. sent_n
  sent_kind[id], sent_ms[id] = kind, now_ms()
  local extra = "X-Request-ID: " .. id .. "\r\n"
  if keyed then
    extra = extra .. "Idempotency-Key: " .. bench_key(kind) .. "\r\n"
  end
  return head .. extra .. rest
end

-- A key never sent before: this run's prefix, the type's first letter, the thread, a counter.
function bench_key(kind)
  sent_keys = (sent_keys or 0) + 1
  return key_prefix .. string.sub(kind or "w", 1, 1) .. bench_thread_id .. "-" .. sent_keys
end

-- The type of request this response answers (nil when the server did not echo X-Request-ID),
-- its latency recorded under that type and its status counted as kinds["<type> <status>"].
function bench_timed(status, headers)
  local id = headers["X-Request-ID"] or headers["x-request-id"] or headers["X-Request-Id"]
  local kind = id and sent_kind[id]
  if not kind then return nil end
  local list = _G["lat_" .. kind]
  if not list then
    list = {}
    _G["lat_" .. kind] = list
    lat_kinds[#lat_kinds + 1] = kind
  end
  list[#list + 1] = now_ms() - sent_ms[id]
  sent_kind[id], sent_ms[id] = nil, nil
  local typed = kind .. " " .. status
  kinds[typed] = (kinds[typed] or 0) + 1
  return kind
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
  local typed = {}
  for _, thread in ipairs(threads) do
    for _, kind in ipairs(thread:get("lat_kinds") or {}) do
      local all = typed[kind] or {}
      typed[kind] = all
      for _, ms in ipairs(thread:get("lat_" .. kind) or {}) do all[#all + 1] = ms end
    end
  end
  local typed_out = {}
  for kind, all in pairs(typed) do
    -- a kind a thread declared but never timed (e.g. no claim finished) has no percentiles
    if #all > 0 then
      table.sort(all)
      local function pct(p)
        return all[math.max(1, math.ceil(#all * p / 100))]
      end
      typed_out[#typed_out + 1] = string.format(
        '"%s": {"n": %d, "p50": %.3f, "p90": %.3f, "p99": %.3f, "max": %.3f}',
        kind, #all, pct(50), pct(90), pct(99), all[#all])
    end
  end
  table.sort(all_oks)
  local oks_out = {}
  for i, ts in ipairs(all_oks) do oks_out[i] = string.format("%.3f", ts - (first or 0)) end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "bytes": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"latency_us": {"mean": %.1f, "p50": %d, "p90": %d, "p99": %d, "max": %d}, ' ..
    '"statuses": %s, "kinds": %s, "typed_latency_ms": {%s}, "ok_ms": [%s]}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    json_map(all_statuses), json_map(all_kinds), table.concat(typed_out, ", "), table.concat(oks_out, ", ")))
end
