"""Alembic migrations (run with `flask --app app db upgrade`)."""
