"""Users and the revoked-token blocklist."""
from __future__ import annotations

import time

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from werkzeug.security import check_password_hash, generate_password_hash

from service.errors import AlreadyExists, AuthFailed, NotFound
from service.store import database, rawsql
from service.store.schema import token_blocklist, users

# Checked against when the username does not exist, so a login takes as long for an unknown
# user as for a wrong password (no username probing by timing).
_DUMMY_HASH = generate_password_hash("not-a-real-password")

_USER_COLUMNS = ", ".join(c.name for c in users.c)
_TOKEN_OWNER = (f"SELECT {_USER_COLUMNS}, EXISTS (SELECT 1 FROM token_blocklist WHERE jti = :jti) AS revoked "
                "FROM users WHERE id = :user_id")
_REVOKED = "SELECT 1 FROM token_blocklist WHERE jti = :jti"


def _public(row) -> dict:
    d = dict(row._mapping)
    d.pop("password_hash", None)
    return d


class UserStore:
    def __init__(self, engine: sa.Engine, clock=time.time):
        self.engine = engine
        self.clock = clock

    def create(self, username: str, password: str, *, email: str | None = None, role: str = "user") -> dict:
        def tx(conn):
            exists = conn.execute(sa.select(users.c.id).where(
                sa.func.lower(users.c.username) == username.lower())).first()
            if exists:
                raise AlreadyExists("That username is taken.", code="USERNAME_TAKEN")
            res = conn.execute(users.insert().values(
                username=username, email=email, role=role, is_active=True, created_at=self.clock(),
                password_hash=generate_password_hash(password)))
            return _public(conn.execute(sa.select(users).where(users.c.id == res.inserted_primary_key[0])).one())
        try:
            return database.write(self.engine, tx)
        except IntegrityError:  # a racing registration of the same name on another worker
            raise AlreadyExists("That username is taken.", code="USERNAME_TAKEN") from None

    def set_password(self, username: str, password: str, role: str | None = None) -> None:
        values = {"password_hash": generate_password_hash(password)}
        if role:
            values["role"] = role
        n = database.write(self.engine, lambda conn: conn.execute(
            users.update().where(users.c.username == username).values(**values)).rowcount)
        if n == 0:
            raise NotFound("No such user.", code="USER_NOT_FOUND")

    def authenticate(self, username: str, password: str) -> dict:
        with database.read(self.engine) as conn:
            row = conn.execute(sa.select(users).where(
                sa.func.lower(users.c.username) == username.lower())).first()
        if row is None:
            check_password_hash(_DUMMY_HASH, password)
            raise AuthFailed()
        if not check_password_hash(row.password_hash, password) or not row.is_active:
            raise AuthFailed()
        database.write(self.engine, lambda conn: conn.execute(
            users.update().where(users.c.id == row.id).values(last_seen_at=self.clock())))
        return _public(row)

    def get(self, user_id: int) -> dict | None:
        with database.read(self.engine) as conn:
            row = conn.execute(sa.select(users).where(users.c.id == user_id)).first()
        return _public(row) if row is not None else None

    def by_username(self, username: str) -> dict | None:
        with database.read(self.engine) as conn:
            row = conn.execute(sa.select(users).where(users.c.username == username)).first()
        return _public(row) if row is not None else None

    def counts(self, active_since: float) -> dict:
        with database.read(self.engine) as conn:
            total = conn.execute(sa.select(sa.func.count()).select_from(users)).scalar_one()
            active = conn.execute(sa.select(sa.func.count()).select_from(users)
                                  .where(users.c.last_seen_at >= active_since)).scalar_one()
        return {"total": total, "active_24h": active}

    def touch(self, user_id: int) -> None:
        database.write(self.engine, lambda conn: conn.execute(
            users.update().where(users.c.id == user_id).values(last_seen_at=self.clock())))

    # -- token blocklist ------------------------------------------------------------------
    def revoke_token(self, jti: str, token_type: str, user_id: int | None, expires_at: float) -> None:
        def tx(conn):
            if conn.execute(sa.select(token_blocklist.c.jti).where(token_blocklist.c.jti == jti)).first():
                return
            conn.execute(token_blocklist.insert().values(
                jti=jti, token_type=token_type, user_id=user_id, revoked_at=self.clock(), expires_at=expires_at))
        database.write(self.engine, tx)

    def token_owner(self, user_id: int, jti: str) -> tuple[dict | None, bool]:
        """(the user, whether this token was revoked) in one statement: every authenticated
        request needs both, so it runs on the raw connection (see rawsql)."""
        def q(tx):
            row = tx.first(_TOKEN_OWNER, {"user_id": user_id, "jti": jti})
            if row is None:
                return None, tx.scalar(_REVOKED, {"jti": jti}) is not None
            revoked = bool(row.pop("revoked"))
            row.pop("password_hash", None)
            return row, revoked
        return rawsql.read(self.engine, q)

    @staticmethod
    def _is_revoked(conn, jti: str) -> bool:
        return conn.execute(sa.select(token_blocklist.c.jti).where(token_blocklist.c.jti == jti)).first() is not None

    def is_revoked(self, jti: str) -> bool:
        with database.read(self.engine) as conn:
            return self._is_revoked(conn, jti)

    def count_expired_tokens(self) -> int:
        with database.read(self.engine) as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(token_blocklist)
                                .where(token_blocklist.c.expires_at < self.clock())).scalar_one()

    def purge_expired_tokens(self) -> int:
        now = self.clock()
        return database.write(self.engine, lambda conn: conn.execute(
            token_blocklist.delete().where(token_blocklist.c.expires_at < now)).rowcount)
