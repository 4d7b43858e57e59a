"""Integration as a new user meets it, against the Procfile's gunicorn and RQ worker over
PostgreSQL (OpenTelemetry traces on, exported to the processes' stdout):

* a Python client generated from the live /openapi.json by openapi-python-client (PyPI), at
  test time, runs deal -> reserve -> claim -> release -> v3 list as-is;
* every `curl` line of a `sh` block in README.md and docs/*.md runs as pasted, with the shell
  variables docs/integration.md lists set to fresh objects, and gets a 2xx (or the status
  written after a `#` on its line);
* one trace goes from a claim on the web process to its webhook delivery on the worker process.
"""

from __future__ import annotations

import importlib
import json
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from app.devtools.embedded import ROOT
from tests.support.receiver import Receiver
from tests.support.servers import require_postgres, unavailable, wait_for
from tests.support.stack import Stack

CLIENT_PACKAGE = "offer_engine_client"


@pytest.fixture(scope="module")
def stack():
    require_postgres()
    stack = Stack(
        web_concurrency=2,
        sweep_seconds=1,
        extra_env={
            "WEBHOOK_ALLOW_PRIVATE_URLS": "true",  # the webhook receivers run on 127.0.0.1
            "WEBHOOK_RETRY_BASE_SECONDS": "1",
            "OTEL_TRACES_EXPORTER": "console",
            "OTEL_BSP_SCHEDULE_DELAY": "200",  # ms: spans reach the logs soon after they end
        },
    ).start(workers=1)
    yield stack
    stack.stop()


# -- a generated client -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client_package(stack, tmp_path_factory):
    """The package openapi-python-client generates from the running service's /openapi.json."""
    generator = Path(sys.executable).parent / "openapi-python-client"
    if not generator.exists():
        unavailable("openapi-python-client is not installed (the `test` extra)")
    work = tmp_path_factory.mktemp("generated")
    spec = work / "openapi.json"
    with stack.session() as session:
        spec.write_text(session.get(f"{stack.url}/openapi.json", timeout=10).text)
    config = work / "config.json"
    config.write_text(json.dumps({"post_hooks": []}))  # no formatter run over the output
    result = subprocess.run(
        [str(generator), "generate", "--path", str(spec), "--config", str(config), "--meta", "none"]
        + ["--output-path", str(work / CLIENT_PACKAGE)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Warning" not in result.stdout + result.stderr, result.stdout + result.stderr  # nothing skipped
    sys.path.insert(0, str(work))
    try:
        yield importlib.import_module(CLIENT_PACKAGE)
    finally:
        sys.path.remove(str(work))
        for name in [n for n in sys.modules if n == CLIENT_PACKAGE or n.startswith(CLIENT_PACKAGE + ".")]:
            del sys.modules[name]


def test_a_generated_client_runs_the_checkout_flow_as_is(stack, client_package):
    def module(name: str):
        return importlib.import_module(f"{CLIENT_PACKAGE}.{name}")

    models = module("models")
    client = client_package.AuthenticatedClient(base_url=stack.url, token=stack.secret, raise_on_unexpected_status=True)
    with client:
        run_the_flow(client, models, module)


def run_the_flow(client, models, module) -> None:
    v1 = "api.v1."
    created = module(v1 + "post_v1_deals").sync(
        client=client, body=models.DealCreateArgs(title="Generated lamp", price_per_unit=1999, quantity=3)
    )
    assert isinstance(created, models.DealEnvelope), created
    deal = created.deal
    assert (deal.quantity, deal.available, deal.sold_out) == (3, 3, False)

    reserve = module(v1 + "post_v1_purchases_reserve")
    held = reserve.sync(client=client, body=models.ReserveArgs(deal_id=deal.id, num_bought=2))
    assert isinstance(held, models.PurchaseEnvelope), held
    assert held.purchase.fulfillment_state == "reserved"
    assert held.purchase.reserved_until.tzinfo is not None  # an instant, parsed
    assert held.purchase.fulfilled_at is None and held.purchase.user_id is None

    claimed = module(v1 + "put_v1_purchases_purchase_id_claim").sync(
        purchase_id=held.purchase.id, client=client, body=models.ClaimArgs(user_id="generated-user")
    )
    assert isinstance(claimed, models.PurchaseEnvelope), claimed
    assert claimed.purchase.fulfillment_state == "fulfilled"
    assert len(claimed.purchase.coupons) == 2 and claimed.purchase.total_price == 2 * 1999

    other = reserve.sync(client=client, body=models.ReserveArgs(deal_id=deal.id, num_bought=1)).purchase
    released = module(v1 + "put_v1_purchases_purchase_id_release").sync(
        purchase_id=other.id, client=client, body=models.NoArgs()
    )
    assert released.purchase.fulfillment_state == "released"

    # An error is a documented body, parsed too.
    refused = reserve.sync_detailed(client=client, body=models.ReserveArgs(deal_id=deal.id, num_bought=2))
    assert refused.status_code == 409
    assert isinstance(refused.parsed, models.V1ErrorBody)
    assert refused.parsed.error == "sold_out"

    shown = module(v1 + "get_v1_deals_deal_id").sync(deal_id=deal.id, client=client).deal
    assert (shown.available, shown.reserved, shown.sold) == (1, 0, 2)

    ledger = module("api.v3.get_v3_purchases").sync(client=client)
    assert isinstance(ledger, models.V3PurchasePage), ledger
    [entry] = [p for p in ledger.purchases if p.transaction_id == held.purchase.id]
    assert entry.products[0].quantity == 2


# -- the documents' curl lines ------------------------------------------------------------------------

DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
#: The shell variables the lines may use (docs/integration.md's table), and $RANDOM.
VARIABLES = {"URL", "SECRET", "DEAL_ID", "PURCHASE_ID", "WEBHOOK_ID", "LEDGER_ID", "RANDOM"}
EXPECTED = re.compile(r"\s#\s*(\d{3})\b[^'\"]*$")


def curl_lines() -> list:
    """(where, command) for every curl line of a sh block, its `\\` continuations joined."""
    found = []
    for document in DOCUMENTS:
        language = None  # inside a fenced block: its language ("" for none)
        lines = document.read_text().splitlines()
        number = 0
        while number < len(lines):
            line = lines[number]
            number += 1
            fence = line.strip()
            if fence.startswith("```"):
                language = fence[3:].strip() if language is None else None
                continue
            if language not in ("sh", "bash", "shell") or not line.lstrip().startswith("curl "):
                continue
            start = number
            command = line.strip()
            while command.endswith("\\") and number < len(lines):
                command = command[:-1] + " " + lines[number].strip()
                number += 1
            found.append(pytest.param(command, id=f"{document.relative_to(ROOT)}:{start}"))
    return found


CURL_LINES = curl_lines()


def test_the_documents_have_curl_lines_for_every_integration():
    commands = [param.values[0] for param in CURL_LINES]
    assert len(commands) >= 15
    assert any("/v1/webhooks" in c and "README" in p.id for c, p in zip(commands, CURL_LINES, strict=True))
    for needle in ("-d deal_id=", "/v3/purchases", '"Content-Type: application/json"'):
        assert any(needle in c for c in commands), needle


def fresh_variables(stack, command: str) -> dict[str, str]:
    """New objects for the variables the command uses: a deal priced 1999 with units left, a
    hold of it, a webhook, a v3 purchase."""
    variables = {"URL": stack.url, "SECRET": stack.secret}
    with stack.session() as api:
        _create(stack, api, command, variables)
    return variables


def _create(stack, api, command: str, variables: dict[str, str]) -> None:
    if "$DEAL_ID" in command or "$PURCHASE_ID" in command:
        deal = api.post(f"{stack.url}/v1/deals", json={"title": "Doc lamp", "price_per_unit": 1999, "quantity": 100})
        variables["DEAL_ID"] = str(deal.json()["deal"]["id"])
        held = api.post(
            f"{stack.url}/v1/purchases/reserve", json={"deal_id": int(variables["DEAL_ID"]), "num_bought": 1}
        )
        variables["PURCHASE_ID"] = held.json()["purchase"]["id"]
    if "$WEBHOOK_ID" in command:
        hook = api.post(
            f"{stack.url}/v1/webhooks", json={"url": "https://example.com/doc", "events": ["deal.sold_out"]}
        )
        variables["WEBHOOK_ID"] = str(hook.json()["webhook"]["id"])
    if "$LEDGER_ID" in command:
        made = api.post(
            f"{stack.url}/v3/purchases",
            json={"purchase": {"transaction_id": f"doc-{uuid.uuid4().hex}", "email_address": "doc@example.com"}},
        )
        variables["LEDGER_ID"] = str(made.json()["id"])


@pytest.mark.parametrize("command", CURL_LINES)
def test_each_curl_line_works_when_pasted(stack, command, tmp_path):
    if shutil.which("curl") is None:
        unavailable("curl is not installed (Debian package curl)")
    used = set(re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", command))
    assert used <= VARIABLES, f"undocumented variables {used - VARIABLES}: list them in docs/integration.md"
    expected = EXPECTED.search(command)
    out = tmp_path / "body"
    # The line runs in bash as pasted; `curl` is wrapped only to capture the status and body.
    script = f'curl() {{ command curl -sS --max-time 30 "$@" -o "{out}" -w "%{{http_code}}"; }}\n{command}\n'
    env = {"PATH": "/usr/bin:/bin", **fresh_variables(stack, command)}
    # In the test's own directory: a line that saves a file (curl -o openapi.json) leaves the
    # working tree clean.
    result = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    body = out.read_text(errors="replace") if out.exists() else ""
    assert result.returncode == 0, f"{command}\n{result.stderr}"
    status = int(result.stdout.strip()[-3:])
    if expected:
        assert status == int(expected.group(1)), f"{command}\n{status} {body[:500]}"
    else:
        assert 200 <= status < 300, f"{command}\n{status} {body[:500]}"
    if body:
        json.loads(body)  # every answer is JSON, errors included


# -- one trace across the two processes ---------------------------------------------------------------


def test_a_claims_trace_continues_in_the_workers_delivery(stack):
    with stack.session() as api:
        claim_in_a_trace(stack, api)


def claim_in_a_trace(stack, api) -> None:
    deal = api.post(f"{stack.url}/v1/deals", json={"title": "Traced", "price_per_unit": 100, "quantity": 3}).json()
    trace_id = uuid.uuid4().hex
    with Receiver() as receiver:
        api.post(f"{stack.url}/v1/webhooks", json={"url": receiver.url, "events": ["purchase.fulfilled"]})
        held = api.post(f"{stack.url}/v1/purchases/reserve", json={"deal_id": deal["deal"]["id"], "num_bought": 1})
        claimed = api.put(
            f"{stack.url}/v1/purchases/{held.json()['purchase']['id']}/claim",
            json={"user_id": "traced-user"},
            headers={"traceparent": f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01"},
        )
        assert claimed.status_code == 200
        wait_for(lambda: receiver.received, 30, "the delivery")

    def span(log: str, name: str) -> bool:
        return (
            re.search(rf'"name": "{re.escape(name)}",\s*"context": \{{\s*"trace_id": "0x{trace_id}"', log) is not None
        )

    wait_for(
        lambda: span(stack.workers[0].log_path.read_text(errors="replace"), "workers.jobs.deliver_webhook"),
        30,
        "the worker's delivery span, in the claim's trace",
    )
    wait_for(
        lambda: re.search(rf'"trace_id": "0x{trace_id}"', stack.web.log_path.read_text(errors="replace")),
        30,
        "the web's claim span",
    )
