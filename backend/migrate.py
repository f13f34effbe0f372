"""Migrations run inside a process of ours (`python -m backend serve --migrate`, `make run`).

`alembic upgrade head` is its own process, and with the embedded PostgreSQL it starts the
server and stops it again, only for `serve` to start it once more: seconds of a developer's
first `make run`. Here the server is started once, migrated through its URL, and handed on to
the app still running. Production keeps migrations a release step (README, Deploy): the
production command never passes `--migrate`.
"""

from __future__ import annotations

from pathlib import Path

from backend.config import DatabaseSettings
from backend.db import EmbeddedPostgres, embedded_data_dir

# Where backend/migrations/env.py looks for a URL its caller hands over.
DATABASE_URL_ATTRIBUTE = "database_url"
_PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"  # [tool.alembic]


def upgrade_to_head(settings: DatabaseSettings) -> None:
    """Apply every migration to the database `settings` name, as `alembic upgrade head` would.
    With DATABASE_URL unset, the embedded PostgreSQL it starts is left running: this process
    holds it until it exits."""
    from alembic import command
    from alembic.config import Config

    url = settings.database_url_unpooled or settings.database_url  # as env.py chooses
    if url is None:
        embedded = EmbeddedPostgres(embedded_data_dir(settings))  # stopped by the last one out
        url = embedded.url()
    config = Config(toml_file=str(_PYPROJECT))
    config.attributes[DATABASE_URL_ATTRIBUTE] = url
    command.upgrade(config, "head")
