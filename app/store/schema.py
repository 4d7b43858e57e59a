"""The SQL schema is made by migrations (Alembic, in migrations/), never by `create_all`."""

from __future__ import annotations

from pathlib import Path


def alembic_config(url: str):
    from alembic.config import Config

    import migrations

    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    # ConfigParser interpolates %; a URL-encoded password must survive it.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade_schema(url: str, revision: str = "head") -> None:
    """Create the schema at `url`, or bring it up to `revision`."""
    from alembic import command

    command.upgrade(alembic_config(url), revision)
