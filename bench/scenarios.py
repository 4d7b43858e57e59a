"""The HTTP scenarios (flash sale, sold-out path, reserve-only, checkout), each bounded in time,
each followed by a check of what the stores say afterwards."""

from __future__ import annotations

from dataclasses import dataclass, field

from bench.procs import flask_cli
from bench.targets import BIG_QUANTITY, Check, Target, to_epoch
from bench.wrk import WrkResult

FLASH_UNITS = 1000


@dataclass
class Row:
    """One line of the results table."""

    scenario: str
    system: str
    rps: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    errors: int | None = None
    correctness: str = ""
    ok: bool = True
    notes: str = ""
    result: WrkResult | None = None
    extra: dict = field(default_factory=dict)


def _load_notes(result: WrkResult) -> str:
    return (
        f"server {result.server_ms_per_request():.2f} ms CPU/req ({result.server_cores:.2f} cores), "
        f"wrk {result.wrk_cores:.2f} cores"
    )


def _row(scenario: str, target: Target, result: WrkResult, expected: tuple[int, ...], check: Check, notes: str) -> Row:
    return Row(
        scenario=scenario,
        system=target.label or target.kind,
        rps=result.rps,
        p50_ms=result.p50_ms,
        p99_ms=result.p99_ms,
        errors=result.errors(expected),
        correctness=check.text,
        ok=check.ok,
        notes="; ".join(n for n in (notes, _load_notes(result)) if n),
        result=result,
    )


def warm_up(target: Target, seconds: float, connections: int) -> None:
    """Fill connection pools, caches and every code path measured (reserve, claim, the 409)
    in every worker before measuring."""
    if target.kind == "bare":
        target.wrk("warmup-bare", "reserve.lua", seconds=seconds, connections=connections, env={"BENCH_DEAL_ID": "1"})
        return
    deal_id = target.create_deal(BIG_QUANTITY, "warm-up")
    script = "reserve.lua" if target.kind == "redisonly" else "checkout.lua"
    target.wrk(
        f"warmup-{target.kind}", script, seconds=seconds, connections=connections, env={"BENCH_DEAL_ID": str(deal_id)}
    )
    sold_out = target.create_deal(0, "warm-up, sold out")
    target.wrk(
        f"warmup-soldout-{target.kind}",
        "reserve.lua",
        seconds=1,
        connections=connections,
        env={"BENCH_DEAL_ID": str(sold_out)},
    )


# -- scenario 1: the flash sale -------------------------------------------------------------


def flash_sale(target: Target, seconds: float, connections: int, tag: str = "") -> Row:
    deal_id = target.create_deal(FLASH_UNITS, "Flash sale")
    result = target.wrk(
        f"flash-{target.kind}{tag}",
        "reserve.lua",
        seconds=seconds,
        connections=connections,
        env={"BENCH_DEAL_ID": str(deal_id), "BENCH_KEEP_OKS": str(FLASH_UNITS + 10)},
    )
    verdict, text, last_created = _check_flash(target, deal_id, result, connections)
    sellout = ""
    if len(result.ok_ms) >= FLASH_UNITS:
        sellout = f"sold out {result.ok_ms[FLASH_UNITS - 1] / 1000:.2f} s after the first request"
    if last_created:
        sellout += f" (last hold's created_at {last_created:.2f} s after wrk started)"
    row = _row(
        "1 flash sale (1,000 units)",
        target,
        result,
        (200, 409),
        Check(verdict == "OK", f"{verdict} {text}"),
        f"{result.count(200)} x 200, {result.count(409)} x 409; {sellout}",
    )
    row.extra["deal_id"] = deal_id
    row.extra["verdict"] = verdict
    row.extra["sellout_s"] = result.ok_ms[FLASH_UNITS - 1] / 1000 if len(result.ok_ms) >= FLASH_UNITS else None
    return row


def _check_flash(target: Target, deal_id: int, result: WrkResult, connections: int) -> tuple[str, str, float | None]:
    """OK: exactly 1,000 units held, SQL and the live stock agree, and wrk saw no more than
    1,000 successes. INCOMPLETE: fewer sold within the run (a slow machine), the stores still
    agree on every unit. FAIL: anything else."""
    answered = result.count(200)
    if target.kind == "rowlock":
        ((rows, last),) = target.sql(
            "SELECT count(*), max(created_at) FROM rowlock_reservations WHERE deal_id = %s", deal_id
        )
        ((available, reserved),) = target.sql("SELECT available, reserved FROM rowlock_deals WHERE id = %s", deal_id)
        agree = (available, reserved) == (FLASH_UNITS - rows, rows)
        parts = [f"SQL {rows} rows", f"deal row available={available} reserved={reserved}"]
        last_created = last.timestamp() - result.started_at if last else None
    else:
        ((rows, units, last),) = target.sql(
            "SELECT count(*), coalesce(sum(units), 0), max(created_at) FROM purchases "
            "WHERE deal_id = %s AND fulfillment_state = 'reserved'",
            deal_id,
        )
        inv = target.redis_inv(deal_id)
        available, reserved, sold = (int(inv.get(k, -1)) for k in ("available", "reserved", "sold"))
        inventory = _inventory_check(target, deal_id)
        agree = units == rows and (available, reserved, sold) == (FLASH_UNITS - rows, rows, 0) and inventory.ok
        parts = [
            f"SQL {rows} holds/{units} units",
            f"Redis available={available} reserved={reserved} sold={sold}",
            inventory.text,
        ]
        last_created = to_epoch(last) - result.started_at if last else None
    # wrk stops with requests in flight: the server may commit up to one per connection that
    # wrk never counted, never the other way round.
    agree = agree and answered <= rows <= answered + connections
    seen = f"{answered} x 200" + (f" (+{rows - answered} answered after wrk stopped)" if rows > answered else "")
    if agree and rows == FLASH_UNITS and available == 0:
        verdict = "OK"
    elif agree and rows < FLASH_UNITS:
        verdict = "INCOMPLETE (not sold out in the run)"
    else:
        verdict = "FAIL"
    return verdict, "; ".join([seen, *parts]), last_created


def _inventory_check(target: Target, deal_id: int) -> Check:
    done = flask_cli(["inventory", "check", "--deal", str(deal_id)], target.env, check=False)
    return Check(done.returncode == 0, f"inventory check exit {done.returncode}")


def sold_out_path(target: Target, seconds: float, connections: int) -> Row:
    """The same burst on a deal with nothing left: every answer is the 409, from Redis alone."""
    deal_id = target.create_deal(0, "Sold out")
    result = target.wrk(
        f"soldout-{target.kind}",
        "reserve.lua",
        seconds=seconds,
        connections=connections,
        env={"BENCH_DEAL_ID": str(deal_id)},
    )
    ok = result.count(409) == result.requests
    return _row(
        "1b sold-out path (409 only)",
        target,
        result,
        (409,),
        Check(ok, f"{'OK' if ok else 'FAIL'} {result.count(409)} x 409"),
        "",
    )


# -- scenario 2: checkout -------------------------------------------------------------------


def reserve_only(target: Target, seconds: float, connections: int, tag: str = "") -> Row:
    """Successful reserves on a deal that never sells out: each one a durable SQL row."""
    deal_id = target.create_deal(BIG_QUANTITY, "Never sells out")
    result = target.wrk(
        f"reserve-{target.kind}{tag}",
        "reserve.lua",
        seconds=seconds,
        connections=connections,
        env={"BENCH_DEAL_ID": str(deal_id)},
    )
    answered = result.count(200)
    if target.kind == "redisonly":
        check = Check(True, "n/a (no SQL rows by design)")
    elif target.kind == "rowlock":
        ((rows,),) = target.sql("SELECT count(*) FROM rowlock_reservations WHERE deal_id = %s", deal_id)
        ((reserved,),) = target.sql("SELECT reserved FROM rowlock_deals WHERE id = %s", deal_id)
        ok = answered <= rows <= answered + connections and reserved == rows
        check = Check(ok, f"{'OK' if ok else 'FAIL'} {answered} x 200, {rows} rows, deal reserved={reserved}")
    else:
        ((rows,),) = target.sql(
            "SELECT count(*) FROM purchases WHERE deal_id = %s AND fulfillment_state = 'reserved'", deal_id
        )
        inv = target.redis_inv(deal_id)
        reserved = int(inv.get("reserved", -1))
        inventory = _inventory_check(target, deal_id)
        # wrk stops with requests in flight: the server may have committed up to one per
        # connection that wrk never counted.
        ok = answered <= rows <= answered + connections and reserved == rows and inventory.ok
        check = Check(
            ok,
            f"{'OK' if ok else 'FAIL'} {answered} x 200, {rows} SQL rows, Redis reserved={reserved}, {inventory.text}",
        )
    row = _row("2a checkout: reserve only", target, result, (200,), check, f"{result.per_second(answered):.0f} holds/s")
    row.extra["holds_per_s"] = result.per_second(answered)
    return row


def checkout(target: Target, seconds: float, connections: int, tag: str = "") -> Row:
    """Reserve, then claim what was reserved (wrk reads the id from the reserve's answer)."""
    deal_id = target.create_deal(BIG_QUANTITY, "Checkout")
    result = target.wrk(
        f"checkout-{target.kind}{tag}",
        "checkout.lua",
        seconds=seconds,
        connections=connections,
        env={"BENCH_DEAL_ID": str(deal_id)},
    )
    reserves, claims = result.kinds.get("reserve_ok", 0), result.kinds.get("claim_ok", 0)
    if target.kind == "rowlock":
        rows = dict(
            target.sql("SELECT state, count(*) FROM rowlock_reservations WHERE deal_id = %s GROUP BY state", deal_id)
        )
        ((reserved, sold),) = target.sql("SELECT reserved, sold FROM rowlock_deals WHERE id = %s", deal_id)
        held, fulfilled = rows.get("reserved", 0), rows.get("fulfilled", 0)
        ok = claims <= fulfilled <= claims + connections and (reserved, sold) == (held, fulfilled)
        text = f"{held + fulfilled} rows ({fulfilled} claimed), deal reserved={reserved} sold={sold}"
    else:
        rows = dict(
            target.sql(
                "SELECT fulfillment_state, count(*) FROM purchases WHERE deal_id = %s GROUP BY fulfillment_state",
                deal_id,
            )
        )
        held, fulfilled = rows.get("reserved", 0), rows.get("fulfilled", 0)
        ((coupons,),) = target.sql(
            "SELECT count(*) FROM coupons c JOIN purchases p ON p.id = c.purchase_id WHERE p.deal_id = %s", deal_id
        )
        inv = target.redis_inv(deal_id)
        live = (int(inv.get("reserved", -1)), int(inv.get("sold", -1)))
        inventory = _inventory_check(target, deal_id)
        ok = (
            claims <= fulfilled <= claims + connections
            and reserves <= held + fulfilled <= reserves + connections
            and coupons == fulfilled
            and live == (held, fulfilled)
            and inventory.ok
        )
        text = (
            f"{held + fulfilled} SQL rows ({fulfilled} claimed, {coupons} coupons), "
            f"Redis reserved={live[0]} sold={live[1]}, {inventory.text}"
        )
    row = _row(
        "2b checkout: reserve + claim",
        target,
        result,
        (200,),
        Check(ok, f"{'OK' if ok else 'FAIL'} {text}"),
        f"{result.per_second(reserves):.0f} reserves/s + {result.per_second(claims):.0f} claims/s",
    )
    row.extra.update(reserves_per_s=result.per_second(reserves), claims_per_s=result.per_second(claims))
    return row


def bare(target: Target, seconds: float, connections: int) -> Row:
    result = target.wrk("bare", "reserve.lua", seconds=seconds, connections=connections, env={"BENCH_DEAL_ID": "1"})
    ok = result.count(200) == result.requests
    return _row(
        "5a baseline: bare Flask POST",
        target,
        result,
        (200,),
        Check(ok, f"{'OK' if ok else 'FAIL'} {result.count(200)} x 200 (fixed JSON)"),
        "",
    )
