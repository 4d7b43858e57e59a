-- A checkout: reserve, read the purchase id from the answer, then claim it. Each thread keeps
-- the ids of its reserves not yet claimed; a connection sends a claim when there is one,
-- otherwise a new reserve, so reserves and claims alternate.
-- env: BENCH_DEAL_ID, BENCH_SECRET
function init(args)
  bench_init()
  pending = {}
  claim_body = '{"user_id": "bench-buyer", "credit_card_id": "card"}'
  wrk.method = "POST"
  wrk.path = "/v1/purchases/reserve"
  wrk.body = string.format('{"deal_id": %s, "num_bought": 1}', os.getenv("BENCH_DEAL_ID"))
  reserve_req = wrk.format()
end

function request()
  if not first_ms then first_ms = now_ms() end
  local token = table.remove(pending)
  if token then
    return wrk.format("PUT", "/v1/purchases/" .. token .. "/claim", nil, claim_body)
  end
  return reserve_req
end

function response(status, headers, body)
  local kind = "other"
  if status == 200 then
    if string.find(body, '"fulfillment_state"%s*:%s*"reserved"') then
      kind = "reserve_ok"
      local token = string.match(body, '"id"%s*:%s*"([^"]+)"')
      if token then table.insert(pending, token) end
    elseif string.find(body, '"fulfillment_state"%s*:%s*"fulfilled"') then
      kind = "claim_ok"
    end
  end
  bench_count(status, kind)
end
