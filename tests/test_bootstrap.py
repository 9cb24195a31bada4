"""Loading a network description: validated against schemas/ codes, idempotent, never crossing networks."""

from __future__ import annotations

import copy
import uuid
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import select

from services.auth.directory.models import Network, Organization, User
from services.auth.directory.schemas import DEFAULT_PURPOSE, BootstrapFile
from services.kit.errors import BadRequest, Conflict
from tests.infra import PASSWORD, LiveServer, bootstrap


def description(tag: str | None = None) -> dict[str, Any]:
    tag = tag or uuid.uuid4().hex[:8]
    return {
        "network": {"id": f"bs-{tag}", "name": "ブートストラップ網", "settings": {"consent_required": False}},
        "organizations": [
            {"id": f"bs-hosp-{tag}", "name": "テスト病院", "type": "hospital"},
            {"id": f"bs-clinic-{tag}", "name": "テスト診療所", "type": "clinic"},
        ],
        "users": [
            {"username": f"bs-doc-{tag}", "password": PASSWORD, "organization": f"bs-clinic-{tag}",
             "profession": "physician", "name": "医師 太郎", "totp_secret": "JBSWY3DPEHPK3PXPJBSWY3DP"},
            {"id": f"bs-ns-{tag}", "username": f"bs-ns-{tag}", "password": PASSWORD,
             "organization": f"bs-hosp-{tag}", "profession": "nurse", "name": "看護 花子", "admin": True},
        ],
        "clients": [],
    }


def snapshot(server: LiveServer, network_id: str) -> list[tuple[Any, ...]]:
    with server.auth.db.transaction() as db:
        net = db.get(Network, network_id)
        assert net is not None
        rows: list[tuple[Any, ...]] = [(net.id, net.name, repr(net.settings))]
        rows += [(o.id, o.name, o.type) for o in db.scalars(select(Organization).where(
            Organization.network_id == network_id).order_by(Organization.id))]
        rows += [(u.id, u.username, u.name, u.profession, u.is_admin, u.password_hash, u.totp_secret_sealed,
                  u.updated_at) for u in db.scalars(select(User).where(User.network_id == network_id)
                                                   .order_by(User.id))]
        return rows


def test_bootstrap_twice_changes_nothing(server: LiveServer) -> None:
    data = description()
    first = bootstrap(server, data)
    assert first.created == {"networks": 1, "organizations": 2, "users": 2}
    before = snapshot(server, data["network"]["id"])
    second = bootstrap(server, copy.deepcopy(data))
    assert not second.changed
    assert snapshot(server, data["network"]["id"]) == before


def test_generated_and_given_user_ids(server: LiveServer) -> None:
    data = description()
    bootstrap(server, data)
    with server.auth.db.transaction() as db:
        given = db.scalars(select(User).where(User.username == data["users"][1]["username"])).one()
        generated = db.scalars(select(User).where(User.username == data["users"][0]["username"])).one()
        assert given.id == data["users"][1]["id"]
        assert generated.id and generated.id != generated.username
        assert generated.totp_enabled and given.is_admin


def test_changed_file_updates_in_place(server: LiveServer) -> None:
    data = description()
    bootstrap(server, data)
    data["organizations"][0]["name"] = "改名した病院"
    data["users"][1]["password"] = "a brand new password"
    changes = bootstrap(server, data)
    assert changes.updated == {"organizations": 1, "users": 1}
    http = server.client()
    answer = http.post("/auth/login", json={"username": data["users"][1]["username"],
                                            "password": "a brand new password"})
    assert answer.status_code == 200


def test_settings_default_when_absent(server: LiveServer) -> None:
    data = description()
    del data["network"]["settings"]
    bootstrap(server, data)
    with server.auth.db.transaction() as db:
        net = db.get(Network, data["network"]["id"])
        assert net is not None
        assert net.settings == {"mfa_required": True, "consent_required": True,
                                "team_join_approvals": ["invitee", "organization"], "emergency_review_days": 90,
                                "purpose": DEFAULT_PURPOSE,
                                "responsible_party": None, "contact": None}


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d["organizations"][0].update(type="castle"), "organization type 'castle'"),
        (lambda d: d["users"][0].update(profession="wizard"), "profession 'wizard'"),
        (lambda d: d["users"][0].update(organization="nowhere"), "organization nowhere not found"),
        (lambda d: d["users"].append(dict(d["users"][0])), "duplicate username"),
    ],
)
def test_invalid_descriptions_are_refused_whole(server: LiveServer, mutate: Any, message: str) -> None:
    data = description()
    mutate(data)
    with pytest.raises(BadRequest, match=message):
        bootstrap(server, data)
    with server.auth.db.transaction() as db:
        assert db.get(Network, data["network"]["id"]) is None  # nothing half-written


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d["network"].update(id="has space"),
        lambda d: d["network"]["settings"].update(mfa_requird=False),
        lambda d: d["users"][0].update(totp_secret="not base32!"),
        lambda d: d["users"][0].update(password="short"),
        lambda d: d.update(extra_section=[]),
    ],
)
def test_malformed_descriptions_fail_validation(mutate: Any) -> None:
    data = description()
    mutate(data)
    with pytest.raises(ValidationError):
        BootstrapFile.model_validate(data)


def test_ids_never_cross_networks(server: LiveServer) -> None:
    first = description()
    bootstrap(server, first)
    other = description()
    other["organizations"][0]["id"] = first["organizations"][0]["id"]
    with pytest.raises(Conflict, match="another network"):
        bootstrap(server, other)
    other = description()
    other["users"][0]["username"] = first["users"][0]["username"]
    with pytest.raises(Conflict, match="another network"):
        bootstrap(server, other)
