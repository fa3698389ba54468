"""Schema presence check for readiness probes."""
import sqlalchemy as sa

from service.store import database


def schema_ready(engine: sa.Engine) -> bool:
    with database.read(engine) as conn:
        names = set(sa.inspect(conn).get_table_names())
    return {"jobs", "users", "alembic_version"} <= names
