-- A checkout: reserve, read the purchase id from the answer, then claim it. Each thread keeps
-- the ids of its reserves not yet claimed; a connection sends a claim when there is one,
-- otherwise a new reserve, so reserves and claims alternate. Every request carries its own
-- X-Request-ID, so that reserves and claims are timed apart (common.lua: bench_headers), and
-- with BENCH_KEY_PREFIX a fresh Idempotency-Key: the reserve and the claim each their own.
-- env: BENCH_DEAL_ID, BENCH_SECRET, BENCH_KEY_PREFIX
function init(args)
  bench_init()
  pending = {}
  claim_body = '{"user_id": "bench-buyer", "credit_card_id": "card"}'
  local body = string.format('{"deal_id": %s, "num_bought": 1}', os.getenv("BENCH_DEAL_ID"))
  reserve_head, reserve_rest = bench_split(wrk.format("POST", "/v1/purchases/reserve", nil, body))
end

function request()
  if not first_ms then first_ms = now_ms() end
  local token = table.remove(pending)
  if token then
    local head, rest = bench_split(wrk.format("PUT", "/v1/purchases/" .. token .. "/claim", nil, claim_body))
    return bench_headers(head, rest, "claim")
  end
  return bench_headers(reserve_head, reserve_rest, "reserve")
end

function response(status, headers, body)
  local sent = bench_timed(status, headers)
  local kind = "other"
  if status == 200 then
    if string.find(body, '"fulfillment_state"%s*:%s*"reserved"') and sent ~= "claim" then
      kind = "reserve_ok"
      local token = string.match(body, '"id"%s*:%s*"([^"]+)"')
      if token then table.insert(pending, token) end
    elseif string.find(body, '"fulfillment_state"%s*:%s*"fulfilled"') and sent ~= "reserve" then
      kind = "claim_ok"
    end
  end
  bench_count(status, kind)
end
