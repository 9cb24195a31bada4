"""Networks, organisations, users and system clients: creation and change, checked against schemas/ codes.

Bootstrap and the admin API both go through here, so a rule holds however the data arrives.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.auth.clients.keys import check_jwks
from services.auth.clients.models import SystemClient
from services.auth.context import AuthContext
from services.auth.directory.models import Network, Organization, User
from services.auth.directory.schemas import (
    BootstrapFile,
    ClientIn,
    NetworkIn,
    NetworkSettings,
    NetworkSettingsPatch,
    OrganizationIn,
    UserIn,
    UserPatch,
)
from services.auth.sessions.revocation import revoke_user_sessions
from services.kit import codes
from services.kit.errors import BadRequest, Conflict, NotFound


@dataclass
class Changes:
    created: dict[str, int] = field(default_factory=dict)
    updated: dict[str, int] = field(default_factory=dict)

    def count(self, kind: str, what: str | None) -> None:
        if what:
            target = self.created if what == "created" else self.updated
            target[kind] = target.get(kind, 0) + 1

    @property
    def changed(self) -> bool:
        return bool(self.created or self.updated)


class Directory:
    def __init__(self, ctx: AuthContext) -> None:
        self.ctx = ctx
        schemas_dir = ctx.settings.schemas_dir
        self.professions = codes.code_system(schemas_dir, codes.PROFESSION)
        self.org_types = codes.code_system(schemas_dir, codes.ORGANIZATION_TYPE)

    # Networks -----------------------------------------------------------------------------------------

    def upsert_network(self, db: Session, data: NetworkIn) -> str | None:
        network = db.get(Network, data.id)
        settings = (data.settings or NetworkSettings()).model_dump()
        if network is None:
            db.add(Network(id=data.id, name=data.name, settings=settings))
            return "created"
        if data.settings is None:
            settings = network.settings  # absent settings leave the current ones alone
        if (network.name, network.settings) == (data.name, settings):
            return None
        network.name, network.settings = data.name, settings
        return "updated"

    def network(self, db: Session, network_id: str) -> Network:
        network = db.get(Network, network_id)
        if network is None:
            raise NotFound(f"network {network_id} not found")
        return network

    def settings_of(self, db: Session, network_id: str) -> NetworkSettings:
        return NetworkSettings.model_validate(self.network(db, network_id).settings or {})

    def patch_settings(self, db: Session, network_id: str, patch: NetworkSettingsPatch) -> NetworkSettings:
        network = self.network(db, network_id)
        merged = {
            **NetworkSettings().model_dump(),
            **(network.settings or {}),
            **patch.model_dump(exclude_none=True),
        }
        settings = NetworkSettings.model_validate(merged)
        network.settings = settings.model_dump()
        return settings

    # Organisations ------------------------------------------------------------------------------------

    def upsert_organization(self, db: Session, network_id: str, data: OrganizationIn) -> tuple[str, str | None]:
        if data.type not in self.org_types:
            self._bad(f"unknown organization type {data.type!r}; see schemas/codesystems/organization-type.json")
        org_id = data.id or uuid.uuid4().hex
        org = db.get(Organization, org_id)
        if org is None:
            db.add(Organization(id=org_id, network_id=network_id, name=data.name, type=data.type))
            db.flush()
            return org_id, "created"
        if org.network_id != network_id:
            raise Conflict(f"organization id {org_id} is taken by another network")
        if (org.name, org.type) == (data.name, data.type):
            return org_id, None
        org.name, org.type = data.name, data.type
        return org_id, "updated"

    def organization_reference(self, db: Session, network_id: str, org_id: str) -> Organization:
        """An organisation named inside a request body: unknown is the body's fault (400), not a missing page."""
        org = db.get(Organization, org_id)
        if org is None or org.network_id != network_id:
            raise BadRequest(f"organization {org_id} not found in this network")
        return org

    def organization(self, db: Session, network_id: str, org_id: str) -> Organization:
        org = db.get(Organization, org_id)
        if org is None or org.network_id != network_id:
            raise NotFound(f"organization {org_id} not found in this network")
        return org

    def organizations(self, db: Session, network_id: str) -> list[Organization]:
        query = select(Organization).where(Organization.network_id == network_id).order_by(Organization.id)
        return list(db.scalars(query))

    # Users --------------------------------------------------------------------------------------------

    def upsert_user(self, db: Session, network_id: str, data: UserIn) -> tuple[User, str | None]:
        self._check_profession(data.profession)
        self.organization_reference(db, network_id, data.organization)
        user = db.scalars(select(User).where(User.username == data.username)).first()
        if user is None and data.id is not None and db.get(User, data.id) is not None:
            raise Conflict(f"user id {data.id} is taken by another username")
        if user is None:
            user = User(
                id=data.id or uuid.uuid4().hex,
                network_id=network_id,
                organization_id=data.organization,
                username=data.username,
                name=data.name,
                profession=data.profession,
                is_admin=data.admin,
                org_admin=data.org_admin,
                disabled=False,
                password_hash=self.ctx.passwords.hash(data.password),
                totp_last_step=0,
            )
            if data.totp_secret:
                self._set_totp(user, data.totp_secret)
            db.add(user)
            db.flush()
            return user, "created"
        if user.network_id != network_id:
            raise Conflict(f"username {data.username} is taken by another network")
        if data.id is not None and data.id != user.id:
            raise Conflict(f"username {data.username} already has id {user.id}")
        changed = False
        for attr, value in (
            ("organization_id", data.organization),
            ("name", data.name),
            ("profession", data.profession),
            ("is_admin", data.admin),
            ("org_admin", data.org_admin),
        ):
            if getattr(user, attr) != value:
                setattr(user, attr, value)
                changed = True
        if not self.ctx.passwords.verify(user.password_hash, data.password):
            user.password_hash = self.ctx.passwords.hash(data.password)
            changed = True
        if data.totp_secret and self._totp_secret(user) != data.totp_secret:
            self._set_totp(user, data.totp_secret)
            changed = True
        return user, "updated" if changed else None

    def user(self, db: Session, network_id: str, user_id: str) -> User:
        user = db.get(User, user_id)
        if user is None or user.network_id != network_id:
            raise NotFound(f"user {user_id} not found in this network")
        return user

    def users(self, db: Session, network_id: str, organization: str | None = None) -> list[User]:
        query = select(User).where(User.network_id == network_id)
        if organization:
            query = query.where(User.organization_id == organization)
        return list(db.scalars(query.order_by(User.username)))

    def patch_user(self, db: Session, network_id: str, user_id: str, patch: UserPatch) -> User:
        user = self.user(db, network_id, user_id)
        if patch.organization is not None and patch.organization != user.organization_id:
            self.organization_reference(db, network_id, patch.organization)
            user.organization_id = patch.organization
            # Administering an organisation does not travel with the person: a move drops it unless the same
            # request grants it for the new organisation.
            user.org_admin = False
        if patch.profession is not None:
            self._check_profession(patch.profession)
            user.profession = patch.profession
        if patch.name is not None:
            user.name = patch.name
        if patch.admin is not None:
            user.is_admin = patch.admin
        if patch.org_admin is not None:
            user.org_admin = patch.org_admin
        if patch.password is not None:
            user.password_hash = self.ctx.passwords.hash(patch.password)
            revoke_user_sessions(db, user.id, "password_changed")
        if patch.disabled is not None:
            user.disabled = patch.disabled
            if patch.disabled:
                revoke_user_sessions(db, user.id, "user_disabled")
        return user

    def reset_mfa(self, db: Session, network_id: str, user_id: str) -> User:
        from services.auth.credentials.mfa import clear_second_factor

        user = self.user(db, network_id, user_id)
        clear_second_factor(db, user)
        revoke_user_sessions(db, user.id, "mfa_reset")
        return user

    def is_clinical(self, profession: str) -> bool:
        concept = self.professions.concepts.get(profession)
        return bool(concept and concept.properties.get("clinical", True))

    # System clients -----------------------------------------------------------------------------------

    def upsert_client(self, db: Session, network_id: str, data: ClientIn) -> str | None:
        self.organization_reference(db, network_id, data.organization)
        try:
            check_jwks(data.jwks)
        except ValueError as error:
            raise BadRequest(f"client {data.client_id}: {error}") from None
        client = db.get(SystemClient, data.client_id)
        if client is None:
            db.add(
                SystemClient(
                    client_id=data.client_id,
                    network_id=network_id,
                    organization_id=data.organization,
                    jwks=data.jwks,
                    scope=data.scope,
                )
            )
            return "created"
        if client.network_id != network_id:
            raise Conflict(f"client id {data.client_id} is taken by another network")
        if (client.organization_id, client.jwks, client.scope, client.disabled) == (
            data.organization,
            data.jwks,
            data.scope,
            False,
        ):
            return None
        client.organization_id, client.jwks, client.scope, client.disabled = (
            data.organization,
            data.jwks,
            data.scope,
            False,
        )
        return "updated"

    def client(self, db: Session, network_id: str, client_id: str) -> SystemClient:
        client = db.get(SystemClient, client_id)
        if client is None or client.network_id != network_id:
            raise NotFound(f"client {client_id} not found in this network")
        return client

    def clients(self, db: Session, network_id: str) -> list[SystemClient]:
        query = select(SystemClient).where(SystemClient.network_id == network_id)
        return list(db.scalars(query.order_by(SystemClient.client_id)))

    # Bootstrap ----------------------------------------------------------------------------------------

    def bootstrap(self, db: Session, data: BootstrapFile) -> Changes:
        """Load a whole network description; a second run with the same file changes nothing."""
        self._check_unique(data)
        changes = Changes()
        changes.count("networks", self.upsert_network(db, data.network))
        db.flush()
        for org in data.organizations:
            changes.count("organizations", self.upsert_organization(db, data.network.id, org)[1])
        db.flush()
        for user in data.users:
            changes.count("users", self.upsert_user(db, data.network.id, user)[1])
        for client in data.clients:
            changes.count("clients", self.upsert_client(db, data.network.id, client))
        return changes

    # Helpers ------------------------------------------------------------------------------------------

    @staticmethod
    def _check_unique(data: BootstrapFile) -> None:
        for kind, values in (
            ("organization id", [o.id for o in data.organizations if o.id]),
            ("username", [u.username for u in data.users]),
            ("client_id", [c.client_id for c in data.clients]),
        ):
            seen = set()
            for value in values:
                if value in seen:
                    raise BadRequest(f"duplicate {kind} {value!r} in the file")
                seen.add(value)

    def _check_profession(self, profession: str) -> None:
        if profession not in self.professions:
            self._bad(f"unknown profession {profession!r}; see schemas/codesystems/profession.json")

    @staticmethod
    def _bad(message: str) -> None:
        raise BadRequest(message)

    def _set_totp(self, user: User, secret: str) -> None:
        user.totp_secret_sealed = self.ctx.box.seal(secret.encode(), f"totp:{user.id}")
        user.totp_enabled = True
        user.totp_last_step = 0

    def _totp_secret(self, user: User) -> str | None:
        if user.totp_secret_sealed is None:
            return None
        return self.ctx.box.open(user.totp_secret_sealed, f"totp:{user.id}").decode()
