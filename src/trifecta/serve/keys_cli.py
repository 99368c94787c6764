"""`trifecta keys create | list | revoke`: the API keys of the control database."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from trifecta.core.errors import InvalidInput

console = Console()
keys_app = typer.Typer(
    help="API keys: the admin key and per-capsule keys (stored hashed).", no_args_is_help=True
)


@keys_app.command("create")
def create_command(
    admin: bool = typer.Option(False, "--admin", help="an admin key (every route, any capsule)"),
    capsule: str | None = typer.Option(None, "--capsule", help="a key of this capsule only"),
    label: str = typer.Option("", help="a note shown by `keys list`", max=200),
) -> None:
    """Create a key and print it. The secret is shown once: it is stored only as a hash."""
    from trifecta.fleet.keys import KeyStore

    if admin == (capsule is not None):
        raise InvalidInput("give exactly one of --admin or --capsule ID", field="capsule")
    created = KeyStore().create(admin=admin, capsule_id=capsule, label=label)
    owner = "admin" if admin else f"capsule {capsule}"
    typer.echo(created.token)  # alone on stdout, so `KEY=$(trifecta keys create ...)` works
    typer.echo(
        f"key {created.key.key_id} ({owner}): the line above is the key; it is not shown again",
        err=True,
    )


@keys_app.command("list")
def list_command(
    capsule: str | None = typer.Option(None, "--capsule", help="only this capsule's keys"),
    active: bool = typer.Option(False, "--active", help="hide revoked keys"),
) -> None:
    """Every key: id, owner, label, created, revoked (never a secret)."""
    from trifecta.fleet.keys import KeyStore

    keys = KeyStore().list(capsule_id=capsule, active_only=active)
    table = Table("key id", "owner", "label", "created", "revoked")
    for key in keys:
        table.add_row(
            key.key_id,
            "admin" if key.admin else f"capsule {key.capsule_id}",
            key.label,
            key.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            key.revoked_at.strftime("%Y-%m-%d %H:%M:%S") if key.revoked_at else "",
        )
    console.print(table)


@keys_app.command("revoke")
def revoke_command(key_id: str = typer.Argument(..., help="the key id `keys list` shows")) -> None:
    """Revoke a key: a running server refuses it within a second."""
    from trifecta.fleet.keys import KeyStore

    key = KeyStore().revoke(key_id)
    typer.echo(f"revoked key {key.key_id}")
