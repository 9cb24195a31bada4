"""Organisation administrators: set in the bootstrap file or the admin API, carried as the ``org-admin`` scope.

An organisation administrator speaks for their own organisation (e.g. approving a colleague's joining of a care
team); they are not network administrators, and network administrators are not organisation administrators.
"""

from __future__ import annotations

import copy
import uuid
from typing import Any

import httpx
import jwt
import orjson
import pytest
from sqlalchemy import text

from services.auth.directory.models import User
from services.auth.directory.schemas import BootstrapFile
from services.auth.sessions.tokens import ADMIN_SCOPE, ORG_ADMIN_SCOPE
from services.demo import DEMO_FILE
from services.kit.db import make_engine
from services.kit.migrate import upgrade
from services.kit.tokens import Principal, keys_from_jwks, unverified_kid, verify
from tests.infra import LiveServer, Network, bootstrap, make_network
from tests.test_bootstrap import description


def scopes_of(tokens: dict[str, Any]) -> list[str]:
    return str(jwt.decode(tokens["access_token"], options={"verify_signature": False})["scope"]).split()


def admin_http(network: Network) -> httpx.Client:
    http = network.server.client()
    http.headers.update(network.bearer("admin"))
    return http


@pytest.fixture
def with_head(server: LiveServer) -> Network:
    """A network whose clinic has an organisation administrator, ``head`` (a physician, not a network admin)."""
    return make_network(server, extra_users=[{"role": "head", "organization": "clinic", "profession": "physician",
                                              "org_admin": True}])


# The scope and the principal -----------------------------------------------------------------------------


def test_the_scope_string() -> None:
    assert (ORG_ADMIN_SCOPE, ADMIN_SCOPE) == ("org-admin", "admin")


def test_org_admins_get_the_org_admin_scope_and_nothing_more(with_head: Network) -> None:
    head = scopes_of(with_head.login("head"))
    assert "org-admin" in head and "admin" not in head and "user/*.cruds" in head
    assert "org-admin" not in scopes_of(with_head.login("care_manager"))
    network_admin = scopes_of(with_head.login("admin"))
    assert "admin" in network_admin and "org-admin" not in network_admin


def test_both_roles_give_both_scopes(server: LiveServer, with_head: Network) -> None:
    head = with_head.user("head")
    assert admin_http(with_head).patch(f"/auth/admin/users/{head['id']}", json={"admin": True}).status_code == 200
    assert {"admin", "org-admin"} <= set(scopes_of(with_head.login("head")))


def test_the_verified_principal_is_an_org_admin(server: LiveServer, with_head: Network) -> None:
    keys = keys_from_jwks(server.client().get("/auth/jwks.json").json())

    def principal(role: str) -> Principal:
        token = with_head.login(role)["access_token"]
        return verify(token, keys[unverified_kid(token)], issuer=f"{server.base_url}/auth",
                      audience=f"{server.base_url}/fhir")

    head, nurse, network_admin = principal("head"), principal("nurse"), principal("admin")
    assert head.is_org_admin and not head.is_admin
    assert head.organization == with_head.orgs["clinic"]
    assert not nurse.is_org_admin and not nurse.is_admin
    assert network_admin.is_admin and not network_admin.is_org_admin


def make_principal(kind: str, scope: str) -> Principal:
    return Principal(kind=kind, subject="s", network="n", organization="o", profession=None, scopes=scope.split(),
                     session=None, device=None, claims={})


@pytest.mark.parametrize(("kind", "scope", "org_admin", "admin"), [
    ("user", "openid fhirUser user/*.cruds org-admin", True, False),
    ("user", "openid fhirUser user/*.cruds admin org-admin", True, True),
    ("user", "openid fhirUser user/*.cruds admin", False, True),
    ("user", "openid fhirUser user/*.cruds", False, False),
    ("user", "org-administrator organisation-admin", False, False),  # whole scopes only, not prefixes
    ("system", "system/Patient.rs org-admin", False, False),  # a system client is nobody's administrator
])
def test_principal_is_org_admin(kind: str, scope: str, org_admin: bool, admin: bool) -> None:
    principal = make_principal(kind, scope)
    assert (principal.is_org_admin, principal.is_admin) == (org_admin, admin)


# The admin API -------------------------------------------------------------------------------------------


def new_user(network: Network, **overrides: Any) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:8]
    return {"username": f"head-{tag}", "password": f"head nurse passphrase {tag}",
            "organization": network.orgs["station"], "profession": "nurse", "name": "管理者 看護師", **overrides}


def test_created_users_are_not_org_admins_unless_asked(server: LiveServer, network: Network) -> None:
    admin = admin_http(network)
    plain = admin.post("/auth/admin/users", json=new_user(network))
    assert plain.status_code == 201, plain.text
    assert plain.json()["org_admin"] is False
    head = admin.post("/auth/admin/users", json=new_user(network, org_admin=True))
    assert head.status_code == 201, head.text
    assert head.json()["org_admin"] is True and head.json()["admin"] is False
    assert admin.get(f"/auth/admin/users/{head.json()['id']}").json()["org_admin"] is True
    listed = {u["id"]: u["org_admin"] for u in admin.get("/auth/admin/users").json()}
    assert listed[head.json()["id"]] is True and listed[plain.json()["id"]] is False


def test_setting_and_unsetting_org_admin(server: LiveServer, network: Network) -> None:
    admin = admin_http(network)
    nurse = network.user("nurse")
    answer = admin.patch(f"/auth/admin/users/{nurse['id']}", json={"org_admin": True})
    assert answer.status_code == 200, answer.text
    assert answer.json()["org_admin"] is True and answer.json()["admin"] is False
    assert "org-admin" in scopes_of(network.login("nurse"))
    me = server.client().get("/auth/me", headers=network.bearer("nurse")).json()
    assert me["org_admin"] is True and me["admin"] is False
    answer = admin.patch(f"/auth/admin/users/{nurse['id']}", json={"org_admin": False})
    assert answer.status_code == 200 and answer.json()["org_admin"] is False
    assert "org-admin" not in scopes_of(network.login("nurse"))
    changed = admin.get("/auth/admin/security-events", params={"type": "user_changed"}).json()
    assert changed[0]["detail"] == {"target": nurse["id"], "fields": ["org_admin"]}


def test_a_refreshed_token_follows_the_directory(server: LiveServer, with_head: Network) -> None:
    tokens = with_head.login("head")
    head = with_head.user("head")
    assert admin_http(with_head).patch(f"/auth/admin/users/{head['id']}", json={"org_admin": False}).status_code == 200
    refreshed = server.client().post("/auth/token", data={"grant_type": "refresh_token",
                                                          "refresh_token": tokens["refresh_token"]})
    assert refreshed.status_code == 200, refreshed.text
    assert "org-admin" not in scopes_of(refreshed.json()) and "org-admin" not in refreshed.json()["scope"].split()


def test_moving_to_another_organisation_drops_org_admin(server: LiveServer, with_head: Network) -> None:
    admin = admin_http(with_head)
    head = with_head.user("head")
    same = admin.patch(f"/auth/admin/users/{head['id']}", json={"organization": with_head.orgs["clinic"]})
    assert same.json()["org_admin"] is True  # naming the current organisation is no move
    moved = admin.patch(f"/auth/admin/users/{head['id']}", json={"organization": with_head.orgs["hospital"]})
    assert moved.status_code == 200 and moved.json()["org_admin"] is False
    granted = admin.patch(f"/auth/admin/users/{head['id']}",
                          json={"organization": with_head.orgs["clinic"], "org_admin": True})
    assert granted.json()["organization"] == with_head.orgs["clinic"] and granted.json()["org_admin"] is True


def test_org_admins_are_not_network_admins(server: LiveServer, with_head: Network) -> None:
    http = server.client()
    http.headers.update(with_head.bearer("head"))
    assert http.get("/auth/admin/users").status_code == 403
    nurse = with_head.user("nurse")
    assert http.patch(f"/auth/admin/users/{nurse['id']}", json={"org_admin": True}).status_code == 403
    with server.auth.db.transaction() as db:
        row = db.get(User, nurse["id"])
        assert row is not None and not row.org_admin


def test_org_admin_must_be_a_boolean(network: Network) -> None:
    admin = admin_http(network)
    nurse = network.user("nurse")
    assert admin.patch(f"/auth/admin/users/{nurse['id']}", json={"org_admin": "sometimes"}).status_code == 400
    assert admin.post("/auth/admin/users", json=new_user(network, org_admin="yes please")).status_code == 400


# The bootstrap file --------------------------------------------------------------------------------------


def test_bootstrap_sets_and_unsets_org_admin(server: LiveServer) -> None:
    data = description()
    data["users"][0]["org_admin"] = True
    assert bootstrap(server, data).created["users"] == 2
    doctor, nurse = data["users"][0]["username"], data["users"][1]["username"]
    with server.auth.db.transaction() as db:
        rows = db.query(User).filter(User.username.in_([doctor, nurse]))
        flags = {u.username: (u.org_admin, u.is_admin) for u in rows}
    assert flags == {doctor: (True, False), nurse: (False, True)}  # absent means False
    assert not bootstrap(server, copy.deepcopy(data)).changed  # idempotent
    data["users"][0]["org_admin"] = False
    assert bootstrap(server, data).updated == {"users": 1}
    with server.auth.db.transaction() as db:
        assert not db.query(User).filter(User.username == doctor).one().org_admin


def test_the_demo_network_has_org_admins() -> None:
    demo = BootstrapFile.model_validate(orjson.loads(DEMO_FILE.read_bytes()))
    members: dict[str, list[Any]] = {}
    for user in demo.users:
        members.setdefault(user.organization, []).append(user)
    for org, users in members.items():  # someone can approve each organisation's joining of a care team
        assert any(u.org_admin for u in users), f"{org} has no organisation administrator"
    assert any(u.admin for u in demo.users) and not any(u.admin and u.org_admin for u in demo.users)


# The migration -------------------------------------------------------------------------------------------


def test_the_migration_keeps_users_and_their_sessions(database_url: str) -> None:
    """0002 adds ``users.org_admin`` in place: existing users become non-administrators and nothing that hangs
    off ``users`` by a cascading foreign key is lost (rebuilding the table on SQLite would delete sessions)."""
    engine = make_engine(database_url)
    try:
        upgrade("auth", engine, "0001")
        now = "2026-01-01 00:00:00+00:00"
        with engine.begin() as connection:
            connection.execute(text("INSERT INTO networks VALUES ('n', 'n', '{}', :now)"), {"now": now})
            connection.execute(text("INSERT INTO organizations VALUES ('o', 'n', 'o', 'clinic', :now)"), {"now": now})
            connection.execute(text(
                "INSERT INTO users (id, network_id, organization_id, username, name, profession, is_admin, disabled,"
                " password_hash, totp_enabled, totp_last_step, created_at, updated_at)"
                " VALUES ('u', 'n', 'o', 'u', 'u', 'nurse', false, false, 'x', false, 0, :now, :now)"), {"now": now})
            connection.execute(text("INSERT INTO sessions (id, user_id, created_at, expires_at)"
                                    " VALUES ('s', 'u', :now, :now)"), {"now": now})
        upgrade("auth", engine)
        with engine.connect() as connection:
            assert connection.execute(text("SELECT org_admin FROM users")).scalar_one() in (False, 0)
            assert connection.execute(text("SELECT count(*) FROM sessions")).scalar_one() == 1
    finally:
        engine.dispose()
