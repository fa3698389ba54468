"""Uploaded files' records (the bytes are in the owner's workspace, service/workspace.py)."""
from __future__ import annotations

import sqlalchemy as sa

from service.errors import NotFound
from service.store import database
from service.store.jobs import as_dict
from service.store.schema import uploads


def _not_found(file_id: str) -> NotFound:
    return NotFound("No such file.", code="FILE_NOT_FOUND", details={"file_id": str(file_id)[:64]})


class UploadStore:
    def __init__(self, engine: sa.Engine):
        self.engine = engine

    def add(self, row: dict) -> dict:
        database.write(self.engine, lambda conn: conn.execute(uploads.insert().values(**row)))
        return dict(row)

    def get(self, file_id: str, owner_id: int | None) -> dict:
        """The file, if ``owner_id`` owns it (None: anyone's); FILE_NOT_FOUND otherwise, the
        same answer for another user's file as for one that does not exist."""
        query = sa.select(uploads).where(uploads.c.id == str(file_id))
        if owner_id is not None:
            query = query.where(uploads.c.owner_id == owner_id)
        with database.read(self.engine) as conn:
            row = conn.execute(query).first()
        if row is None:
            raise _not_found(file_id)
        return as_dict(row)

    def list(self, owner_id: int | None, page: int, page_size: int) -> tuple[list[dict], int]:
        query = sa.select(uploads)
        count = sa.select(sa.func.count()).select_from(uploads)
        if owner_id is not None:
            query, count = query.where(uploads.c.owner_id == owner_id), count.where(uploads.c.owner_id == owner_id)
        query = query.order_by(uploads.c.created_at.desc(), uploads.c.id).limit(page_size).offset((page - 1) * page_size)
        with database.read(self.engine) as conn:
            return [as_dict(r) for r in conn.execute(query)], conn.execute(count).scalar_one()

    def delete(self, file_id: str, owner_id: int | None) -> dict:
        def tx(conn):
            query = sa.select(uploads).where(uploads.c.id == str(file_id))
            if owner_id is not None:
                query = query.where(uploads.c.owner_id == owner_id)
            row = conn.execute(query).first()
            if row is None:
                raise _not_found(file_id)
            conn.execute(uploads.delete().where(uploads.c.id == row.id))
            return as_dict(row)
        return database.write(self.engine, tx)

    def bytes_used(self, owner_id: int) -> int:
        with database.read(self.engine) as conn:
            return int(conn.execute(sa.select(sa.func.coalesce(sa.func.sum(uploads.c.size), 0))
                                    .where(uploads.c.owner_id == owner_id)).scalar_one())

    def created_before(self, cutoff: float) -> list[dict]:
        with database.read(self.engine) as conn:
            return [as_dict(r) for r in conn.execute(sa.select(uploads).where(uploads.c.created_at < cutoff)
                                                     .order_by(uploads.c.created_at))]

    def exists(self, file_id: str) -> bool:
        with database.read(self.engine) as conn:
            return conn.execute(sa.select(uploads.c.id).where(uploads.c.id == str(file_id))).first() is not None
