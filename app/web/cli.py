"""`flask --app app ...` commands: db, accounts, inventory, purchases."""

from __future__ import annotations

import csv
import sys
from datetime import datetime

import click
from flask import Flask, current_app
from flask.cli import AppGroup

from app.core.timeutil import iso
from app.inventory.purchases import effective_state
from app.store.models import utcnow
from app.store.schema import alembic_config, upgrade_schema
from app.web.services import services

db_cli = AppGroup("db", help="Create or upgrade the SQL schema (Alembic migrations).")
accounts_cli = AppGroup("accounts", help="Accounts and their API secrets.")
inventory_cli = AppGroup("inventory", help="Live stock in Redis against the records in SQL.")
purchases_cli = AppGroup("purchases", help="Purchase records.")


@db_cli.command("upgrade")
@click.argument("revision", default="head")
def db_upgrade(revision: str) -> None:
    """Create the schema, or bring it up to REVISION (default: the latest)."""
    upgrade_schema(current_app.config["DATABASE_URL"], revision)
    click.echo(f"schema at {revision}")


@db_cli.command("downgrade")
@click.argument("revision")
def db_downgrade(revision: str) -> None:
    from alembic import command

    command.downgrade(alembic_config(current_app.config["DATABASE_URL"]), revision)


@db_cli.command("revision")
@click.option("-m", "--message", required=True)
@click.option("--autogenerate", is_flag=True)
def db_revision(message: str, autogenerate: bool) -> None:
    """Write a new migration (compare the models with the database with --autogenerate)."""
    from alembic import command

    command.revision(alembic_config(current_app.config["DATABASE_URL"]), message=message, autogenerate=autogenerate)


@db_cli.command("current")
def db_current() -> None:
    from alembic import command

    command.current(alembic_config(current_app.config["DATABASE_URL"]))


@accounts_cli.command("create")
@click.argument("name")
def accounts_create(name: str) -> None:
    """Create an account; its API secret is printed alone on the last line (shown only once)."""
    account, secret = services().accounts.create(name)
    click.echo(f"created account {account.id} ({account.name}); its API secret:")
    click.echo(secret)


@accounts_cli.command("list")
def accounts_list() -> None:
    for account in services().accounts.list():
        click.echo(f"{account.id}\t{account.name}")


@accounts_cli.command("rotate-secret")
@click.argument("account_id", type=int)
def accounts_rotate(account_id: int) -> None:
    """Replace an account's secret; the new one is printed alone on the last line."""
    secret = services().accounts.rotate_secret(account_id)
    click.echo(f"new API secret for account {account_id} (the old one stops working within 10 s):")
    click.echo(secret)


def _deal_ids(deal: tuple[int, ...]) -> list[int]:
    return list(deal) if deal else services().deals.ids()


@inventory_cli.command("rebuild")
@click.option("--deal", type=int, multiple=True, help="Only this deal (repeatable).")
def inventory_rebuild(deal: tuple[int, ...]) -> None:
    """Rebuild live stock and holds in Redis from SQL."""
    deal_ids = _deal_ids(deal)
    rebuilder = services().rebuilder
    with click.progressbar(deal_ids, label="rebuilding", file=sys.stderr) as bar:
        for deal_id in bar:
            rebuilder.rebuild(deal_id, force=True)
    click.echo(f"rebuilt {len(deal_ids)} deals")


@inventory_cli.command("check")
@click.option("--deal", type=int, multiple=True, help="Only this deal (repeatable).")
def inventory_check(deal: tuple[int, ...]) -> None:
    """Report drift between Redis and SQL, deal by deal; exit status 1 if there is any."""
    deal_ids = _deal_ids(deal)
    rebuilder = services().rebuilder
    drifted = 0
    with click.progressbar(deal_ids, label="checking", file=sys.stderr) as bar:
        findings = [(deal_id, rebuilder.check(deal_id)) for deal_id in bar]
    for deal_id, drift in findings:
        if drift:
            drifted += 1
            for item in drift:
                click.echo(f"deal {deal_id}: {item.field} redis={item.redis} sql={item.sql}")
    click.echo(f"checked {len(deal_ids)} deals, {drifted} with drift")
    if drifted:
        raise SystemExit(1)


EXPORT_COLUMNS = (
    "id",
    "account_id",
    "source",
    "deal_id",
    "units",
    "price_per_unit",
    "currency",
    "total",
    "fulfillment_state",
    "payment_state",
    "user_id",
    "transaction_id",
    "email_address",
    "status",
    "created_at",
    "reserved_until",
    "fulfilled_at",
    "ended_at",
)


def _export_row(row, now: datetime) -> list:
    return [
        row.token,
        row.account_id,
        row.source,
        row.deal_id,
        row.units,
        row.price_per_unit,
        row.currency,
        "" if row.total is None else f"{row.total:f}",
        effective_state(row, now),
        row.payment_state,
        row.user_id,
        row.transaction_id,
        row.email_address,
        row.status,
        iso(row.created_at),
        iso(row.reserved_until),
        iso(row.fulfilled_at),
        iso(row.ended_at),
    ]


@purchases_cli.command("export")
@click.option("--account", "account_id", type=int, help="Only this account's purchases.")
@click.option("--source", type=click.Choice(["v1", "v3"]), help="Only purchases made through this API.")
@click.option("--since", type=click.DateTime(), help="Only purchases created at or after this UTC instant.")
@click.option(
    "--output", "-o", type=click.File("w", encoding="utf-8", lazy=True), default="-", help="CSV file (default stdout)."
)
@click.option("--batch-size", type=click.IntRange(1, 100_000), default=1000, show_default=True)
def purchases_export(account_id, source, since, output, batch_size) -> None:
    """Write purchases as CSV, oldest first, read in batches by id (a progress bar on stderr)."""
    now = utcnow()
    total, batches = services().reports.export(account_id=account_id, source=source, since=since, batch_size=batch_size)
    writer = csv.writer(output)
    writer.writerow(EXPORT_COLUMNS)
    written = 0
    with click.progressbar(length=total, label="exporting", file=sys.stderr) as bar:
        for rows in batches:
            writer.writerows(_export_row(row, now) for row in rows)
            written += len(rows)
            bar.update(len(rows))
    output.flush()
    click.echo(f"exported {written} purchases", err=True)


def init_app(app: Flask) -> None:
    app.cli.add_command(db_cli)
    app.cli.add_command(accounts_cli)
    app.cli.add_command(inventory_cli)
    app.cli.add_command(purchases_cli)
