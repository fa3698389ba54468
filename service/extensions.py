"""Flask extensions, created unbound here and bound in create_app."""
from flask import current_app
from flask_limiter import Limiter
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy

from service.store import ratelimit as _ratelimit_storage  # noqa: F401 - registers ilgun+ storage schemes
from service.store.schema import metadata
from service.web.jwt_manager import CachingJWTManager
from service.web.ratelimit_keys import rate_limit_key

# Flask-SQLAlchemy is here for Flask-Migrate (Alembic) only; the job engine and stores use
# plain SQLAlchemy Core on the engine from service.store.database, with no Flask in them.
db = SQLAlchemy(metadata=metadata)
migrate = Migrate()
jwt = CachingJWTManager()


def _count_breach(limit) -> None:
    """on_breach: counts refused requests for /metrics (imported late: that module imports this one)."""
    from service.web.metrics import count_rate_limit_breach
    count_rate_limit_breach(limit)


# The default limit is read from the current app's config at request time: Flask-Limiter
# freezes limits given in config at the first init_app in a process.
limiter = Limiter(key_func=rate_limit_key, default_limits=[lambda: current_app.config["RATELIMIT_DEFAULT"]],
                  on_breach=_count_breach)
