"""The ``renkei`` command: serve, migrate, and what a network administrator needs."""

from __future__ import annotations

import functools
import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table
from sqlalchemy import select

from services.kit.errors import RenkeiError
from services.kit.settings import Settings

app = typer.Typer(help="Renkei — care-information sharing for home-care teams.", no_args_is_help=True)
admin = typer.Typer(help="Network administration.", no_args_is_help=True)
demo = typer.Typer(help="The demo network (fictitious data only).", no_args_is_help=True)
keys = typer.Typer(help="Encryption keys of the share service.", no_args_is_help=True)
patient = typer.Typer(help="Patient-level operations.", no_args_is_help=True)
audit = typer.Typer(help="The audit trail of the share service.", no_args_is_help=True)
access = typer.Typer(help="Access rules: the permission matrix.", no_args_is_help=True)
templates = typer.Typer(help="Sheet templates (Questionnaires).", no_args_is_help=True)
app.add_typer(admin, name="admin")
app.add_typer(demo, name="demo")
app.add_typer(keys, name="keys")
app.add_typer(patient, name="patient")
app.add_typer(audit, name="audit")
app.add_typer(access, name="access")
app.add_typer(templates, name="templates")
# soft_wrap: a line is never broken, so a script reading the output (the anchor of `audit verify`, say) gets it
# whole on a pipe, where rich would otherwise wrap at 80 columns. Tables still fit the width.
console = Console(soft_wrap=True)

DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Data directory (default: $RENKEI_DATA_DIR or ./renkei-data)."),
]


def load_settings(data_dir: Path | None, **overrides: Any) -> Settings:
    if data_dir is not None:
        overrides["data_dir"] = data_dir
    return Settings(**overrides)


def migrate_all(settings: Settings, *, auth: bool = True, share: bool = True) -> None:
    from services.kit.db import make_engine
    from services.kit.migrate import upgrade

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    chosen = [("auth", settings.resolved_auth_database_url)] * auth
    chosen += [("share", settings.resolved_share_database_url)] * share
    for service, url in chosen:
        engine = make_engine(url)
        try:
            upgrade(service, engine)
        finally:
            engine.dispose()


def _auth_context(settings: Settings) -> Any:
    from services.auth.context import AuthContext

    return AuthContext.build(settings)


def fail(message: str) -> typer.Exit:
    console.print(f"[red]error:[/red] {message}")
    return typer.Exit(1)


@app.command()
def migrate(data_dir: DataDir = None) -> None:
    """Bring both services' databases to the latest schema."""
    migrate_all(load_settings(data_dir))
    console.print("databases are up to date")


class Service(StrEnum):
    """What one `renkei serve` process serves: the identity service (/auth), the share service (/fhir, /ws, /push and
    its background work), or both (the default: one process for a small installation)."""

    auth = "auth"
    share = "share"
    both = "both"

    @property
    def parts(self) -> tuple[bool, bool]:
        """(auth, share) as create_app takes them."""
        return self is not Service.share, self is not Service.auth


# The application factory each worker of `renkei serve --workers N` builds its application with.
_FACTORIES = {Service.both: "services.app:app_from_environment",
              Service.auth: "services.cli:auth_app_from_environment",
              Service.share: "services.cli:share_app_from_environment"}


def auth_app_from_environment() -> Any:
    """A worker of `renkei serve --service auth --workers N`: the identity service alone."""
    from services.app import create_app

    return create_app(Settings(), auth=True, share=False)


def share_app_from_environment() -> Any:
    """A worker of `renkei serve --service share --workers N`: the share service alone."""
    from services.app import create_app

    return create_app(Settings(), auth=False, share=True)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    data_dir: DataDir = None,
    demo_data: Annotated[bool, typer.Option("--demo", help="Load the demo network and print how to log in.")] = False,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes; one per CPU core uses the machine.")] = 1,
    service: Annotated[Service, typer.Option(
        "--service", help="What this process serves: the identity service (/auth), the share service (/fhir, /ws, "
        "/push, background work; it fetches the identity service's keys from RENKEI_SHARE_JWKS_URL), or both.",
    )] = Service.both,
) -> None:
    """Migrate, then serve the identity service, the share service or both (in one process, or in several
    workers)."""
    overrides: dict[str, Any] = {}
    if "RENKEI_PUBLIC_URL" not in os.environ:
        shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host  # noqa: S104 - only choosing a display URL
        overrides["public_url"] = f"http://{shown}:{port}"
    settings = load_settings(data_dir, **overrides)
    if demo_data and service is not Service.both:
        raise fail("--demo loads users into the identity service and patients' data into the share service: "
                   "use it with --service both")
    if workers == 1:
        import uvicorn

        from services.app import create_app

        prepare(settings, demo_data, service=service)
        from services.serving import WEBSOCKET_OPTIONS

        auth, share = service.parts
        uvicorn.run(create_app(settings, auth=auth, share=share), host=host, port=port, log_level="info",
                    proxy_headers=True, access_log=False, **WEBSOCKET_OPTIONS)
        return
    from services.serving import serve_workers

    # access_log=False, here and above: uvicorn's own access line prints the raw path and query, and a search's
    # query names the patient. The application logs every request as one JSON line instead, with the route
    # template, never the query (services/kit/requests.py).
    # Each worker builds its application from the environment; pass it what this command decided.
    os.environ["RENKEI_PUBLIC_URL"] = settings.public_url
    os.environ["RENKEI_DATA_DIR"] = str(settings.data_dir.resolve())
    serve_workers(_FACTORIES[service], host, port, workers,
                  prepare=functools.partial(prepare, settings, demo_data, keys=True, service=service),
                  log_level="info", proxy_headers=True, access_log=False)


def prepare(settings: Settings, demo_data: bool, keys: bool = False, service: Service = Service.both) -> None:
    """What runs once before serving: migrations (of the databases of what this process serves), the demo network,
    and (for several workers, which must not race to create them) the signing key and the key files."""
    auth, share = service.parts
    migrate_all(settings, auth=auth, share=share)
    if demo_data:
        _load_demo(settings)
    if keys:
        create_keys(settings, auth=auth, share=share)
    served = {Service.both: "", Service.auth: " (identity service only)", Service.share: " (share service only)"}
    console.print(f"Renkei serving at {settings.public_url}{served[service]} (data in {settings.data_dir.resolve()})")


def create_keys(settings: Settings, *, auth: bool = True, share: bool = True) -> None:
    """The signing key and the share service's key files, so that no two workers race to create them."""
    from services.kit.requests import Pseudonyms
    from services.share.crypto.keyring import KeyRing

    if auth:
        ctx = _auth_context(settings)
        with ctx.db.transaction() as db:
            ctx.signer.ensure_key(db)
        ctx.db.dispose()
    if share:
        KeyRing.load(settings)
    Pseudonyms.for_settings(settings)  # the access log's key (services/kit/requests.py)


def _load_demo(settings: Settings) -> None:
    from services import demo as demo_module
    from services.auth.directory.schemas import BootstrapFile
    from services.auth.directory.service import Directory

    ctx = _auth_context(settings)
    with ctx.db.transaction() as db:
        Directory(ctx).bootstrap(db, BootstrapFile.model_validate(demo_module.demo_network(settings)))
    ctx.db.dispose()
    table = Table(title="Demo network (fictitious) — password for everyone: demo-password-2026")
    for column in ("username", "profession", "organization", "administers"):
        table.add_column(column)
    for user in orjson.loads(demo_module.DEMO_FILE.read_bytes())["users"]:
        roles = [role for role, key in (("network", "admin"), ("organisation", "org_admin")) if user.get(key)]
        table.add_row(user["username"], user["profession"], user["organization"], ", ".join(roles))
    console.print(table)
    console.print("Second factor: [bold]renkei demo code USERNAME[/bold] prints the current TOTP code.")
    console.print(
        f"System client {demo_module.DEMO_CLIENT}: key in {demo_module.client_key_path(settings)}; "
        "[bold]renkei demo assertion[/bold] prints a client assertion."
    )


@demo.command("code")
def demo_code(username: str) -> None:
    """Print the current TOTP code of a demo user (demo secrets are public; real ones never leave the server)."""
    import pyotp

    from services import demo as demo_module

    secret = demo_module.totp_secret(username)
    if secret is None:
        raise fail(f"{username} is not a demo user")
    print(pyotp.TOTP(secret).now())


@demo.command("assertion")
def demo_assertion(
    data_dir: DataDir = None,
    public_url: Annotated[
        str | None,
        typer.Option(help="The server's URL (default: $RENKEI_PUBLIC_URL or http://127.0.0.1:8000)."),
    ] = None,
) -> None:
    """Print a fresh client assertion for the demo hospital system client."""
    from services import demo as demo_module

    overrides: dict[str, Any] = {"public_url": public_url} if public_url else {}
    print(demo_module.client_assertion(load_settings(data_dir, **overrides)))


# Administration ------------------------------------------------------------------------------------------


@admin.command()
def bootstrap(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
    data_dir: DataDir = None,
) -> None:
    """Load a network description (JSON): the network, organisations, users, system clients. Idempotent."""
    from services.auth.directory.schemas import BootstrapFile
    from services.auth.directory.service import Directory

    try:
        data = BootstrapFile.model_validate(orjson.loads(file.read_bytes()))
    except orjson.JSONDecodeError as error:
        raise fail(f"{file} is not valid JSON: {error}") from None
    except ValidationError as error:
        problems = "\n".join(f"  {'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors())
        raise fail(f"{file} does not match the bootstrap format:\n{problems}") from None
    settings = load_settings(data_dir)
    migrate_all(settings)
    ctx = _auth_context(settings)
    try:
        with ctx.db.transaction() as db:
            changes = Directory(ctx).bootstrap(db, data)
    except RenkeiError as error:
        raise fail(error.message) from None
    finally:
        ctx.db.dispose()
    if not changes.changed:
        console.print(f"network {data.network.id}: nothing to change")
        return
    console.print(f"network {data.network.id}: created {changes.created or '{}'}, updated {changes.updated or '{}'}")


@admin.command("users")
def list_users(network: str, data_dir: DataDir = None) -> None:
    """List a network's users."""
    from services.auth.directory.service import Directory

    ctx = _auth_context(load_settings(data_dir))
    with ctx.db.transaction() as db:
        table = Table("id", "username", "name", "organization", "profession", "admin", "org admin", "mfa", "disabled")
        for u in Directory(ctx).users(db, network):
            table.add_row(
                u.id,
                u.username,
                u.name,
                u.organization_id,
                u.profession,
                str(u.is_admin),
                str(u.org_admin),
                str(u.totp_enabled),
                str(u.disabled),
            )
    console.print(table)


def _user_by_name(db: Any, username: str) -> Any:
    from services.auth.directory.models import User

    user = db.scalars(select(User).where(User.username == username)).first()
    if user is None:
        raise fail(f"no user {username}")
    return user


@admin.command("disable-user")
def disable_user(username: str, data_dir: DataDir = None) -> None:
    """Disable a user and end all their sessions."""
    from services.auth.audit.recorder import SUCCESS, record
    from services.auth.sessions.revocation import revoke_user_sessions

    ctx = _auth_context(load_settings(data_dir))
    with ctx.db.transaction() as db:
        user = _user_by_name(db, username)
        user.disabled = True
        ended = revoke_user_sessions(db, user.id, "user_disabled")
        record(db, "user_changed", SUCCESS, network_id=user.network_id, user_id=user.id, by="cli", disabled=True)
    console.print(f"{username} disabled; {ended} session(s) ended")


@admin.command("reset-mfa")
def reset_mfa(username: str, data_dir: DataDir = None) -> None:
    """Remove a user's second factor (lost phone); they enrol again at next login."""
    from services.auth.directory.service import Directory

    ctx = _auth_context(load_settings(data_dir))
    with ctx.db.transaction() as db:
        user = _user_by_name(db, username)
        Directory(ctx).reset_mfa(db, user.network_id, user.id)
    console.print(f"{username}: second factor removed, sessions ended")


@admin.command("devices")
def list_devices(username: str, data_dir: DataDir = None) -> None:
    """List a user's registered devices."""
    from services.auth.sessions import devices

    ctx = _auth_context(load_settings(data_dir))
    with ctx.db.transaction() as db:
        table = Table("id", "name", "registered", "revoked")
        for d in devices.devices_of(db, _user_by_name(db, username).id):
            table.add_row(d.id, d.name, d.created_at.isoformat(), d.revoked_at.isoformat() if d.revoked_at else "")
    console.print(table)


@admin.command("revoke-device")
def revoke_device(username: str, device_id: str, data_dir: DataDir = None) -> None:
    """A lost tablet: end every session on it now."""
    from services.auth.sessions import devices

    ctx = _auth_context(load_settings(data_dir))
    try:
        with ctx.db.transaction() as db:
            devices.revoke(db, _user_by_name(db, username), device_id, by="cli")
    except RenkeiError as error:
        raise fail(error.message) from None
    console.print(
        f"device {device_id} revoked; its access tokens lapse within "
        f"{ctx.settings.access_token_ttl_seconds // 60} minutes"
    )


@admin.command("clients")
def list_clients(network: str, data_dir: DataDir = None) -> None:
    """List a network's system clients."""
    from services.auth.directory.service import Directory

    ctx = _auth_context(load_settings(data_dir))
    with ctx.db.transaction() as db:
        table = Table("client_id", "organization", "scope", "disabled")
        for c in Directory(ctx).clients(db, network):
            table.add_row(c.client_id, c.organization_id, c.scope, str(c.disabled))
    console.print(table)


@admin.command("rotate-signing-key")
def rotate_signing_key(data_dir: DataDir = None) -> None:
    """Start signing with a new key; the old public key stays published until its tokens have expired."""
    from services.auth.audit.recorder import SUCCESS, record

    ctx = _auth_context(load_settings(data_dir))
    with ctx.db.transaction() as db:
        purged = ctx.signer.purge_expired(db)
        key = ctx.signer.rotate(db)
        record(db, "signing_key_rotated", SUCCESS, kid=key.kid)
    console.print(f"new signing key {key.kid}; {purged} expired key(s) removed")


@admin.command("security-events")
def security_events(
    network: str,
    type: Annotated[str | None, typer.Option()] = None,
    limit: int = 50,
    data_dir: DataDir = None,
) -> None:
    """Show the identity service's security log for a network, newest first."""
    from services.auth.audit.recorder import list_events

    ctx = _auth_context(load_settings(data_dir))
    with ctx.db.transaction() as db:
        table = Table("at", "type", "outcome", "user", "client", "address", "detail")
        for e in list_events(db, network, type=type, limit=limit):
            table.add_row(
                e.at.isoformat(timespec="seconds"),
                e.type,
                e.outcome,
                e.user_id or "",
                e.client_id or "",
                e.address or "",
                orjson.dumps(e.detail).decode(),
            )
    console.print(table)


# Share-service keys and erasure ------------------------------------------------------------------------


def _share_context(settings: Settings) -> Any:
    from services.share.context import ShareContext

    migrate_all(settings)
    return ShareContext.build(settings)


@keys.command("rotate")
def rotate_keys(data_dir: DataDir = None) -> None:
    """New key-encryption key; every data key is rewrapped under it (bodies stay as they are, reads go on)."""
    from rich.progress import Progress

    from services.share.crypto.keyring import KekRotationRefused

    ctx = _share_context(load_settings(data_dir))
    try:
        version = ctx.keyring.rotate()
    except KekRotationRefused as error:
        raise fail(str(error)) from None
    session = ctx.db.sessions()
    try:
        with Progress(console=console) as bar:
            task = bar.add_task(f"rewrapping data keys under KEK v{version}", total=None)

            def progress(done: int, total: int) -> None:
                session.commit()  # short transactions: a live server keeps reading and writing meanwhile
                bar.update(task, completed=done, total=max(total, 1))

            count = ctx.store.keys.rewrap_all(session, progress)
            session.commit()
    finally:
        session.close()
        ctx.db.dispose()
    console.print(f"KEK v{version} is current; {count} data key(s) rewrapped")


@patient.command("erase")
def erase(
    patient_id: str,
    data_dir: DataDir = None,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Crypto-shred a patient: destroy their data key; their resources then read as 410 Gone. Irreversible."""
    from services.share.store.erasure import erase_patient

    if not yes and not typer.confirm(f"Erase Patient/{patient_id} irreversibly?"):
        raise typer.Exit(1)
    ctx = _share_context(load_settings(data_dir))
    try:
        with ctx.db.transaction() as db:
            result = erase_patient(ctx.store, db, patient_id, actor="renkei patient erase (CLI)")
    except RenkeiError as error:
        raise fail(error.message) from None
    finally:
        ctx.db.dispose()
    console.print(
        f"Patient/{patient_id} erased: {result.resources} resource(s) unreadable; "
        f"audit record AuditEvent/{result.audit_event_id}"
    )


@audit.command("verify")
def audit_verify(
    data_dir: DataDir = None,
    anchor: Annotated[list[str] | None, typer.Option(
        "--anchor", help="SEQ:DIGEST printed by an earlier verification and kept elsewhere (repeatable).")] = None,
) -> None:
    """Walk the audit log's hash chain; report the first broken link (exit 1) or that it is intact."""
    from services.share.audit.chain import verify

    anchors: dict[int, str] = {}
    for given in anchor or []:
        seq, _, digest = given.partition(":")
        if not seq.isdigit() or len(digest) != 64:
            raise fail(f"--anchor takes SEQ:DIGEST as verification prints it, not {given!r}")
        anchors[int(seq)] = digest
    ctx = _share_context(load_settings(data_dir))
    try:
        with ctx.db.transaction() as db:
            verdict = verify(db, anchors=anchors)
    finally:
        ctx.db.dispose()
    console.print(f"{verdict.checked} chained audit record(s) checked; {verdict.pending} not chained yet")
    console.print(f"chain head: record {verdict.head_seq}, digest {verdict.head_digest}")
    console.print(f"anchor to keep: {verdict.head_seq}:{verdict.head_digest}")
    if not verdict.intact:
        raise fail(f"the audit chain is broken at record {verdict.seq}: {verdict.problem}")
    console.print("[green]the audit chain is intact[/green]")


@access.command("check-matrix")
def check_matrix(
    schemas_dir: Annotated[Path | None, typer.Argument(help="A schemas directory (default: the configured).")] = None,
) -> None:
    """Validate schemas/access/permissions.json against the code systems; print what each profession may do."""
    from services.share.access.matrix import MatrixError, load_matrix

    directory = schemas_dir or Settings().schemas_dir
    try:
        matrix = load_matrix(directory)
    except (MatrixError, OSError, KeyError) as error:
        raise fail(f"the permission matrix in {directory} is not usable: {error}") from None
    table = Table("profession", "reads", "writes", "sheets read", "sheets written", "labels")
    for profession, row in sorted(matrix.professions.items()):
        table.add_row(profession, str(len(row.read)), str(len(row.write)), ", ".join(sorted(row.sheets_read)),
                      ", ".join(sorted(row.sheets_write)), ", ".join(sorted(row.labels)))
    console.print(table)
    console.print(f"[green]permission matrix {matrix.version} is valid[/green]; break-the-glass: "
                  f"{', '.join(sorted(matrix.break_glass.professions))} for {matrix.break_glass.hours:g} h")


@templates.command("check")
def templates_check(
    directory: Annotated[Path | None, typer.Argument(
        help="A directory of templates (default: questionnaires/ in the configured schemas directory).")] = None,
) -> None:
    """Validate sheet templates against the code systems; print each problem (exit 1) or how many are valid."""
    from services.share.sheets.templates import check_directory, template_files

    schemas_dir = Settings().schemas_dir
    directory = directory or schemas_dir / "questionnaires"
    if not directory.is_dir():
        raise fail(f"{directory} is not a directory")
    problems = check_directory(directory, schemas_dir)
    for problem in problems:
        console.print(str(problem), markup=False, soft_wrap=True)
    if problems:
        raise fail(f"{len(problems)} problem(s) in the templates of {directory}")
    console.print(f"[green]{len(template_files(directory))} template(s) in {directory} are valid[/green]")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
