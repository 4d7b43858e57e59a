"""The HTTP scenarios (flash sale, sold-out path, reserve-only, checkout, cart checkout), each
bounded in time, each followed by a check of what the stores say afterwards.

The flash sale, reserve-only and checkout also run *keyed*, as a checkout client that retries on
timeouts sends them: a fresh `Idempotency-Key` on every write (lua/common.lua; a random prefix
per run, so keys never repeat across connections or runs). After a keyed run the app's
idempotency records of that run's keys are read back too: one key = one effect.
"""

from __future__ import annotations

import functools
import secrets
from dataclasses import dataclass, field

import psycopg

from bench.procs import flask_cli
from bench.targets import BIG_QUANTITY, Check, Target, to_epoch
from bench.wrk import WrkCrashed, WrkResult

FLASH_UNITS = 1000
CART_DEALS = 3
CART_SCENARIO = f"2c cart checkout, keyed ({CART_DEALS} deals a cart)"


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
    #: Which scenario this is ("flash", "flash_keyed", "reserve", ...), whatever the label says.
    id: str = ""
    #: The round of the side-by-side runs it belongs to (None: measured once, outside rounds).
    round: int | None = None


def _load_notes(result: WrkResult) -> str:
    return (
        f"server {result.server_ms_per_request():.2f} ms CPU/req ({result.server_cores:.2f} cores), "
        f"wrk {result.wrk_cores:.2f} cores"
    )


def _key_prefix(keyed: bool) -> str:
    """A prefix for this run's Idempotency-Keys ("" for an unkeyed run)."""
    return f"k{secrets.token_hex(6)}-" if keyed else ""


def _verdict(ok: bool, *checks: Check) -> str:
    if not ok or not all(c.ok or c.unchecked for c in checks):
        return "FAIL"
    return "UNCHECKED" if any(c.unchecked for c in checks) else "OK"


def _row(
    scenario: str,
    target: Target,
    result: WrkResult,
    expected: tuple[int, ...],
    check: Check,
    notes: str,
    id: str = "",
) -> Row:
    return Row(
        id=id,
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


def _again_if_wrk_crashed(scenario):
    """A run that wrk died in (`WrkCrashed`) is run once more: on fresh deals and keys, as every
    scenario makes its own, so the check reads that run alone; the row says so."""

    @functools.wraps(scenario)
    def run(target: Target, *args, **kwargs):
        try:
            return scenario(target, *args, **kwargs)
        except WrkCrashed as crash:
            print(f"  {crash}: {scenario.__name__} runs again", flush=True)
            target.settle()
            row = scenario(target, *args, **kwargs)
            if row is not None:
                row.notes = "; ".join(n for n in ("run again: wrk crashed in the first run", row.notes) if n)
            return row

    return run


@_again_if_wrk_crashed
def warm_up(target: Target, seconds: float, connections: int) -> None:
    """Fill connection pools, caches and every code path measured (reserve, claim, the 409;
    for the app keyed too, and carts when it has them) in every worker before measuring."""
    if target.kind == "bare":
        target.wrk("warmup-bare", "reserve.lua", seconds=seconds, connections=connections, env={"BENCH_DEAL_ID": "1"})
        return
    deal_id = target.create_deal(BIG_QUANTITY, "warm-up")
    script = "reserve.lua" if target.kind == "redisonly" else "checkout.lua"
    target.wrk(
        f"warmup-{target.kind}", script, seconds=seconds, connections=connections, env={"BENCH_DEAL_ID": str(deal_id)}
    )
    if target.kind.startswith("app"):
        target.wrk(
            f"warmup-keyed-{target.kind}",
            "checkout.lua",
            seconds=seconds,
            connections=connections,
            env={"BENCH_DEAL_ID": str(deal_id), "BENCH_KEY_PREFIX": _key_prefix(True)},
        )
        if target.has_carts():
            deal_ids = [target.create_deal(BIG_QUANTITY, f"warm-up cart item {i}") for i in range(CART_DEALS)]
            target.wrk(
                f"warmup-cart-{target.kind}",
                "cart.lua",
                seconds=seconds,
                connections=connections,
                env={"BENCH_DEAL_IDS": ",".join(map(str, deal_ids)), "BENCH_KEY_PREFIX": _key_prefix(True)},
            )
    sold_out = target.create_deal(0, "warm-up, sold out")
    target.wrk(
        f"warmup-soldout-{target.kind}",
        "reserve.lua",
        seconds=1,
        connections=connections,
        env={"BENCH_DEAL_ID": str(sold_out)},
    )


# -- the checks shared by scenarios ---------------------------------------------------------


def _check_keys(
    target: Target,
    prefix: str,
    expected: int,
    answered: int,
    connections: int,
    what: str,
    states: tuple[str, ...] = (),
) -> Check:
    """One key = one effect, from the app's idempotency records of this run's keys (`prefix`):
    exactly `expected` of them (the SQL rows of this kind: each one was made by one keyed
    request), between the 2xx answers wrk counted and one more per connection (wrk stops with
    requests in flight, which the server may still commit), no key twice, no two keys naming
    the same purchase (or cart), and with `states`, each naming a purchase in one of them."""
    try:
        ((records, keys, effects, named),) = target.sql(
            "SELECT count(*), count(DISTINCT r.key), "
            "count(DISTINCT coalesce(r.body::jsonb -> 'purchase' ->> 'id', r.body::jsonb -> 'cart' ->> 'id')), "
            "count(p.id) FILTER (WHERE p.fulfillment_state = ANY(%s)) "
            "FROM idempotency_records r LEFT JOIN purchases p ON p.token = r.body::jsonb -> 'purchase' ->> 'id' "
            "WHERE r.key LIKE %s",
            list(states),
            prefix + "%",
        )
    except psycopg.Error as error:
        return Check(False, f"idempotency records not read ({str(error).splitlines()[0]})", unchecked=True)
    problems = []
    if records != expected:
        problems.append(f"{expected} {what} in SQL")
    if not answered <= records <= answered + connections:
        problems.append(f"{answered} answered 2xx")
    if keys != records:
        problems.append(f"{records - keys} keys twice")
    if effects != records:
        problems.append(f"{effects} distinct {what} named")
    if states and named != records:
        problems.append(f"{named} name a purchase {'/'.join(states)}")
    text = f"{records} keys = {records} {what}" if not problems else f"{records} keys vs " + ", ".join(problems)
    return Check(not problems, text)


def _check_coupons(target: Target, deal_ids: list[int]) -> Check:
    """One coupon per unit of every claimed purchase of these deals, none on any other."""
    if target.kind == "rowlock":
        query = (
            "SELECT count(*) FILTER (WHERE r.state = 'fulfilled' AND c.n <> r.units), "
            "count(*) FILTER (WHERE r.state <> 'fulfilled' AND c.n > 0), coalesce(sum(c.n), 0) "
            "FROM rowlock_reservations r CROSS JOIN LATERAL "
            "(SELECT count(*) AS n FROM rowlock_coupons WHERE reservation_id = r.id) c WHERE r.deal_id = ANY(%s)"
        )
    else:
        query = (
            "SELECT count(*) FILTER (WHERE p.fulfillment_state = 'fulfilled' AND c.n <> p.units), "
            "count(*) FILTER (WHERE p.fulfillment_state <> 'fulfilled' AND c.n > 0), coalesce(sum(c.n), 0) "
            "FROM purchases p CROSS JOIN LATERAL "
            "(SELECT count(*) AS n FROM coupons WHERE purchase_id = p.id) c WHERE p.deal_id = ANY(%s)"
        )
    ((wrong, stray, coupons),) = target.sql(query, list(deal_ids))
    problems = [f"{wrong} claimed with a wrong count"] if wrong else []
    problems += [f"{stray} unclaimed with coupons"] if stray else []
    return Check(not problems, f"{coupons} coupons" + (" (" + ", ".join(problems) + ")" if problems else ""))


def _inventory_check(target: Target, *deal_ids: int) -> Check:
    args = [a for deal_id in deal_ids for a in ("--deal", str(deal_id))]
    done = flask_cli(["inventory", "check", *args], target.env, check=False)
    return Check(done.returncode == 0, f"inventory check exit {done.returncode}")


# -- scenario 1: the flash sale -------------------------------------------------------------


@_again_if_wrk_crashed
def flash_sale(target: Target, seconds: float, connections: int, tag: str = "", keyed: bool = False) -> Row:
    deal_id = target.create_deal(FLASH_UNITS, "Flash sale")
    prefix = _key_prefix(keyed)
    result = target.wrk(
        f"flash{'-keyed' if keyed else ''}-{target.kind}{tag}",
        "reserve.lua",
        seconds=seconds,
        connections=connections,
        env={"BENCH_DEAL_ID": str(deal_id), "BENCH_KEEP_OKS": str(FLASH_UNITS + 10), "BENCH_KEY_PREFIX": prefix},
    )
    verdict, text, last_created = _check_flash(target, deal_id, result, connections, prefix)
    sellout = ""
    if len(result.ok_ms) >= FLASH_UNITS:
        sellout = f"sold out {result.ok_ms[FLASH_UNITS - 1] / 1000:.2f} s after the first request"
    if last_created:
        sellout += f" (last hold's created_at {last_created:.2f} s after wrk started)"
    row = _row(
        "1k flash sale, keyed (1,000 units)" if keyed else "1 flash sale (1,000 units)",
        target,
        result,
        (200, 409),
        Check(verdict == "OK", f"{verdict} {text}"),
        f"{result.count(200)} x 200, {result.count(409)} x 409; {sellout}",
        id="flash_keyed" if keyed else "flash",
    )
    row.extra["deal_id"] = deal_id
    row.extra["verdict"] = verdict
    row.extra["sellout_s"] = result.ok_ms[FLASH_UNITS - 1] / 1000 if len(result.ok_ms) >= FLASH_UNITS else None
    return row


def _check_flash(
    target: Target, deal_id: int, result: WrkResult, connections: int, key_prefix: str = ""
) -> tuple[str, str, float | None]:
    """OK: exactly 1,000 units held, SQL and the live stock agree, and wrk saw no more than
    1,000 successes (keyed: and one key per hold). INCOMPLETE: fewer sold within the run (a slow
    machine), the stores still agree on every unit. FAIL: anything else."""
    answered = result.count(200)
    keys = None
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
        if key_prefix:
            keys = _check_keys(target, key_prefix, rows, answered, connections, "holds", ("reserved",))
            agree = agree and (keys.ok or keys.unchecked)
            parts.append(keys.text)
        last_created = to_epoch(last) - result.started_at if last else None
    # wrk stops with requests in flight: the server may commit up to one per connection that
    # wrk never counted, never the other way round.
    agree = agree and answered <= rows <= answered + connections
    seen = f"{answered} x 200" + (f" (+{rows - answered} answered after wrk stopped)" if rows > answered else "")
    if agree and rows == FLASH_UNITS and available == 0:
        verdict = "UNCHECKED" if keys and keys.unchecked else "OK"
    elif agree and rows < FLASH_UNITS:
        verdict = "INCOMPLETE (not sold out in the run)"
    else:
        verdict = "FAIL"
    return verdict, "; ".join([seen, *parts]), last_created


@_again_if_wrk_crashed
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
        id="soldout",
    )


# -- scenario 2: checkout -------------------------------------------------------------------


@_again_if_wrk_crashed
def reserve_only(target: Target, seconds: float, connections: int, tag: str = "", keyed: bool = False) -> Row:
    """Successful reserves on a deal that never sells out: each one a durable SQL row."""
    deal_id = target.create_deal(BIG_QUANTITY, "Never sells out")
    prefix = _key_prefix(keyed)
    result = target.wrk(
        f"reserve{'-keyed' if keyed else ''}-{target.kind}{tag}",
        "reserve.lua",
        seconds=seconds,
        connections=connections,
        env={"BENCH_DEAL_ID": str(deal_id), "BENCH_KEY_PREFIX": prefix},
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
        checks = [inventory]
        text = f"{answered} x 200, {rows} SQL rows, Redis reserved={reserved}, {inventory.text}"
        if keyed:
            keys = _check_keys(target, prefix, rows, answered, connections, "holds", ("reserved",))
            checks.append(keys)
            text += f", {keys.text}"
        verdict = _verdict(ok, *checks)
        check = Check(verdict == "OK", f"{verdict} {text}")
    row = _row(
        "2ak checkout: reserve only, keyed" if keyed else "2a checkout: reserve only",
        target,
        result,
        (200,),
        check,
        f"{result.per_second(answered):.0f} holds/s",
        id="reserve_keyed" if keyed else "reserve",
    )
    row.extra["holds_per_s"] = result.per_second(answered)
    return row


def _typed_p99s(result: WrkResult) -> tuple[dict, str]:
    """The reserves' and the claims' p99 (timed apart by the Lua script), for extra and notes."""
    reserve_p99, claim_p99 = result.p99_of("reserve"), result.p99_of("claim")
    extra = {"reserve_p99_ms": reserve_p99, "claim_p99_ms": claim_p99}
    if reserve_p99 is None or claim_p99 is None:
        return extra, "p99 by type n/a (no X-Request-ID echoed)"
    return extra, f"p99 reserve {reserve_p99:.1f} ms, claim {claim_p99:.1f} ms"


@_again_if_wrk_crashed
def checkout(target: Target, seconds: float, connections: int, tag: str = "", keyed: bool = False) -> Row:
    """Reserve, then claim what was reserved (wrk reads the id from the reserve's answer); keyed:
    a fresh key for the reserve and another for the claim."""
    deal_id = target.create_deal(BIG_QUANTITY, "Checkout")
    prefix = _key_prefix(keyed)
    result = target.wrk(
        f"checkout{'-keyed' if keyed else ''}-{target.kind}{tag}",
        "checkout.lua",
        seconds=seconds,
        connections=connections,
        env={"BENCH_DEAL_ID": str(deal_id), "BENCH_KEY_PREFIX": prefix},
    )
    reserves, claims = result.kinds.get("reserve_ok", 0), result.kinds.get("claim_ok", 0)
    coupons = _check_coupons(target, [deal_id])
    checks = [coupons]
    if target.kind == "rowlock":
        rows = dict(
            target.sql("SELECT state, count(*) FROM rowlock_reservations WHERE deal_id = %s GROUP BY state", deal_id)
        )
        ((quantity, available, reserved),) = target.sql(
            "SELECT quantity, available, reserved FROM rowlock_deals WHERE id = %s", deal_id
        )
        held, fulfilled = rows.get("reserved", 0), rows.get("fulfilled", 0)
        ok = (
            claims <= fulfilled <= claims + connections
            and reserves <= held + fulfilled <= reserves + connections
            and reserved == held + fulfilled
            and available + reserved == quantity
            and coupons.ok
        )
        text = f"{held + fulfilled} rows ({fulfilled} claimed, {coupons.text}), deal reserved={reserved}"
    else:
        rows = dict(
            target.sql(
                "SELECT fulfillment_state, count(*) FROM purchases WHERE deal_id = %s GROUP BY fulfillment_state",
                deal_id,
            )
        )
        held, fulfilled = rows.get("reserved", 0), rows.get("fulfilled", 0)
        inv = target.redis_inv(deal_id)
        live = (int(inv.get("reserved", -1)), int(inv.get("sold", -1)))
        inventory = _inventory_check(target, deal_id)
        checks.append(inventory)
        ok = (
            claims <= fulfilled <= claims + connections
            and reserves <= held + fulfilled <= reserves + connections
            and coupons.ok
            and live == (held, fulfilled)
            and inventory.ok
        )
        text = (
            f"{held + fulfilled} SQL rows ({fulfilled} claimed, {coupons.text}), "
            f"Redis reserved={live[0]} sold={live[1]}, {inventory.text}"
        )
        if keyed:
            states = ("reserved", "fulfilled")
            by_reserve = _check_keys(target, prefix + "r", held + fulfilled, reserves, connections, "holds", states)
            by_claim = _check_keys(target, prefix + "c", fulfilled, claims, connections, "claims", ("fulfilled",))
            checks += [by_reserve, by_claim]
            text += f"; reserve {by_reserve.text}; claim {by_claim.text}"
    extra, p99s = _typed_p99s(result)
    verdict = _verdict(ok, *checks)
    row = _row(
        "2bk checkout: reserve + claim, keyed" if keyed else "2b checkout: reserve + claim",
        target,
        result,
        (200,),
        Check(verdict == "OK", f"{verdict} {text}"),
        f"{result.per_second(reserves):.0f} reserves/s + {result.per_second(claims):.0f} claims/s; {p99s}",
        id="checkout_keyed" if keyed else "checkout",
    )
    row.extra.update(reserves_per_s=result.per_second(reserves), claims_per_s=result.per_second(claims), **extra)
    return row


@_again_if_wrk_crashed
def cart_checkout(target: Target, seconds: float, connections: int, tag: str = "") -> Row:
    """A checkout of a cart of one unit of each of CART_DEALS deals, keyed: reserve the cart
    (`POST /v1/carts/reserve`), then claim it (`PUT /v1/carts/:id/claim`), a fresh key each.
    A row saying n/a where the app has no carts yet."""
    if not target.has_carts():
        return Row(
            id="cart_keyed",
            scenario=CART_SCENARIO,
            system=target.label or target.kind,
            correctness="n/a (no POST /v1/carts/reserve: 404)",
            notes="runs once the app serves carts",
        )
    deal_ids = [target.create_deal(BIG_QUANTITY, f"Cart item {i + 1}") for i in range(CART_DEALS)]
    prefix = _key_prefix(True)
    result = target.wrk(
        f"cart-{target.kind}{tag}",
        "cart.lua",
        seconds=seconds,
        connections=connections,
        env={"BENCH_DEAL_IDS": ",".join(map(str, deal_ids)), "BENCH_KEY_PREFIX": prefix},
    )
    reserves, claims = result.kinds.get("reserve_ok", 0), result.kinds.get("claim_ok", 0)
    counts = {deal_id: {} for deal_id in deal_ids}
    for deal_id, state, n in target.sql(
        "SELECT deal_id, fulfillment_state, count(*) FROM purchases WHERE deal_id = ANY(%s) GROUP BY 1, 2",
        deal_ids,
    ):
        counts[deal_id][state] = n
    per_deal = {d: (c.get("reserved", 0), c.get("fulfilled", 0)) for d, c in counts.items()}
    held, fulfilled = per_deal[deal_ids[0]]
    # All or nothing: every deal has as many holds and as many claimed purchases as the others.
    same = len(set(per_deal.values())) == 1
    live = {}
    for deal_id in deal_ids:
        inv = target.redis_inv(deal_id)
        live[deal_id] = (int(inv.get("reserved", -1)), int(inv.get("sold", -1)))
    coupons = _check_coupons(target, deal_ids)
    inventory = _inventory_check(target, *deal_ids)
    by_reserve = _check_keys(target, prefix + "r", held + fulfilled, reserves, connections, "carts")
    by_claim = _check_keys(target, prefix + "c", fulfilled, claims, connections, "cart claims")
    ok = (
        same
        and claims <= fulfilled <= claims + connections
        and reserves <= held + fulfilled <= reserves + connections
        and live == per_deal
        and coupons.ok
        and inventory.ok
    )
    text = (
        f"{held + fulfilled} carts ({fulfilled} claimed), per deal SQL reserved/claimed "
        + ", ".join(f"{h}/{f}" for h, f in per_deal.values())
        + ", Redis "
        + ", ".join(f"{r}/{s}" for r, s in live.values())
        + f", {coupons.text}, {inventory.text}; reserve {by_reserve.text}; claim {by_claim.text}"
    )
    extra, p99s = _typed_p99s(result)
    verdict = _verdict(ok, coupons, inventory, by_reserve, by_claim)
    row = _row(
        CART_SCENARIO,
        target,
        result,
        (200,),
        Check(verdict == "OK", f"{verdict} {text}"),
        f"{result.per_second(reserves):.0f} carts reserved/s + {result.per_second(claims):.0f} claimed/s; {p99s}",
        id="cart_keyed",
    )
    row.extra.update(reserves_per_s=result.per_second(reserves), claims_per_s=result.per_second(claims), **extra)
    return row


@_again_if_wrk_crashed
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
        id="bare",
    )


# The keyed twins, as run_side_by_side calls them: (target, seconds, connections).


def flash_sale_keyed(target: Target, seconds: float, connections: int) -> Row:
    return flash_sale(target, seconds, connections, keyed=True)


def reserve_only_keyed(target: Target, seconds: float, connections: int) -> Row:
    return reserve_only(target, seconds, connections, keyed=True)


def checkout_keyed(target: Target, seconds: float, connections: int) -> Row:
    return checkout(target, seconds, connections, keyed=True)
