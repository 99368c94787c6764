"""API keys: the admin key and per-capsule keys, stored hashed in the control database.

A key reads `trf_<keyid>_<secret>`. The key id finds the row without hashing against every
row; the row holds an argon2id hash of the secret (`argon2-cffi`), never the secret, which is
shown once at creation. A capsule key belongs to one incarnation of its capsule: it stops
working when the capsule is removed, and does not come back if a capsule of the same id is
created again (the row remembers the capsule's creation time).

`KeyStore.authenticate` is the `core.auth.Authenticator` every HTTP surface uses. A key's
check is remembered for `ttl_s` (0.5 s) from before the read of its row (`core.ttl_cache`),
so a revocation, or a removed capsule, is seen by a running server within a second (at once
by the process that revoked it); a key in use is re-read in the background ahead of expiry,
and the argon2 verification of a secret already verified against the same hash is
remembered, so a busy client pays one indexed read per half second off its thread, not an
argon2 hash per request.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from pydantic import BaseModel, field_validator
from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Engine,
    MetaData,
    String,
    Table,
    select,
    update,
)

from trifecta.core.auth import Principal
from trifecta.core.db import ensure_schema, get_engine, transaction
from trifecta.core.errors import InvalidInput, NotFound, Unauthenticated
from trifecta.core.settings import get_settings
from trifecta.core.ttl_cache import RENEW_AT, TtlCache
from trifecta.fleet.registry import capsules_table

KEY_PREFIX = "trf"
KEY_ID = re.compile(r"^[0-9a-f]{12}$")
VERIFY_TTL_S = 0.5  # + the time of one check: a revocation is seen well within a second


def key_hasher() -> PasswordHasher:
    """argon2id at OWASP's minimum (19 MiB, 2 passes, 1 lane) rather than the library's
    64 MiB x 4 lanes: a secret is 256 random bits, so the hash only has to make a stolen table
    useless, and a request with a wrong secret must not cost a loaded server a second of CPU."""
    return PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)


MAX_REMEMBERED = 10_000  # verified secrets remembered (digests only), oldest forgotten first

metadata = MetaData()
keys_table = Table(
    "api_keys",
    metadata,
    Column("key_id", String(32), primary_key=True),
    Column("admin", Boolean, nullable=False),
    Column("capsule_id", String(64), nullable=True, index=True),
    Column("capsule_created_at", DateTime(timezone=True), nullable=True),
    Column("secret_hash", String(256), nullable=False),
    Column("label", String(200), nullable=False, server_default=""),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
)


class ApiKey(BaseModel):
    """A key as listed: never its secret."""

    key_id: str
    admin: bool
    capsule_id: str | None
    label: str = ""
    created_at: datetime
    revoked_at: datetime | None = None

    @field_validator("created_at", "revoked_at")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        # SQLite hands times back without their zone; they are stored in UTC, and an
        # RFC 3339 date-time (what the API's spec promises) carries its offset.
        return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value

    @property
    def active(self) -> bool:
        return self.revoked_at is None


class CreatedKey(BaseModel):
    """A new key and its secret, the one time the secret is shown."""

    key: ApiKey
    token: str


def split_token(token: str) -> tuple[str, str]:
    """(key id, secret) of `trf_<keyid>_<secret>`."""
    prefix, _, rest = token.partition("_")
    key_id, _, secret = rest.partition("_")
    if prefix != KEY_PREFIX or not KEY_ID.match(key_id) or not secret:
        raise Unauthenticated("not a Trifecta API key (trf_<id>_<secret>)", field="authorization")
    return key_id, secret


def _digest(secret: str) -> bytes:
    # Only to recognise a secret already verified by argon2 in this process; never stored.
    return hashlib.blake2b(secret.encode(), digest_size=32).digest()


@dataclass(frozen=True, slots=True)
class _Checked:
    """A key's row checked live and a secret verified against its hash."""

    digest: bytes  # of the secret verified
    principal: Principal


class KeyStore:
    """Create, list, revoke and verify API keys. Thread-safe; one per server process."""

    def __init__(
        self,
        engine: Engine | None = None,
        *,
        ttl_s: float = VERIFY_TTL_S,
        hasher: PasswordHasher | None = None,
    ):
        self.engine = engine or get_engine(get_settings().db_url)
        ensure_schema(self.engine, "trifecta.fleet")
        self.ttl_s = ttl_s
        self.hasher = hasher or key_hasher()
        self._lock = threading.Lock()
        # A key counts as in use, and is renewed, when checked within the last quarter ttl
        # of a round: about once it is due, as a busy client's key is.
        self._recent: TtlCache[str, _Checked] = TtlCache(
            ttl_s,
            self._renew,
            in_use_s=ttl_s * (1 - RENEW_AT),
            max_entries=MAX_REMEMBERED,
            name="key-renewal",
        )
        self._verified: OrderedDict[tuple[str, bytes], None] = OrderedDict()

    @property
    def renewals(self) -> int:
        """Checks renewed in the background."""
        return self._recent.renewals

    # -- administration -------------------------------------------------------------------

    def create(
        self, *, admin: bool = False, capsule_id: str | None = None, label: str = ""
    ) -> CreatedKey:
        """A new admin key (`admin=True`) or a key of one existing capsule."""
        if admin == (capsule_id is not None):
            raise InvalidInput("a key is either the admin's or one capsule's", field="capsule")
        key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
        now = datetime.now(UTC)
        with transaction(self.engine, write=True) as session:
            born = None
            if capsule_id is not None:
                born = session.execute(
                    select(capsules_table.c.created_at).where(capsules_table.c.id == capsule_id)
                ).scalar_one_or_none()
                if born is None:
                    raise NotFound(f"no capsule {capsule_id!r}", field="capsule")
            session.execute(
                keys_table.insert().values(
                    key_id=key_id,
                    admin=admin,
                    capsule_id=capsule_id,
                    capsule_created_at=born,
                    secret_hash=self.hasher.hash(secret),
                    label=label,
                    created_at=now,
                )
            )
        key = ApiKey(key_id=key_id, admin=admin, capsule_id=capsule_id, label=label, created_at=now)
        return CreatedKey(key=key, token=f"{KEY_PREFIX}_{key_id}_{secret}")

    def list(self, *, capsule_id: str | None = None, active_only: bool = False) -> list[ApiKey]:
        query = select(
            keys_table.c.key_id,
            keys_table.c.admin,
            keys_table.c.capsule_id,
            keys_table.c.label,
            keys_table.c.created_at,
            keys_table.c.revoked_at,
        ).order_by(keys_table.c.created_at, keys_table.c.key_id)
        if capsule_id is not None:
            query = query.where(keys_table.c.capsule_id == capsule_id)
        if active_only:
            query = query.where(keys_table.c.revoked_at.is_(None))
        with transaction(self.engine) as session:
            rows = session.execute(query).mappings().all()
        return [ApiKey.model_validate(dict(row)) for row in rows]

    def has_admin(self) -> bool:
        return any(key.admin for key in self.list(active_only=True))

    def revoke(self, key_id: str) -> ApiKey:
        """Revoke a key; it stops working here at once and in other processes within ttl_s."""
        with transaction(self.engine, write=True) as session:
            session.execute(
                update(keys_table)
                .where(keys_table.c.key_id == key_id, keys_table.c.revoked_at.is_(None))
                .values(revoked_at=datetime.now(UTC))
            )
        self._forget(key_id)
        matches = [key for key in self.list() if key.key_id == key_id]
        if not matches:
            raise NotFound(f"no key {key_id!r}", field="key_id")
        return matches[0]

    def revoke_capsule(self, capsule_id: str) -> int:
        """Revoke every key of a capsule (its removal); returns how many."""
        ids = [key.key_id for key in self.list(capsule_id=capsule_id, active_only=True)]
        for key_id in ids:
            self.revoke(key_id)
        return len(ids)

    # -- verification -----------------------------------------------------------------------

    def authenticate(self, token: str) -> Principal:
        key_id, secret = split_token(token)
        digest = _digest(secret)
        checked = self._recent.get(key_id)
        if checked is None:
            checked = self._recent.read(key_id, lambda _: self._check(key_id, secret, digest))
        if checked is None or not hmac.compare_digest(checked.digest, digest):
            raise Unauthenticated("not a valid API key", field="authorization")
        return checked.principal

    def remembered(self, token: str) -> Principal | None:
        """`authenticate` from memory only (`core.auth.RemembersKeys`): None when the key's
        row must be read first. A key checked from `RENEW_AT` of its `ttl_s` on has its row
        re-read in the background, so a key in steady use is never re-read on the caller's
        thread; the renewed check counts its age from before that read, so a revocation is
        still seen within `ttl_s` plus one check."""
        key_id, secret = split_token(token)
        checked = self._recent.get(key_id)
        if checked is None:
            return None
        if not hmac.compare_digest(checked.digest, _digest(secret)):
            raise Unauthenticated("not a valid API key", field="authorization")
        return checked.principal

    def _check(self, key_id: str, secret: str, digest: bytes) -> _Checked:
        principal, secret_hash = self._check_row(key_id)
        self._verify(key_id, secret_hash, secret, digest)
        return _Checked(digest, principal)

    def _renew(self, checks: Sequence[tuple[str, _Checked]]) -> dict[str, _Checked]:
        """The renewal's re-read: a key left out (revoked, its capsule removed, or its hash
        no longer the one its secret was verified against) is forgotten."""
        renewed: dict[str, _Checked] = {}
        for key_id, checked in checks:
            try:
                principal, secret_hash = self._check_row(key_id)
            except Unauthenticated:
                continue
            with self._lock:
                if (secret_hash, checked.digest) in self._verified:
                    renewed[key_id] = _Checked(checked.digest, principal)
        return renewed

    def _check_row(self, key_id: str) -> tuple[Principal, str]:
        """The key's principal and hash, if the key is live and its capsule still exists."""
        joined = keys_table.outerjoin(
            capsules_table, capsules_table.c.id == keys_table.c.capsule_id
        )
        query = select(
            keys_table.c.admin,
            keys_table.c.capsule_id,
            keys_table.c.capsule_created_at,
            keys_table.c.secret_hash,
            keys_table.c.revoked_at,
            capsules_table.c.created_at.label("capsule_born"),
        ).select_from(joined)
        with transaction(self.engine) as session:
            row = session.execute(query.where(keys_table.c.key_id == key_id)).one_or_none()
        if row is None or row.revoked_at is not None:
            raise Unauthenticated("unknown or revoked API key", field="authorization")
        if not row.admin and (
            row.capsule_born is None or row.capsule_born != row.capsule_created_at
        ):
            raise Unauthenticated("the key's capsule was removed", field="authorization")
        principal = Principal(key_id=key_id, admin=bool(row.admin), capsule_id=row.capsule_id)
        return principal, str(row.secret_hash)

    def _verify(self, key_id: str, secret_hash: str, secret: str, digest: bytes) -> None:
        remembered = (secret_hash, digest)
        with self._lock:
            if remembered in self._verified:
                self._verified.move_to_end(remembered)
                return
        try:
            self.hasher.verify(secret_hash, secret)
        except (VerificationError, InvalidHashError):
            raise Unauthenticated("not a valid API key", field="authorization") from None
        with self._lock:
            self._verified[remembered] = None
            while len(self._verified) > MAX_REMEMBERED:
                self._verified.popitem(last=False)

    def _forget(self, key_id: str) -> None:
        self._recent.invalidate(key_id)
