-- GET BENCH_PATH (the ledger pages).
-- env: BENCH_PATH, BENCH_SECRET
function init(args)
  bench_init()
  wrk.method = "GET"
  wrk.path = os.getenv("BENCH_PATH")
  wrk.body = nil
  wrk.headers["Content-Type"] = nil
  req = wrk.format()
end

function request()
  return req
end

function response(status, headers, body)
  bench_count(status)
end
