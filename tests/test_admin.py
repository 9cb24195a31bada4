"""The network administrator's API: settings, organisations, users, system clients, the security log.

An administrator acts inside their own network only: another network's ids answer 404 (or, where an id is
deployment-wide and taken, 409/400) and nothing of the other network changes.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm
from sqlalchemy import update

from services.auth.clients.models import SystemClient as SystemClientRow
from services.auth.directory.models import Network as NetworkRow
from services.auth.directory.models import Organization, User
from services.auth.directory.schemas import DEFAULT_PURPOSE
from tests.infra import PASSWORD, LiveServer, Network, make_network
from tests.test_clients import ClientKey, SystemClient

DEFAULT_SETTINGS = {"mfa_required": True, "consent_required": True, "team_join_approvals": ["invitee", "organization"],
                    "emergency_review_days": 90,
                    "purpose": DEFAULT_PURPOSE, "responsible_party": None, "contact": None}

# Helpers -------------------------------------------------------------------------------------------------


def admin_http(network: Network, role: str = "admin") -> httpx.Client:
    """A client acting as ``role`` of ``network`` (the network administrator unless told otherwise)."""
    http = network.server.client()
    http.headers.update(network.bearer(role))
    return http


def public_jwk() -> dict[str, Any]:
    jwk: dict[str, Any] = dict(ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP384R1()).public_key(), as_dict=True))
    jwk["kid"] = uuid.uuid4().hex[:12]
    return jwk


def client_body(client_id: str, organization: str, jwk: dict[str, Any] | None = None,
                scope: str = "system/Patient.rs") -> dict[str, Any]:
    return {"client_id": client_id, "organization": organization, "jwks": {"keys": [jwk or public_jwk()]},
            "scope": scope}


def new_user_body(in_network: Network, **overrides: Any) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:8]
    body = {"username": f"pharmacist-{tag}", "password": f"pharmacy passphrase {tag}",
            "organization": in_network.orgs["hospital"], "profession": "pharmacist", "name": "テスト 薬剤師"}
    body.update(overrides)
    return body


@pytest.fixture
def other(server: LiveServer) -> Network:
    """A second network on the same deployment, with a system client of its own."""
    key = ClientKey.generate()
    network = make_network(server, clients=[{"client_id": f"ehr-{uuid.uuid4().hex[:8]}", "organization": "hospital",
                                             "jwks": {"keys": [key.public_jwk()]}, "scope": "system/Patient.rs"}])
    with server.auth.db.transaction() as db:
        row = db.query(SystemClientRow).filter(SystemClientRow.network_id == network.id).one()
        network.clients["ehr"] = SystemClient(server=server, network=network, client_id=row.client_id, key=key)
    return network


# Who may call --------------------------------------------------------------------------------------------

ADMIN_CALLS = [
    ("GET", "/auth/admin/network", None),
    ("PATCH", "/auth/admin/network/settings", {"consent_required": False}),
    ("GET", "/auth/admin/organizations", None),
    ("POST", "/auth/admin/organizations", {"name": "x", "type": "clinic"}),
    ("GET", "/auth/admin/users", None),
    ("POST", "/auth/admin/users", {"username": "intruder-made", "password": "long enough pw", "organization": "x",
                                   "profession": "clerk", "name": "x"}),
    ("GET", "/auth/admin/users/{user}", None),
    ("PATCH", "/auth/admin/users/{user}", {"admin": True}),
    ("POST", "/auth/admin/users/{user}/reset-mfa", None),
    ("GET", "/auth/admin/users/{user}/devices", None),
    ("DELETE", "/auth/admin/users/{user}/devices/whatever", None),
    ("GET", "/auth/admin/clients", None),
    ("PUT", "/auth/admin/clients/ehr-x", None),
    ("DELETE", "/auth/admin/clients/ehr-x", None),
    ("GET", "/auth/admin/security-events", None),
]


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_CALLS)
def test_non_admins_get_403(server: LiveServer, network: Network, method: str, path: str,
                            body: dict[str, Any] | None) -> None:
    target = network.user("nurse")["id"]
    http = admin_http(network, "care_manager")
    answer = http.request(method, path.format(user=target), json=body)
    assert answer.status_code == 403, answer.text
    assert answer.json()["error"] == "forbidden"
    # Nothing moved: the caller tried to make themselves or someone else an administrator, among others.
    with server.auth.db.transaction() as db:
        nurse = db.get(User, target)
        assert nurse is not None and not nurse.is_admin and nurse.totp_enabled
        network_row = db.get(NetworkRow, network.id)
        assert network_row is not None and network_row.settings["consent_required"] is True


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_CALLS)
def test_anonymous_callers_get_401(server: LiveServer, network: Network, method: str, path: str,
                                   body: dict[str, Any] | None) -> None:
    answer = server.client().request(method, path.format(user=network.user("nurse")["id"]), json=body)
    assert answer.status_code == 401
    assert "www-authenticate" in answer.headers


def test_admin_rights_follow_the_directory_not_the_token(server: LiveServer, network: Network) -> None:
    """A demoted administrator loses the admin API at once, even with a token that still says ``admin``."""
    second_admin = network.user("clerk")
    admin = admin_http(network)
    assert admin.patch(f"/auth/admin/users/{second_admin['id']}", json={"admin": True}).status_code == 200
    tokens = network.login("clerk")
    assert "admin" in jwt.decode(tokens["access_token"], options={"verify_signature": False})["scope"].split()
    clerk = server.client()
    clerk.headers["Authorization"] = f"Bearer {tokens['access_token']}"
    assert clerk.get("/auth/admin/users").status_code == 200
    assert admin.patch(f"/auth/admin/users/{second_admin['id']}", json={"admin": False}).status_code == 200
    assert clerk.get("/auth/admin/users").status_code == 403


# Network settings ----------------------------------------------------------------------------------------


def test_network_shows_its_settings(server: LiveServer, network: Network) -> None:
    answer = admin_http(network).get("/auth/admin/network")
    assert answer.status_code == 200
    body = answer.json()
    assert body["id"] == network.id
    assert body["name"].startswith("テスト連携ネットワーク")
    # make_network turns mfa off; the rest are the defaults.
    assert body["settings"] == {**DEFAULT_SETTINGS, "mfa_required": False}


def test_a_network_without_stored_settings_gets_the_defaults(server: LiveServer, network: Network) -> None:
    admin = admin_http(network)  # log in first: with the defaults the administrator would have to enrol a factor
    with server.auth.db.transaction() as db:
        db.execute(update(NetworkRow).where(NetworkRow.id == network.id).values(settings={}))
    assert admin.get("/auth/admin/network").json()["settings"] == DEFAULT_SETTINGS


def test_patching_settings_changes_only_the_named_keys(server: LiveServer, network: Network) -> None:
    admin = admin_http(network)
    answer = admin.patch("/auth/admin/network/settings", json={"consent_required": False})
    assert answer.status_code == 200, answer.text
    expected = {**DEFAULT_SETTINGS, "mfa_required": False, "consent_required": False}
    assert answer.json() == expected
    answer = admin.patch("/auth/admin/network/settings", json={"team_join_approvals": ["patient"]})
    expected["team_join_approvals"] = ["patient"]
    assert answer.json() == expected
    assert admin.get("/auth/admin/network").json()["settings"] == expected
    assert admin.patch("/auth/admin/network/settings", json={}).json() == expected


def test_patched_settings_take_effect(server: LiveServer, network: Network) -> None:
    user = network.user("care_manager")
    assert admin_http(network).patch("/auth/admin/network/settings", json={"mfa_required": True}).status_code == 200
    answer = server.client().post("/auth/login", json={"username": user["username"], "password": PASSWORD})
    assert answer.status_code == 200
    assert answer.json().get("mfa_enrollment_required") is True
    assert "access_token" not in answer.json()


def test_settings_changes_are_audited(server: LiveServer, network: Network) -> None:
    admin = admin_http(network)
    admin.patch("/auth/admin/network/settings", json={"consent_required": False})
    found = admin.get("/auth/admin/security-events", params={"type": "network_settings_changed"}).json()
    assert len(found) == 1
    assert found[0]["user"] == network.user("admin")["id"]
    assert found[0]["detail"]["settings"]["consent_required"] is False


@pytest.mark.parametrize("body", [
    {"mfa_requried": False},
    {"consent_required": False, "unknown": 1},
    {"mfa_required": "maybe"},
    {"consent_required": [True]},
    {"team_join_approvals": ["everyone"]},
    {"team_join_approvals": "invitee"},
    {"team_join_approvals": [None]},
])
def test_bad_settings_are_refused(server: LiveServer, network: Network, body: dict[str, Any]) -> None:
    admin = admin_http(network)
    before = admin.get("/auth/admin/network").json()["settings"]
    answer = admin.patch("/auth/admin/network/settings", json=body)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"] == "invalid_request"
    assert admin.get("/auth/admin/network").json()["settings"] == before


def test_settings_of_one_network_do_not_touch_another(server: LiveServer, network: Network, other: Network) -> None:
    admin_http(network).patch("/auth/admin/network/settings", json={"consent_required": False,
                                                                    "team_join_approvals": []})
    theirs = admin_http(other).get("/auth/admin/network").json()
    assert theirs["id"] == other.id
    assert theirs["settings"] == {**DEFAULT_SETTINGS, "mfa_required": False}


# Organisations -------------------------------------------------------------------------------------------


def test_organizations_list_this_network_only(server: LiveServer, network: Network, other: Network) -> None:
    answer = admin_http(network).get("/auth/admin/organizations")
    assert answer.status_code == 200
    listed = answer.json()
    assert [o["id"] for o in listed] == sorted(network.orgs.values())
    assert {o["id"]: o["type"] for o in listed}[network.orgs["station"]] == "visiting-nurse-station"
    assert not {o["id"] for o in listed} & set(other.orgs.values())


def test_creating_an_organization(server: LiveServer, network: Network) -> None:
    admin = admin_http(network)
    org_id = f"pharmacy-{uuid.uuid4().hex[:8]}"
    answer = admin.post("/auth/admin/organizations", json={"id": org_id, "name": "テスト薬局", "type": "pharmacy"})
    assert answer.status_code == 201, answer.text
    assert answer.json() == {"id": org_id, "name": "テスト薬局", "type": "pharmacy"}
    assert org_id in {o["id"] for o in admin.get("/auth/admin/organizations").json()}
    # Without an id the service makes one.
    answer = admin.post("/auth/admin/organizations", json={"name": "無名の事業所", "type": "care-service"})
    assert answer.status_code == 201
    made = answer.json()["id"]
    assert made and made != org_id
    with server.auth.db.transaction() as db:
        row = db.get(Organization, made)
        assert row is not None and row.network_id == network.id


def test_unknown_organization_type_is_a_400_naming_the_code(server: LiveServer, network: Network) -> None:
    admin = admin_http(network)
    answer = admin.post("/auth/admin/organizations", json={"name": "謎の施設", "type": "spaceport"})
    assert answer.status_code == 400
    assert answer.json()["error"] == "invalid_request"
    assert "spaceport" in answer.json()["error_description"]
    assert len(admin.get("/auth/admin/organizations").json()) == len(network.orgs)


@pytest.mark.parametrize("body", [{"name": "x"}, {"type": "clinic"}, {"name": "", "type": "clinic"},
                                  {"id": "bad id!", "name": "x", "type": "clinic"},
                                  {"name": "x", "type": "clinic", "network": "elsewhere"}])
def test_malformed_organizations_are_refused(server: LiveServer, network: Network, body: dict[str, Any]) -> None:
    answer = admin_http(network).post("/auth/admin/organizations", json=body)
    assert answer.status_code == 400


def test_duplicate_organization_id_is_a_409(server: LiveServer, network: Network, other: Network) -> None:
    admin = admin_http(network)
    own = network.orgs["clinic"]
    answer = admin.post("/auth/admin/organizations", json={"id": own, "name": "上書き", "type": "hospital"})
    assert answer.status_code == 409
    # Organisation ids are deployment-wide: another network's id is taken too, and stays theirs unchanged.
    theirs = other.orgs["clinic"]
    answer = admin.post("/auth/admin/organizations", json={"id": theirs, "name": "乗っ取り", "type": "hospital"})
    assert answer.status_code == 409
    with server.auth.db.transaction() as db:
        for org_id, network_id in ((own, network.id), (theirs, other.id)):
            row = db.get(Organization, org_id)
            assert row is not None
            assert (row.network_id, row.name, row.type) == (network_id, "テスト在宅クリニック", "clinic")


# Users ---------------------------------------------------------------------------------------------------


def test_creating_a_user_who_can_then_log_in(server: LiveServer, network: Network) -> None:
    admin = admin_http(network)
    body = new_user_body(network)
    answer = admin.post("/auth/admin/users", json=body)
    assert answer.status_code == 201, answer.text
    created = answer.json()
    assert created["id"]
    assert {k: created[k] for k in ("username", "organization", "profession", "name")} == {
        k: body[k] for k in ("username", "organization", "profession", "name")}
    assert created["admin"] is False and created["disabled"] is False and created["mfa_enabled"] is False
    assert body["password"] not in answer.text
    assert admin.get(f"/auth/admin/users/{created['id']}").json() == created

    login = server.client().post("/auth/login", json={"username": body["username"], "password": body["password"]})
    assert login.status_code == 200, login.text
    token = jwt.decode(login.json()["access_token"], options={"verify_signature": False})
    assert (token["sub"], token["net"], token["org"], token["prof"]) == (
        created["id"], network.id, network.orgs["hospital"], "pharmacist")


def test_creating_a_user_with_an_id(server: LiveServer, network: Network) -> None:
    user_id = f"pharmacist-{uuid.uuid4().hex[:8]}"
    answer = admin_http(network).post("/auth/admin/users", json=new_user_body(network, id=user_id))
    assert answer.status_code == 201
    assert answer.json()["id"] == user_id


def test_unknown_profession_is_a_400_naming_the_code(server: LiveServer, network: Network) -> None:
    admin = admin_http(network)
    body = new_user_body(network, profession="wizard")
    answer = admin.post("/auth/admin/users", json=body)
    assert answer.status_code == 400
    assert "wizard" in answer.json()["error_description"]
    assert body["username"] not in {u["username"] for u in admin.get("/auth/admin/users").json()}


@pytest.mark.parametrize("overrides", [
    {"password": "short"},
    {"username": "has space"},
    {"username": ""},
    {"organization": "no-such-organization"},
    {"id": "bad id!"},
    {"name": ""},
    {"totp_secret": "not base32 !!"},
    {"network": "elsewhere"},
])
def test_malformed_users_are_refused(server: LiveServer, network: Network, overrides: dict[str, Any]) -> None:
    admin = admin_http(network)
    before = len(admin.get("/auth/admin/users").json())
    answer = admin.post("/auth/admin/users", json=new_user_body(network, **overrides))
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"] == "invalid_request"
    assert len(admin.get("/auth/admin/users").json()) == before


def test_duplicate_username_or_id_is_a_409(server: LiveServer, network: Network, other: Network) -> None:
    admin = admin_http(network)
    mine = network.user("clerk")
    theirs = other.user("clerk")
    # Usernames are deployment-wide: taken in this network or in another one.
    for username in (mine["username"], theirs["username"]):
        answer = admin.post("/auth/admin/users", json=new_user_body(network, username=username))
        assert answer.status_code == 409, answer.text
    for user_id in (mine["id"], theirs["id"]):
        answer = admin.post("/auth/admin/users", json=new_user_body(network, id=user_id))
        assert answer.status_code == 409, answer.text
    # Nothing was overwritten: both clerks still log in with their own passwords.
    network.login("clerk")
    other.login("clerk")
    with server.auth.db.transaction() as db:
        row = db.get(User, theirs["id"])
        assert row is not None and row.network_id == other.id and row.organization_id == other.orgs["clinic"]


def test_patching_a_user(server: LiveServer, network: Network) -> None:
    admin = admin_http(network)
    user = network.user("clerk")
    answer = admin.patch(f"/auth/admin/users/{user['id']}", json={
        "name": "新しい 名前", "organization": network.orgs["office"], "profession": "care-worker"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["name"] == "新しい 名前"
    assert answer.json()["organization"] == network.orgs["office"]
    assert answer.json()["profession"] == "care-worker"
    assert admin.get(f"/auth/admin/users/{user['id']}").json() == answer.json()
    token = jwt.decode(network.login("clerk")["access_token"], options={"verify_signature": False})
    assert (token["org"], token["prof"]) == (network.orgs["office"], "care-worker")
    changed = admin.get("/auth/admin/security-events", params={"type": "user_changed"}).json()
    assert changed[0]["detail"] == {"target": user["id"], "fields": ["name", "organization", "profession"]}


@pytest.mark.parametrize("body", [{"profession": "wizard"}, {"organization": "no-such-organization"},
                                  {"username": "renamed"}, {"name": ""}, {"password": "short"},
                                  {"disabled": "sometimes"}])
def test_bad_user_patches_are_refused(server: LiveServer, network: Network, body: dict[str, Any]) -> None:
    admin = admin_http(network)
    user = network.user("clerk")
    before = admin.get(f"/auth/admin/users/{user['id']}").json()
    answer = admin.patch(f"/auth/admin/users/{user['id']}", json=body)
    assert answer.status_code == 400, answer.text
    assert admin.get(f"/auth/admin/users/{user['id']}").json() == before
    network.login("clerk")


def test_listing_users(server: LiveServer, network: Network, other: Network) -> None:
    admin = admin_http(network)
    everyone = admin.get("/auth/admin/users").json()
    assert {u["id"] for u in everyone} == {u["id"] for u in network.users.values()}
    assert [u["username"] for u in everyone] == sorted(u["username"] for u in everyone)
    clinic = admin.get("/auth/admin/users", params={"organization": network.orgs["clinic"]}).json()
    assert {u["id"] for u in clinic} == {network.user(r)["id"] for r in ("physician", "clerk", "admin")}
    station = admin.get("/auth/admin/users", params={"organization": network.orgs["station"]}).json()
    assert [u["id"] for u in station] == [network.user("nurse")["id"]]
    assert station[0]["mfa_enabled"] is True
    assert admin.get("/auth/admin/users", params={"organization": network.orgs["hospital"]}).json() == []
    # Another network's organisation lists none of its users.
    assert admin.get("/auth/admin/users", params={"organization": other.orgs["clinic"]}).json() == []
    assert "password" not in json.dumps(everyone)


# System clients ------------------------------------------------------------------------------------------


def test_clients_put_list_and_delete(server: LiveServer, network: Network) -> None:
    admin = admin_http(network)
    assert admin.get("/auth/admin/clients").json() == []
    client_id = f"ehr-{uuid.uuid4().hex[:8]}"
    key = ClientKey.generate()
    body = client_body(client_id, network.orgs["hospital"], key.public_jwk(), "system/Patient.rs")
    answer = admin.put(f"/auth/admin/clients/{client_id}", json=body)
    assert answer.status_code == 200, answer.text
    expected = {"client_id": client_id, "organization": network.orgs["hospital"], "scope": "system/Patient.rs",
                "disabled": False, "kids": [key.kid]}
    assert answer.json() == expected
    assert admin.get("/auth/admin/clients").json() == [expected]
    client = SystemClient(server=server, network=network, client_id=client_id, key=key)
    assert client.token().status_code == 200

    answer = admin.delete(f"/auth/admin/clients/{client_id}")
    assert answer.status_code == 200
    assert answer.json() == {**expected, "disabled": True}
    assert admin.get("/auth/admin/clients").json() == [{**expected, "disabled": True}]
    assert client.token().status_code == 401

    # Putting it again (a new key, a wider scope) brings it back.
    new_key = ClientKey.generate()
    body = client_body(client_id, network.orgs["hospital"], new_key.public_jwk(),
                       "system/Patient.rs system/Observation.rs")
    answer = admin.put(f"/auth/admin/clients/{client_id}", json=body)
    assert answer.status_code == 200
    assert answer.json()["disabled"] is False and answer.json()["kids"] == [new_key.kid]
    assert client.token().status_code == 401  # the old key is gone
    assert SystemClient(server=server, network=network, client_id=client_id, key=new_key).token().status_code == 200
    kinds = [e["type"] for e in admin.get("/auth/admin/security-events").json()]
    assert kinds.count("client_registered") == 2 and kinds.count("client_disabled") == 1


@pytest.mark.parametrize("change", ["path differs", "private key", "small rsa", "no keys", "unknown organization",
                                    "empty scope"])
def test_bad_clients_are_refused(server: LiveServer, network: Network, change: str) -> None:
    admin = admin_http(network)
    client_id = f"ehr-{uuid.uuid4().hex[:8]}"
    body = client_body(client_id, network.orgs["hospital"])
    path = f"/auth/admin/clients/{client_id}"
    if change == "path differs":
        path += "-other"
    elif change == "private key":
        private = ec.generate_private_key(ec.SECP384R1())
        body["jwks"] = {"keys": [json.loads(ECAlgorithm.to_jwk(private))]}
    elif change == "small rsa":
        from cryptography.hazmat.primitives.asymmetric import rsa
        from jwt.algorithms import RSAAlgorithm

        small = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()  # noqa: S505
        body["jwks"] = {"keys": [RSAAlgorithm.to_jwk(small, as_dict=True)]}
    elif change == "no keys":
        body["jwks"] = {"keys": []}
    elif change == "unknown organization":
        body["organization"] = "no-such-organization"
    else:
        body["scope"] = ""
    answer = admin.put(path, json=body)
    assert answer.status_code == (409 if change == "path differs" else 400), answer.text
    assert admin.get("/auth/admin/clients").json() == []


# Another network -----------------------------------------------------------------------------------------


def test_another_networks_ids_are_404(server: LiveServer, network: Network, other: Network) -> None:
    admin = admin_http(network)
    theirs = other.user("physician")["id"]
    their_client = other.clients["ehr"].client_id
    assert admin.get(f"/auth/admin/users/{theirs}").status_code == 404
    assert admin.get(f"/auth/admin/users/{theirs}/devices").status_code == 404
    assert admin.get("/auth/admin/users/no-such-user").status_code == 404
    assert admin.delete(f"/auth/admin/clients/{their_client}").status_code == 404
    assert admin.delete("/auth/admin/clients/no-such-client").status_code == 404
    assert admin.get("/auth/admin/clients").json() == []
    assert their_client in {c["client_id"] for c in admin_http(other).get("/auth/admin/clients").json()}


def test_an_admin_cannot_change_another_networks_user(server: LiveServer, network: Network, other: Network) -> None:
    admin = admin_http(network)
    target = other.user("physician")
    for body in ({"disabled": True}, {"password": "taken over passphrase"}, {"admin": True},
                 {"organization": network.orgs["clinic"]}, {"name": "乗っ取り"}):
        answer = admin.patch(f"/auth/admin/users/{target['id']}", json=body)
        assert answer.status_code == 404, (body, answer.text)
    assert admin.post(f"/auth/admin/users/{target['id']}/reset-mfa").status_code == 404
    with server.auth.db.transaction() as db:
        row = db.get(User, target["id"])
        assert row is not None
        assert (row.network_id, row.organization_id, row.name, row.disabled, row.is_admin, row.totp_enabled) == (
            other.id, other.orgs["clinic"], "テスト physician", False, False, True)
    other.login("physician")


def test_an_admin_cannot_revoke_another_networks_device(server: LiveServer, network: Network, other: Network) -> None:
    owner = other.user("care_manager")
    tokens = other.login("care_manager")
    device = server.client().post("/auth/devices", json={"name": "他ネットワークの端末"},
                                  headers={"Authorization": f"Bearer {tokens['access_token']}"}).json()["id"]
    admin = admin_http(network)
    assert admin.delete(f"/auth/admin/users/{owner['id']}/devices/{device}").status_code == 404
    # Naming one's own user with the other network's device id does not work either.
    mine = network.user("care_manager")["id"]
    assert admin.delete(f"/auth/admin/users/{mine}/devices/{device}").status_code == 404
    answer = server.client().post("/auth/token", data={"grant_type": "refresh_token",
                                                       "refresh_token": tokens["refresh_token"]})
    assert answer.status_code == 200
    assert other.login("care_manager", device_id=device)


def test_another_networks_organisation_cannot_be_used(server: LiveServer, network: Network, other: Network) -> None:
    admin = admin_http(network)
    theirs = other.orgs["hospital"]
    answer = admin.post("/auth/admin/users", json=new_user_body(network, organization=theirs))
    assert answer.status_code == 400
    clerk = network.user("clerk")["id"]
    assert admin.patch(f"/auth/admin/users/{clerk}", json={"organization": theirs}).status_code == 400
    assert admin.get(f"/auth/admin/users/{clerk}").json()["organization"] == network.orgs["clinic"]
    answer = admin.put("/auth/admin/clients/ehr-crossing", json=client_body("ehr-crossing", theirs))
    assert answer.status_code == 400
    assert admin.get("/auth/admin/users", params={"organization": theirs}).json() == []


def test_an_admin_cannot_take_over_another_networks_client(server: LiveServer, network: Network,
                                                           other: Network) -> None:
    admin = admin_http(network)
    client = other.clients["ehr"]
    answer = admin.put(f"/auth/admin/clients/{client.client_id}",
                       json=client_body(client.client_id, network.orgs["hospital"]))
    assert answer.status_code == 409
    assert admin.get("/auth/admin/clients").json() == []
    with server.auth.db.transaction() as db:
        row = db.get(SystemClientRow, client.client_id)
        assert row is not None
        assert (row.network_id, row.organization_id, row.disabled) == (other.id, other.orgs["hospital"], False)
        assert [k["kid"] for k in row.jwks["keys"]] == [client.key.kid]
    assert client.token().status_code == 200


# The security log ----------------------------------------------------------------------------------------


def test_security_events_belong_to_the_network_and_hold_no_secrets(server: LiveServer, network: Network,
                                                                   other: Network) -> None:
    secrets_seen: list[str] = [PASSWORD]
    http = server.client(address="198.51.100.91")
    user = network.user("care_manager")
    wrong = f"wrong-password-{uuid.uuid4().hex}"
    http.post("/auth/login", json={"username": user["username"], "password": wrong})
    tokens = network.login("care_manager", http=http)
    again = server.client().post("/auth/token", data={"grant_type": "refresh_token",
                                                      "refresh_token": tokens["refresh_token"]}).json()
    server.client().post("/auth/token", data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]})
    admin_tokens = network.login("admin")
    admin = server.client()
    admin.headers["Authorization"] = f"Bearer {admin_tokens['access_token']}"
    body = new_user_body(network)
    created = admin.post("/auth/admin/users", json=body).json()
    changed = f"changed passphrase {uuid.uuid4().hex}"
    admin.patch(f"/auth/admin/users/{created['id']}", json={"password": changed})
    physician = network.login("physician")
    secrets_seen += [wrong, body["password"], changed, network.user("physician")["totp_secret"]]
    for pair in (tokens, again, admin_tokens, physician):
        secrets_seen += [pair["access_token"], pair["refresh_token"]]

    # The other network has its own events.
    other.login("clerk")
    server.client().post("/auth/login", json={"username": other.user("nurse")["username"], "password": wrong})

    answer = admin.get("/auth/admin/security-events", params={"limit": 1000})
    assert answer.status_code == 200
    found = answer.json()
    kinds = {(e["type"], e["outcome"]) for e in found}
    assert {("login", "failure"), ("login", "success"), ("refresh", "success"), ("refresh_reuse_detected", "failure"),
            ("user_created", "success"), ("user_changed", "success"), ("mfa", "success")} <= kinds
    assert [e["id"] for e in found] == sorted((e["id"] for e in found), reverse=True)
    assert any(e["address"] == "198.51.100.91" and e["type"] == "login" for e in found)

    ours = {u["id"] for u in network.users.values()} | {created["id"]}
    assert {e["user"] for e in found} <= ours
    theirs = {u["id"] for u in other.users.values()}
    their_events = admin_http(other).get("/auth/admin/security-events", params={"limit": 1000}).json()
    assert {e["user"] for e in their_events} & theirs
    assert not {e["user"] for e in their_events} & ours
    assert not {e["id"] for e in their_events} & {e["id"] for e in found}

    dump = json.dumps(found, ensure_ascii=False)
    for secret in secrets_seen:
        assert secret not in dump
    assert "password_hash" not in dump and "$argon2" not in dump


def test_security_events_filter_and_limit(server: LiveServer, network: Network) -> None:
    for _ in range(3):
        network.login("clerk")
    admin = admin_http(network)
    logins = admin.get("/auth/admin/security-events", params={"type": "login"}).json()
    assert len(logins) >= 4 and {e["type"] for e in logins} == {"login"}
    two = admin.get("/auth/admin/security-events", params={"limit": 2}).json()
    everything = admin.get("/auth/admin/security-events").json()
    assert two == everything[:2]
    assert len(admin.get("/auth/admin/security-events", params={"limit": 0}).json()) == 1
    assert admin.get("/auth/admin/security-events", params={"type": "no-such-type"}).json() == []
    assert admin.get("/auth/admin/security-events", params={"limit": "many"}).status_code == 400
