"""Storefront features: sale windows and public deals, carts, the waitlist.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06
"""
import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    with op.batch_alter_table('deals', schema=None) as batch_op:
        batch_op.add_column(sa.Column('starts_at', sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column('ends_at', sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column('public', sa.Boolean(), nullable=False, server_default=sa.false()))

    op.create_table('carts',
    sa.Column('id', BigId, nullable=False),
    sa.Column('token', sa.String(length=40), nullable=False),
    sa.Column('account_id', BigId, nullable=False),
    sa.Column('user_id', sa.String(length=200), nullable=True),
    sa.Column('state', sa.String(length=10), nullable=False),
    sa.Column('reserved_until', sa.DateTime(), nullable=True),
    sa.Column('attempt', sa.String(length=40), nullable=True),
    sa.Column('items', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], name=op.f('fk_carts_account_id_accounts')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_carts')),
    sa.UniqueConstraint('token', name=op.f('uq_carts_token'))
    )
    with op.batch_alter_table('carts', schema=None) as batch_op:
        batch_op.create_index('ix_carts_account_id_id', ['account_id', 'id'], unique=False)
        batch_op.create_index('ix_carts_pending', ['created_at'], unique=False,
                              postgresql_where=sa.text("state = 'pending'"), sqlite_where=sa.text("state = 'pending'"))

    op.create_table('waitlist_entries',
    sa.Column('id', BigId, nullable=False),
    sa.Column('account_id', BigId, nullable=False),
    sa.Column('deal_id', BigId, nullable=False),
    sa.Column('user_id', sa.String(length=200), nullable=False),
    sa.Column('state', sa.String(length=10), nullable=False),
    sa.Column('purchase_token', sa.String(length=40), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('offered_at', sa.DateTime(), nullable=True),
    sa.Column('ended_at', sa.DateTime(), nullable=True),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], name=op.f('fk_waitlist_entries_account_id_accounts')),
    sa.ForeignKeyConstraint(['deal_id'], ['deals.id'], name=op.f('fk_waitlist_entries_deal_id_deals')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_waitlist_entries'))
    )
    with op.batch_alter_table('waitlist_entries', schema=None) as batch_op:
        batch_op.create_index('ix_waitlist_entries_deal_id_id', ['deal_id', 'id'], unique=False)
        batch_op.create_index('uq_waitlist_entries_waiting', ['deal_id', 'user_id'], unique=True,
                              postgresql_where=sa.text("state = 'waiting'"), sqlite_where=sa.text("state = 'waiting'"))

    with op.batch_alter_table('purchases', schema=None) as batch_op:
        batch_op.add_column(sa.Column('cart_id', sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column('waitlist_entry_id', BigId, nullable=True))
        batch_op.create_foreign_key(op.f('fk_purchases_cart_id_carts'), 'carts', ['cart_id'], ['token'])
        batch_op.create_foreign_key(op.f('fk_purchases_waitlist_entry_id_waitlist_entries'), 'waitlist_entries',
                                    ['waitlist_entry_id'], ['id'])
        batch_op.create_index('ix_purchases_cart_id', ['cart_id'], unique=False,
                              postgresql_where=sa.text('cart_id IS NOT NULL'), sqlite_where=sa.text('cart_id IS NOT NULL'))


def downgrade() -> None:
    with op.batch_alter_table('purchases', schema=None) as batch_op:
        batch_op.drop_index('ix_purchases_cart_id')
        batch_op.drop_constraint(op.f('fk_purchases_waitlist_entry_id_waitlist_entries'), type_='foreignkey')
        batch_op.drop_constraint(op.f('fk_purchases_cart_id_carts'), type_='foreignkey')
        batch_op.drop_column('waitlist_entry_id')
        batch_op.drop_column('cart_id')
    with op.batch_alter_table('waitlist_entries', schema=None) as batch_op:
        batch_op.drop_index('uq_waitlist_entries_waiting')
        batch_op.drop_index('ix_waitlist_entries_deal_id_id')
    op.drop_table('waitlist_entries')
    with op.batch_alter_table('carts', schema=None) as batch_op:
        batch_op.drop_index('ix_carts_pending')
        batch_op.drop_index('ix_carts_account_id_id')
    op.drop_table('carts')
    with op.batch_alter_table('deals', schema=None) as batch_op:
        batch_op.drop_column('public')
        batch_op.drop_column('ends_at')
        batch_op.drop_column('starts_at')
