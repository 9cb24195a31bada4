"""Which template a sheet is checked against: the shipped ones, and each network's own.

A sheet names its template by ``url|version``. The templates shipped in ``schemas/questionnaires`` are known to
every network; a network administrator registers a variant by creating a Questionnaire (its ``url`` ends in the
template's ``name``, so the sheet kind the access matrix reads stays the name — access/layout.py ``sheet_kind``).
Registered templates are projected into ``sheet_templates`` (models.py) with the write that stores them.

So that clients find every template the same way (``GET /fhir/Questionnaire?name=DischargeSheet``), the shipped
templates are installed in a network's store the first time that network asks for Questionnaires, under ids
derived from the network and the canonical: the same on every server process, so a race installs them once.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import select
from sqlalchemy.orm import Session

from services.kit.db import TransactionRequired, without_transaction
from services.kit.errors import RenkeiError
from services.share.access.layout import section_label, sheet_kind
from services.share.sheets.models import SheetTemplate
from services.share.sheets.templates import Problem, questionnaire_problems

# Template ids in a network's store: one namespace for all of them, so that two processes derive the same id.
_TEMPLATE_IDS = uuid.UUID("6d1f4f54-54c8-4c2a-9a55-0d3c1e0b7a11")


class TemplateInvalid(RenkeiError):
    status_code = 422
    code = "invalid_template"


@dataclass(frozen=True)
class Template:
    """One template version, with what the write path needs of it worked out once."""

    body: dict[str, Any]
    shipped: bool
    labels: dict[str, str] = field(default_factory=dict)  # top-level linkId -> sensitivity label

    @classmethod
    def of(cls, body: dict[str, Any], shipped: bool) -> Template:
        labels = {item["linkId"]: label for item in body.get("item") or []
                  if isinstance(item, dict) and (label := section_label(item)) is not None}
        return cls(body, shipped, labels)

    @property
    def canonical(self) -> str:
        return f"{self.body.get('url')}|{self.body.get('version')}"

    @property
    def name(self) -> str:
        return str(self.body.get("name") or "")


class TemplateRegistry:
    def __init__(self, shipped: list[Template], schemas_dir: Path) -> None:
        self.shipped = {template.canonical: template for template in shipped}
        self.schemas_dir = schemas_dir
        self._installed: set[str] = set()  # networks whose store holds the shipped templates (this process)
        self._parsed: dict[bytes, Template] = {}  # a network template's stored JSON, parsed once

    @classmethod
    def load(cls, schemas_dir: Path) -> TemplateRegistry:
        directory = schemas_dir / "questionnaires"
        files = sorted(directory.glob("*.json")) if directory.is_dir() else []
        return cls([Template.of(orjson.loads(path.read_bytes()), shipped=True) for path in files], schemas_dir)

    def find(self, db: Session, network_id: str, canonical: str, any_status: bool = False) -> Template | None:
        """The template a sheet names (``url|version``): shipped, or an active one of the network (with
        ``any_status``, a retired one too: a sheet written against it is still rendered)."""
        found = self.shipped.get(canonical)
        if found is not None:
            return found
        url, _, version = canonical.partition("|")
        row = db.execute(select(SheetTemplate.body, SheetTemplate.status).where(
            SheetTemplate.network_id == network_id, SheetTemplate.url == url, SheetTemplate.version == version,
            SheetTemplate.shipped.is_(False))).first()
        if row is None or (row.status != "active" and not any_status):
            return None
        template = self._parsed.get(row.body)
        if template is None:
            if len(self._parsed) > 256:
                self._parsed.clear()
            template = self._parsed[row.body] = Template.of(orjson.loads(row.body), shipped=False)
        return template

    def problems(self, body: dict[str, Any]) -> list[Problem]:
        """What is wrong with a Questionnaire a network registers: the checks of ``renkei templates check``, and
        that it neither takes a shipped template's place nor hides its kind."""
        found = list(questionnaire_problems("Questionnaire", body, self.schemas_dir))
        canonical = f"{body.get('url')}|{body.get('version')}"
        if canonical in self.shipped:
            found.append(Problem("Questionnaire", None, f"{canonical} is a shipped template; give the variant its "
                                                        "own url or version"))
        kind = sheet_kind({"questionnaire": str(body.get("url") or "")})
        if body.get("name") and kind != body.get("name"):
            found.append(Problem("Questionnaire", None, f"the url must end in the template's name "
                                                        f"({body.get('name')!r}), which is the sheet kind"))
        return found

    # Installing the shipped templates in a network's store ---------------------------------------------------

    def template_id(self, network_id: str, canonical: str) -> str:
        return uuid.uuid5(_TEMPLATE_IDS, f"{network_id}\x00{canonical}").hex

    def ensure_installed(self, db: Session, network_id: str,
                         create: Callable[[Session, str, dict[str, Any]], object]) -> None:
        """Store each shipped template this network lacks, with ``create(db, resource_id, body)`` (the store, as
        the server). Asks for a transaction when there is something to write."""
        if network_id in self._installed:
            return
        present = set(db.scalars(select(SheetTemplate.resource_id).where(
            SheetTemplate.network_id == network_id, SheetTemplate.shipped.is_(True))))
        missing = [t for t in self.shipped.values() if self.template_id(network_id, t.canonical) not in present]
        if missing and without_transaction(db):
            raise TransactionRequired
        for template in missing:
            body = {key: value for key, value in template.body.items() if key not in ("id", "meta")}
            create(db, self.template_id(network_id, template.canonical), body)
        self._installed.add(network_id)

    def project(self, db: Session, network_id: str, resource_id: str, body: dict[str, Any] | None) -> None:
        """Rewrite the ``sheet_templates`` row of one Questionnaire (``body`` None: it was deleted)."""
        row = db.get(SheetTemplate, resource_id)
        if body is None:
            if row is not None:
                db.delete(row)
            return
        values = {"network_id": network_id, "url": str(body.get("url") or ""),
                  "version": str(body.get("version") or ""), "name": str(body.get("name") or ""),
                  "status": str(body.get("status") or ""),
                  "shipped": resource_id == self.template_id(network_id, f"{body.get('url')}|{body.get('version')}")
                  and f"{body.get('url')}|{body.get('version')}" in self.shipped,
                  "body": orjson.dumps(body)}
        if row is None:
            db.add(SheetTemplate(resource_id=resource_id, **values))
        else:
            for key, value in values.items():
                setattr(row, key, value)
        db.flush()
