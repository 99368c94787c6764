"""Who is calling: the principal a request's API key stands for, and the one FastAPI
dependency through which every HTTP surface authenticates.

A principal is either the admin (acts for any capsule, may use the admin routes) or one
capsule. The capsule a request acts for comes from its key, never from a header or a path
the client chooses: a path's capsule id must equal the key's (`Principal.act_for`).

The layers' servers take any `Authenticator` (the composition root hands them the key store
of `fleet.keys`, or `StaticKeys` for an embedded setup), so no layer imports another's.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Mapping
from typing import Protocol, runtime_checkable

from fastapi import Cookie, Header
from pydantic import BaseModel, ConfigDict

from trifecta.core.errors import Forbidden, Unauthenticated

AUTH_HEADER = "Authorization"
# The dashboard's browser session: the admin key in an HttpOnly, SameSite=Strict cookie
# scoped to /dashboard, read only by dependencies made with `admin_only(..., cookie=True)`.
SESSION_COOKIE = "trifecta_admin"


class Principal(BaseModel):
    """What a verified key stands for."""

    model_config = ConfigDict(frozen=True)

    key_id: str
    admin: bool = False
    capsule_id: str | None = None

    def act_for(self, capsule_id: str, *, field: str = "capsule_id") -> str:
        """The capsule this request may act for: the key's own, or any for the admin."""
        if self.admin or capsule_id == self.capsule_id:
            return capsule_id
        raise Forbidden("this key does not belong to that capsule", field=field)

    def require_admin(self) -> Principal:
        if not self.admin:
            raise Forbidden("this route needs the admin key", field="authorization")
        return self


# The principal of a server started with `--insecure-local` and of in-process use.
LOCAL_ADMIN = Principal(key_id="local", admin=True)


class Authenticator(Protocol):
    """Turns a bearer token into a principal (Unauthenticated if it is not a valid key)."""

    def authenticate(self, token: str) -> Principal: ...


@runtime_checkable
class RemembersKeys(Protocol):
    """An authenticator that can answer some tokens from memory, without I/O: the principal,
    None when answering needs a read (then call `authenticate` off the event loop), or
    Unauthenticated when memory already says no."""

    def remembered(self, token: str) -> Principal | None: ...


class AllowLocal:
    """No authentication: every request is the local admin (loopback `--insecure-local`)."""

    def authenticate(self, token: str) -> Principal:
        return LOCAL_ADMIN


class StaticKeys:
    """A fixed table of tokens (an embedded server built in code, tests of one layer)."""

    def __init__(self, keys: Mapping[str, Principal]):
        self._keys = dict(keys)

    def authenticate(self, token: str) -> Principal:
        for known, principal in self._keys.items():
            if hmac.compare_digest(known.encode(), token.encode()):
                return principal
        raise Unauthenticated("not a valid API key", field="authorization")


def bearer_token(authorization: str | None) -> str:
    """The token of an `Authorization: Bearer <token>` header."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated(
            "send an API key as 'Authorization: Bearer <key>'", field="authorization"
        )
    return token.strip()


def principal_of(auth: Authenticator, authorization: str | None) -> Principal:
    if isinstance(auth, AllowLocal):
        return LOCAL_ADMIN
    return auth.authenticate(bearer_token(authorization))


def remembered_principal(auth: Authenticator, authorization: str | None) -> Principal | None:
    """The request's principal if it can be had without I/O (safe on an event loop), else
    None: the caller then runs `principal_of` in a worker thread."""
    if isinstance(auth, AllowLocal):
        return LOCAL_ADMIN
    if isinstance(auth, StaticKeys):  # a table in memory
        return auth.authenticate(bearer_token(authorization))
    if isinstance(auth, RemembersKeys):
        return auth.remembered(bearer_token(authorization))
    return None


def authenticated(auth: Authenticator) -> Callable[..., Principal]:
    """THE FastAPI dependency: the request's principal, or 401 naming `authorization`."""

    def dependency(authorization: str | None = Header(default=None)) -> Principal:
        return principal_of(auth, authorization)

    return dependency


def admin_only(auth: Authenticator, *, cookie: bool = False) -> Callable[..., Principal]:
    """The same dependency, then 403 unless the key is the admin key. With `cookie`, a
    request without an `Authorization` header may present the key in the session cookie."""

    def dependency(authorization: str | None = Header(default=None)) -> Principal:
        return principal_of(auth, authorization).require_admin()

    def with_cookie(
        authorization: str | None = Header(default=None),
        session: str | None = Cookie(default=None, alias=SESSION_COOKIE),
    ) -> Principal:
        if authorization is None and session:
            authorization = f"Bearer {session}"
        return principal_of(auth, authorization).require_admin()

    return with_cookie if cookie else dependency
