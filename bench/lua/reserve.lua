-- POST /v1/purchases/reserve {deal_id, num_bought: 1}, the same request on every connection.
-- env: BENCH_DEAL_ID, BENCH_SECRET, BENCH_KEEP_OKS
function init(args)
  bench_init()
  wrk.method = "POST"
  wrk.path = "/v1/purchases/reserve"
  wrk.body = string.format('{"deal_id": %s, "num_bought": 1}', os.getenv("BENCH_DEAL_ID"))
  req = wrk.format()
end

function request()
  if not first_ms then first_ms = now_ms() end
  return req
end

function response(status, headers, body)
  bench_count(status)
end
