"""index jobs on finished_at, for the admin dashboard's last 24 hours

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27 10:00:00

"""
from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade():
    # Building it reads every finished job once; PostgreSQL blocks writes to jobs meanwhile
    # (a second or two per million rows).
    op.create_index('ix_jobs_finished', 'jobs', ['finished_at'], unique=False,
                    sqlite_where=sa.text('finished_at IS NOT NULL'),
                    postgresql_where=sa.text('finished_at IS NOT NULL'))


def downgrade():
    op.drop_index('ix_jobs_finished', table_name='jobs')
