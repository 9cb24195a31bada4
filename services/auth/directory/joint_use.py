"""What a network publishes: its joint-use (共同利用) notice, generated from live data, and its access policy.

Sharing special-care personal information among a patient's team as joint use requires publishing, in advance,
the items shared, who shares them, for what purpose, and who is responsible (個人情報保護法 第27条第5項第3号).
Here: the categories of information (the sensitivity labels of sheet sections) and the sheet kinds, the network's
organisations as they are now, and the purpose, responsible party and contact from the network's settings.

``GET /auth/networks/{id}/joint-use`` answers HTML to a browser and JSON to ``Accept: application/json``; it needs
no login, and names organisations only — never a person.

``GET /auth/networks/{id}/policy`` is the part of the network's settings that says how sharing works (consent
required, the approvals a new team participant needs): the share service reads it over HTTP
(services/share/access/policy.py), and anyone may, as it is what the notice promises.
"""

from __future__ import annotations

from html import escape
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from services.auth.context import AuthContext
from services.auth.deps import Context, DbSession
from services.auth.directory.models import Organization
from services.auth.directory.service import Directory
from services.kit import codes

router = APIRouter(prefix="/networks", tags=["public"])

NOT_SET = "未登録 (not yet registered by the network's administrator)"


@router.get("/{network_id}/joint-use", summary="The network's public joint-use notice (共同利用の公表事項)")
def joint_use_notice(network_id: str, request: Request, ctx: Context, db: DbSession) -> Response:
    notice = joint_use(ctx, db, network_id)
    if "application/json" in request.headers.get("accept", ""):
        return JSONResponse(notice)
    return HTMLResponse(render(notice))


@router.get("/{network_id}/policy", summary="The network's sharing policy: consent, joining a care team")
def network_policy(network_id: str, ctx: Context, db: DbSession) -> dict[str, Any]:
    settings = Directory(ctx).settings_of(db, network_id)
    return {"network": network_id, "consent_required": settings.consent_required,
            "team_join_approvals": settings.team_join_approvals,
            "emergency_review_days": settings.emergency_review_days}


def joint_use(ctx: AuthContext, db: Session, network_id: str) -> dict[str, Any]:
    directory = Directory(ctx)
    network = directory.network(db, network_id)
    settings = directory.settings_of(db, network_id)
    systems = codes.load_code_systems(ctx.settings.schemas_dir)
    org_types = systems[codes.ORGANIZATION_TYPE]
    organizations = db.scalars(select(Organization).where(Organization.network_id == network_id)
                               .order_by(Organization.type, Organization.name))
    return {
        "network": {"id": network.id, "name": network.name},
        "items": [{"code": c.code, "ja": c.display_ja, "en": c.display_en}
                  for c in systems[codes.SENSITIVITY_LABEL].concepts.values()],
        "sheets": [{"code": c.code, "ja": c.display_ja, "en": c.display_en}
                   for c in systems[codes.SHEET_KIND].concepts.values()],
        "organizations": [{"id": o.id, "name": o.name, "type": o.type,
                           "type_ja": org_types.concepts[o.type].display_ja if o.type in org_types else o.type}
                          for o in organizations],
        "purpose": settings.purpose,
        "responsible_party": settings.responsible_party,
        "contact": settings.contact,
        "consent_required": settings.consent_required,
    }


def render(notice: dict[str, Any]) -> str:
    def rows(items: list[dict[str, Any]]) -> str:
        return "".join(f"<li>{escape(i['ja'])} <span lang=en>({escape(i['en'])})</span></li>" for i in items)

    organizations = "".join(f"<li>{escape(o['name'])} <small>{escape(o['type_ja'])}</small></li>"
                            for o in notice["organizations"])
    name = escape(notice["network"]["name"])
    consent = ("共有には患者さん（またはご家族等）の同意が必要です。同意はいつでも撤回できます。"
               "(Sharing needs the patient's consent, which can be withdrawn at any time.)"
               if notice["consent_required"] else "")
    return f"""<!doctype html>
<html lang="ja"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{name} — 個人データの共同利用について</title></head>
<body><main>
<h1>{name}<br>個人データの共同利用について <small lang=en>(Joint use of personal data)</small></h1>
<h2>共同利用する個人データの項目 <small lang=en>(Items shared)</small></h2><ul>{rows(notice["items"])}</ul>
<p>これらを記載する情報共有シート <small lang=en>(in these sheets)</small>:</p><ul>{rows(notice["sheets"])}</ul>
<h2>共同利用する者の範囲 <small lang=en>(Who shares them)</small></h2>
<p>患者さんごとのケアチームに参加する、次の機関の職員 <small lang=en>(staff of these organisations taking part in
a patient's care team)</small>:</p><ul>{organizations}</ul>
<h2>利用する者の利用目的 <small lang=en>(Purpose)</small></h2><p>{escape(notice["purpose"])}</p>
<h2>個人データの管理について責任を有する者 <small lang=en>(Responsible party)</small></h2>
<p>{escape(notice["responsible_party"] or NOT_SET)}</p>
<h2>お問い合わせ <small lang=en>(Contact)</small></h2><p>{escape(notice["contact"] or NOT_SET)}</p>
<p>{consent}</p>
</main></body></html>
"""
