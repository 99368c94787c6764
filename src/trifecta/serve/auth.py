"""Authentication of `trifecta serve`: its authenticator, the local admin key written on
first start (`fleet.admin_key`, shared with the layers' servers), `--insecure-local`, and the
admin routes over API keys (`/v1/keys`).

Every route of the server authenticates through `core.auth.authenticated` (the one FastAPI
dependency) over the authenticator chosen here; the layers' own servers take the same one.
"""

from __future__ import annotations

import ipaddress

from fastapi import APIRouter, Depends, Response, status
from pydantic import BaseModel, Field
from sqlalchemy import Engine

from trifecta.core.auth import AllowLocal, Authenticator, Principal, admin_only
from trifecta.core.errors import InvalidInput
from trifecta.fleet.admin_key import ADMIN_KEY_FILE as ADMIN_KEY_FILE  # re-exported
from trifecta.fleet.admin_key import ensure_local_admin_key as ensure_local_admin_key
from trifecta.fleet.capsules import SLUG
from trifecta.fleet.keys import ApiKey, CreatedKey, KeyStore


def is_loopback(host: str) -> bool:
    """Whether `host` (an address or `localhost`) binds to loopback only."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def loopback_only(host: str) -> AllowLocal:
    """The no-auth authenticator, only for a loopback bind (InvalidInput otherwise)."""
    if not is_loopback(host):
        raise InvalidInput(
            f"--insecure-local serves without keys and only on loopback, not {host!r}",
            field="host",
        )
    return AllowLocal()


def server_authenticator(engine: Engine) -> KeyStore:
    """The key store of the server's control database."""
    return KeyStore(engine)


class NewKey(BaseModel):
    """`POST /v1/keys`: an admin key or one capsule's key."""

    admin: bool = False
    capsule_id: str | None = Field(default=None, pattern=SLUG)
    label: str = Field(default="", max_length=200)


def keys_routes(store: KeyStore) -> APIRouter:
    """Create, list and revoke keys over HTTP (admin key only)."""
    router = APIRouter(prefix="/v1/keys", tags=["keys"])
    admin = Depends(admin_only(store))

    @router.get("")
    def list_keys(_: Principal = admin) -> list[ApiKey]:
        return store.list()

    @router.post("", status_code=status.HTTP_201_CREATED)
    def create_key(body: NewKey, _: Principal = admin) -> CreatedKey:
        """The secret is in this answer only."""
        return store.create(admin=body.admin, capsule_id=body.capsule_id, label=body.label)

    @router.delete("/{key_id}", status_code=status.HTTP_204_NO_CONTENT)
    def revoke_key(key_id: str, _: Principal = admin) -> Response:
        store.revoke(key_id)
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    return router


def revoke_capsule_keys(auth: Authenticator, capsule_id: str) -> None:
    """A removed capsule's keys are revoked (they also fail on their own: the capsule is gone)."""
    if isinstance(auth, KeyStore):
        auth.revoke_capsule(capsule_id)
