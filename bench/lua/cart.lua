-- A cart checkout: reserve a cart of one unit of each of BENCH_DEAL_IDS
-- (POST /v1/carts/reserve {items: [{deal_id, num_bought}, ...]}), read the cart's id from the
-- answer, then claim the cart (PUT /v1/carts/:id/claim {user_id}); reserves and claims
-- alternate as in checkout.lua, and are timed apart the same way. With BENCH_KEY_PREFIX every
-- request carries a fresh Idempotency-Key.
-- env: BENCH_DEAL_IDS (comma-separated), BENCH_SECRET, BENCH_KEY_PREFIX
function init(args)
  bench_init()
  pending = {}
  claim_body = '{"user_id": "bench-buyer", "credit_card_id": "card"}'
  local items = {}
  for id in string.gmatch(os.getenv("BENCH_DEAL_IDS"), "[^,]+") do
    items[#items + 1] = string.format('{"deal_id": %s, "num_bought": 1}', id)
  end
  local body = '{"items": [' .. table.concat(items, ", ") .. ']}'
  reserve_head, reserve_rest = bench_split(wrk.format("POST", "/v1/carts/reserve", nil, body))
end

function request()
  if not first_ms then first_ms = now_ms() end
  local cart = table.remove(pending)
  if cart then
    local head, rest = bench_split(wrk.format("PUT", "/v1/carts/" .. cart .. "/claim", nil, claim_body))
    return bench_headers(head, rest, "claim")
  end
  return bench_headers(reserve_head, reserve_rest, "reserve")
end

-- The cart's own id: the first "id" once the purchases (which have ids of their own) are cut out.
local function cart_id(body)
  local outer = string.gsub(body, '"purchases"%s*:%s*%b[]', '""')
  local cart = string.match(outer, '"cart"%s*:%s*(%b{})')
  return cart and string.match(cart, '"id"%s*:%s*"?([%w%-_%.:]+)')
end

function response(status, headers, body)
  local sent = bench_timed(status, headers)
  if not sent then
    -- No X-Request-ID echoed: tell the answers apart by what they say.
    sent = string.find(body, '"fulfillment_state"%s*:%s*"fulfilled"') and "claim" or "reserve"
  end
  local kind = "other"
  if status == 200 then
    if sent == "reserve" then
      local id = cart_id(body)
      if id then
        kind = "reserve_ok"
        table.insert(pending, id)
      end
    else
      kind = "claim_ok"
    end
  end
  bench_count(status, kind)
end
