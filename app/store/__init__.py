"""The stores: SQL through SQLAlchemy, and the RQ queue. No domain rules and no Flask here.

db.py            engine, sessions, the per-deal fence
models.py        the tables
schema.py        migrations (Alembic): create or upgrade the schema
purchase_rows.py the write path's conditional statements
kept_answers.py  Idempotency-Key answers
ledger.py        the v3 ledger's numbering (sealing) and pages
reports.py       the read queries of the dashboard and the exports
figures.py       figures the worker publishes for /metrics, in Redis
queue.py         the RQ queue
"""
