-- POST /v1/purchases/reserve {deal_id, num_bought: 1}, the same request on every connection;
-- with BENCH_KEY_PREFIX, each request carries a fresh Idempotency-Key (common.lua).
-- env: BENCH_DEAL_ID, BENCH_SECRET, BENCH_KEEP_OKS, BENCH_KEY_PREFIX
function init(args)
  bench_init()
  wrk.method = "POST"
  wrk.path = "/v1/purchases/reserve"
  wrk.body = string.format('{"deal_id": %s, "num_bought": 1}', os.getenv("BENCH_DEAL_ID"))
  req = wrk.format()
  head, rest = bench_split(req)
end

function request()
  if not first_ms then first_ms = now_ms() end
  if keyed then
    return head .. "Idempotency-Key: " .. bench_key("reserve") .. "\r\n" .. rest
  end
  return req
end

function response(status, headers, body)
  bench_count(status)
end
