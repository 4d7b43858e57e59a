"""Initial schema: accounts, deals, purchases (reservations included), items, coupons,
idempotency records. Times are stored as naive UTC (see app/store/models.py UTCDateTime).

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""
import sqlalchemy as sa
from alembic import op

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('accounts',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('secret_hash', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_accounts')),
    sa.UniqueConstraint('secret_hash', name=op.f('uq_accounts_secret_hash'))
    )
    op.create_table('deals',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('account_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('title', sa.String(length=500), nullable=False),
    sa.Column('sku', sa.String(length=200), nullable=True),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('price_per_unit', sa.BigInteger(), nullable=False),
    sa.Column('quantity', sa.BigInteger(), nullable=False),
    sa.Column('max_per_purchase', sa.Integer(), nullable=True),
    sa.Column('max_per_user', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], name=op.f('fk_deals_account_id_accounts')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_deals')),
    sa.UniqueConstraint('account_id', 'sku', name=op.f('uq_deals_account_id_sku'))
    )
    with op.batch_alter_table('deals', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_deals_account_id'), ['account_id'], unique=False)

    op.create_table('idempotency_records',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('account_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('key', sa.String(length=255), nullable=False),
    sa.Column('fingerprint', sa.String(length=64), nullable=False),
    sa.Column('status_code', sa.Integer(), nullable=False),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], name=op.f('fk_idempotency_records_account_id_accounts')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_idempotency_records')),
    sa.UniqueConstraint('account_id', 'key', name=op.f('uq_idempotency_records_account_id_key'))
    )
    with op.batch_alter_table('idempotency_records', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_idempotency_records_created_at'), ['created_at'], unique=False)

    op.create_table('purchases',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('token', sa.String(length=40), nullable=False),
    sa.Column('account_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('deal_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('source', sa.String(length=2), nullable=False),
    sa.Column('units', sa.BigInteger(), nullable=False),
    sa.Column('price_per_unit', sa.BigInteger(), nullable=True),
    sa.Column('user_id', sa.String(length=200), nullable=True),
    sa.Column('credit_card_id', sa.String(length=200), nullable=True),
    sa.Column('session_id', sa.String(length=200), nullable=True),
    sa.Column('fulfillment_state', sa.String(length=10), nullable=False),
    sa.Column('payment_state', sa.String(length=10), nullable=False),
    sa.Column('reserved_at', sa.DateTime(), nullable=True),
    sa.Column('reserved_until', sa.DateTime(), nullable=True),
    sa.Column('fulfilled_at', sa.DateTime(), nullable=True),
    sa.Column('ended_at', sa.DateTime(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('transaction_id', sa.String(length=200), nullable=True),
    sa.Column('status', sa.String(length=50), nullable=True),
    sa.Column('email_address', sa.String(length=320), nullable=True),
    sa.Column('currency', sa.String(length=3), nullable=True),
    sa.Column('transaction_time', sa.DateTime(), nullable=True),
    sa.Column('subtotal', sa.Numeric(precision=20, scale=4), nullable=True),
    sa.Column('shipping', sa.Numeric(precision=20, scale=4), nullable=True),
    sa.Column('discount', sa.Numeric(precision=20, scale=4), nullable=True),
    sa.Column('tax', sa.Numeric(precision=20, scale=4), nullable=True),
    sa.Column('total', sa.Numeric(precision=20, scale=4), nullable=True),
    sa.Column('request_fingerprint', sa.String(length=64), nullable=True),
    sa.Column('ledger_seq', sa.BigInteger(), nullable=True),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], name=op.f('fk_purchases_account_id_accounts')),
    sa.ForeignKeyConstraint(['deal_id'], ['deals.id'], name=op.f('fk_purchases_deal_id_deals')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_purchases')),
    sa.UniqueConstraint('account_id', 'ledger_seq', name=op.f('uq_purchases_account_id_ledger_seq')),
    sa.UniqueConstraint('account_id', 'transaction_id', name=op.f('uq_purchases_account_id_transaction_id')),
    sa.UniqueConstraint('token', name=op.f('uq_purchases_token'))
    )
    with op.batch_alter_table('purchases', schema=None) as batch_op:
        batch_op.create_index('ix_purchases_account_id_id', ['account_id', 'id'], unique=False)
        batch_op.create_index('ix_purchases_deal_id_fulfillment_state', ['deal_id', 'fulfillment_state'], unique=False)
        batch_op.create_index('ix_purchases_live_reservations', ['deal_id', 'reserved_until'], unique=False, postgresql_where=sa.text("fulfillment_state = 'reserved'"), sqlite_where=sa.text("fulfillment_state = 'reserved'"))
        batch_op.create_index('ix_purchases_reserved_until', ['reserved_until'], unique=False, postgresql_where=sa.text("fulfillment_state = 'reserved'"), sqlite_where=sa.text("fulfillment_state = 'reserved'"))
        batch_op.create_index('ix_purchases_unsequenced', ['account_id', 'id'], unique=False, postgresql_where=sa.text("ledger_seq IS NULL AND fulfillment_state = 'fulfilled'"), sqlite_where=sa.text("ledger_seq IS NULL AND fulfillment_state = 'fulfilled'"))

    op.create_table('coupons',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('purchase_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('code', sa.String(length=40), nullable=False),
    sa.ForeignKeyConstraint(['purchase_id'], ['purchases.id'], name=op.f('fk_coupons_purchase_id_purchases'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_coupons')),
    sa.UniqueConstraint('code', name=op.f('uq_coupons_code'))
    )
    with op.batch_alter_table('coupons', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_coupons_purchase_id'), ['purchase_id'], unique=False)

    op.create_table('purchase_items',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('purchase_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=500), nullable=True),
    sa.Column('sku', sa.String(length=200), nullable=False),
    sa.Column('unit_price', sa.Numeric(precision=20, scale=4), nullable=True),
    sa.Column('quantity', sa.BigInteger(), nullable=False),
    sa.Column('deal_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.ForeignKeyConstraint(['deal_id'], ['deals.id'], name=op.f('fk_purchase_items_deal_id_deals')),
    sa.ForeignKeyConstraint(['purchase_id'], ['purchases.id'], name=op.f('fk_purchase_items_purchase_id_purchases'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_purchase_items'))
    )
    with op.batch_alter_table('purchase_items', schema=None) as batch_op:
        batch_op.create_index('ix_purchase_items_deal_id', ['deal_id'], unique=False, postgresql_where=sa.text('deal_id IS NOT NULL'), sqlite_where=sa.text('deal_id IS NOT NULL'))
        batch_op.create_index(batch_op.f('ix_purchase_items_purchase_id'), ['purchase_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('purchase_items', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_purchase_items_purchase_id'))
        batch_op.drop_index('ix_purchase_items_deal_id', postgresql_where=sa.text('deal_id IS NOT NULL'), sqlite_where=sa.text('deal_id IS NOT NULL'))

    op.drop_table('purchase_items')
    with op.batch_alter_table('coupons', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_coupons_purchase_id'))

    op.drop_table('coupons')
    with op.batch_alter_table('purchases', schema=None) as batch_op:
        batch_op.drop_index('ix_purchases_unsequenced', postgresql_where=sa.text("ledger_seq IS NULL AND fulfillment_state = 'fulfilled'"), sqlite_where=sa.text("ledger_seq IS NULL AND fulfillment_state = 'fulfilled'"))
        batch_op.drop_index('ix_purchases_reserved_until', postgresql_where=sa.text("fulfillment_state = 'reserved'"), sqlite_where=sa.text("fulfillment_state = 'reserved'"))
        batch_op.drop_index('ix_purchases_live_reservations', postgresql_where=sa.text("fulfillment_state = 'reserved'"), sqlite_where=sa.text("fulfillment_state = 'reserved'"))
        batch_op.drop_index('ix_purchases_deal_id_fulfillment_state')
        batch_op.drop_index('ix_purchases_account_id_id')

    op.drop_table('purchases')
    with op.batch_alter_table('idempotency_records', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_idempotency_records_created_at'))

    op.drop_table('idempotency_records')
    with op.batch_alter_table('deals', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_deals_account_id'))

    op.drop_table('deals')
    op.drop_table('accounts')
