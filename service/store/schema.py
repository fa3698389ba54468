"""Database schema: plain SQLAlchemy Core tables, free of Flask.

Times are stored as epoch seconds (float): portable across SQLite and PostgreSQL and
cheap to compare in the claim and sweep queries. Alembic migrations in
``service/migrations`` are generated from and checked against this metadata.
"""
import sqlalchemy as sa

naming = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
metadata = sa.MetaData(naming_convention=naming)

users = sa.Table(
    "users", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("username", sa.String(64), nullable=False, unique=True),
    sa.Column("email", sa.String(255), nullable=True),
    sa.Column("password_hash", sa.String(255), nullable=False),
    sa.Column("role", sa.String(16), nullable=False, server_default="user"),
    sa.Column("is_active", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("last_seen_at", sa.Float, nullable=True),
    # AUTOINCREMENT: SQLite must never hand a deleted user's id to a new user, or the
    # deleted user's unexpired tokens would sign in as the new one.
    sqlite_autoincrement=True,
)

jobs = sa.Table(
    "jobs", metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("owner_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("params", sa.JSON, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("priority", sa.Integer, nullable=False, server_default="0"),
    sa.Column("progress", sa.Float, nullable=False, server_default="0"),
    sa.Column("message", sa.String(500), nullable=True),
    sa.Column("attempt", sa.Integer, nullable=False, server_default="0"),
    sa.Column("max_attempts", sa.Integer, nullable=False, server_default="3"),
    sa.Column("run_token", sa.String(36), nullable=True),   # changes on every claim: fences stale executions
    sa.Column("lease_owner", sa.String(128), nullable=True),
    sa.Column("lease_expires_at", sa.Float, nullable=True),
    sa.Column("cancel_requested", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("run_after", sa.Float, nullable=False),        # backoff: not claimable before this time
    sa.Column("timeout_seconds", sa.Float, nullable=True),
    sa.Column("idempotency_key", sa.String(200), nullable=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("started_at", sa.Float, nullable=True),
    sa.Column("finished_at", sa.Float, nullable=True),
    sa.Column("result", sa.JSON, nullable=True),
    sa.Column("error_code", sa.String(64), nullable=True),
    sa.Column("error_message", sa.Text, nullable=True),
    sa.Column("log_dropped", sa.Integer, nullable=False, server_default="0"),  # job_logs lines trimmed away
    sa.UniqueConstraint("owner_id", "idempotency_key", name="uq_jobs_owner_idempotency"),
)
# Partial indexes: they hold only queued or running rows, so the claim, the limit counts and the
# lease sweep stay index searches however many finished jobs pile up. (A plain index led by
# status is not enough: after ANALYZE sees a million 'succeeded' rows, SQLite judges status
# unselective and scans the table.)
_QUEUED = jobs.c.status == "queued"
_RUNNING = jobs.c.status == "running"
sa.Index("ix_jobs_queued", jobs.c.priority.desc(), jobs.c.created_at, jobs.c.id,
         sqlite_where=_QUEUED, postgresql_where=_QUEUED)
sa.Index("ix_jobs_queued_owner", jobs.c.owner_id, jobs.c.kind,
         sqlite_where=_QUEUED, postgresql_where=_QUEUED)
sa.Index("ix_jobs_running", jobs.c.kind, jobs.c.owner_id,
         sqlite_where=_RUNNING, postgresql_where=_RUNNING)
sa.Index("ix_jobs_lease", jobs.c.lease_expires_at, sqlite_where=_RUNNING, postgresql_where=_RUNNING)
sa.Index("ix_jobs_owner_created", jobs.c.owner_id, jobs.c.created_at)
sa.Index("ix_jobs_kind_finished", jobs.c.kind, jobs.c.finished_at)
# The admin dashboard counts the jobs that finished in the last 24 hours, of every kind: a range
# on finished_at alone, which ix_jobs_kind_finished serves only through SQLite's skip-scan (given
# the right statistics) and PostgreSQL not at all (it scans the table). Partial, so the queued
# jobs every submit inserts (finished_at NULL) are not written to it.
_FINISHED = jobs.c.finished_at.isnot(None)
sa.Index("ix_jobs_finished", jobs.c.finished_at, sqlite_where=_FINISHED, postgresql_where=_FINISHED)

job_files = sa.Table(
    "job_files", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("job_id", sa.String(36), sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("content_type", sa.String(255), nullable=True),
    sa.Column("sha256", sa.String(64), nullable=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.UniqueConstraint("job_id", "name", name="uq_job_files_job_name"),
)

# The last lines each job wrote (service/engine/job_log.py); id orders them across attempts
# and hosts and is the ``seq`` readers page on.
job_logs = sa.Table(
    "job_logs", metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("job_id", sa.String(36), sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("level", sa.String(10), nullable=False),
    sa.Column("message", sa.Text, nullable=False),
)
sa.Index("ix_job_logs_job_id", job_logs.c.job_id, job_logs.c.id)

# Files users uploaded for document jobs (POST /api/v1/files); the bytes live in the owner's
# workspace under uploads/<id>, and file_type is what their content is (service/filetypes.py).
uploads = sa.Table(
    "uploads", metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("owner_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("file_type", sa.String(16), nullable=False),
    sa.Column("content_type", sa.String(255), nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)
sa.Index("ix_uploads_owner_created", uploads.c.owner_id, uploads.c.created_at)

workers = sa.Table(
    "workers", metadata,
    sa.Column("id", sa.String(128), primary_key=True),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("slots", sa.Integer, nullable=False),
    sa.Column("running", sa.JSON, nullable=True),          # job ids per slot, for the dashboard
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("heartbeat_at", sa.Float, nullable=False),
)

kind_stats = sa.Table(
    "kind_stats", metadata,
    sa.Column("kind", sa.String(32), primary_key=True),
    sa.Column("avg_seconds", sa.Float, nullable=False),      # exponentially weighted run time, for ETAs
    sa.Column("samples", sa.Integer, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)

token_blocklist = sa.Table(
    "token_blocklist", metadata,
    sa.Column("jti", sa.String(64), primary_key=True),
    sa.Column("user_id", sa.Integer, nullable=True),
    sa.Column("token_type", sa.String(16), nullable=False),
    sa.Column("revoked_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
)

rate_limits = sa.Table(
    "rate_limits", metadata,
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("count", sa.Integer, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
)
sa.Index("ix_rate_limits_expires", rate_limits.c.expires_at)
