"""The resource store: versioned, encrypted writes and reads. Services take typed arguments and never commit.

Writes validate once (at the edge), stamp ``meta``, serialise once with orjson and encrypt; reads decrypt and
hand back those bytes untouched — a read never re-parses or re-serialises a resource.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

import orjson
import structlog
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Table, delete, select
from sqlalchemy.orm import Session

from services.kit.db import TransactionRequired, utcnow, without_transaction
from services.kit.errors import BadRequest, Conflict, NotFound, RenkeiError
from services.kit.tokens import Principal
from services.share.access import registration
from services.share.access.decision import Action, Decision, deny
from services.share.access.gate import Gate
from services.share.access.layout import layout_of
from services.share.access.projection import PROJECTED, project
from services.share.audit.trail import Access, AuditTrail
from services.share.crypto.datakeys import DataKeys, KeyDestroyed
from services.share.crypto.envelope import TamperedCiphertext, open_sealed, resource_aad, seal
from services.share.events.log import append_urgent
from services.share.messages import acknowledgements
from services.share.store.audit_records import store_audit_event
from services.share.store.indexing import Indexer
from services.share.store.models import ResourceHead, ResourceVersion, SearchEntry
from services.share.store.statements import Beside, NewRows, VersionRow, statements
from services.share.store.types import COMPARTMENT_ELEMENT, compartment_patient

if TYPE_CHECKING:
    from services.share.sheets.rules import Change, SheetRules

log = structlog.get_logger(__name__)

SEARCH_TABLE: Table = SearchEntry.__table__  # type: ignore[assignment]
# Patients this session has created or checked, so their sheets need no lookup (and no autoflush) each time.
_KNOWN_PATIENTS = "renkei.store.known_patients"
# The data-key id of a version whose patient was erased (its ciphertext is gone too).
ERASED = "erased"
# What the sheet rules apply to (services/share/sheets/rules.py).
SHEET_RESOURCES = frozenset({"Questionnaire", "QuestionnaireResponse"})


class Gone(RenkeiError):
    status_code = 410
    code = "gone"


class PreconditionFailed(RenkeiError):
    status_code = 412
    code = "version_conflict"


class IntegrityFailure(RenkeiError):
    """A ciphertext that does not authenticate (moved, altered): refused, never served."""

    status_code = 500
    code = "integrity_failure"


class Cipher(Protocol):
    def seal(self, key: bytes | AESGCM, plaintext: bytes, aad: bytes) -> bytes: ...

    def open(self, key: bytes | AESGCM, blob: bytes, aad: bytes) -> bytes: ...


class AeadCipher:
    """AES-256-GCM bound to the resource's type, id and version (services/share/crypto/envelope.py)."""

    seal = staticmethod(seal)
    open = staticmethod(open_sealed)


@dataclass(frozen=True)
class Caller:
    """Who acts on the store. Access decisions (the [access] issue) narrow what a caller may see."""

    network_id: str
    subject: str
    organization: str = ""  # recorded as each version's author organisation
    # The person or system acting, whose access the store enforces (services/share/access/gate.py); None for the
    # server's own work (an integrity audit, an erasure, a bulk load).
    principal: Principal | None = None


@dataclass(frozen=True)
class Rows:
    """What one version writes: its ``resource_versions`` row, its ``resources`` head, its index entries."""

    version: dict[str, Any]
    head: dict[str, Any]
    index: list[dict[str, Any]]


@dataclass(frozen=True)
class Stored:
    resource_type: str
    resource_id: str
    version: int
    last_updated: datetime
    deleted: bool
    method: str
    body: bytes  # the resource's JSON (empty for a delete)
    layout: bytes | None = None  # a sheet's section layout (services/share/access/layout.py)

    def with_body(self, body: bytes) -> Stored:
        """The same version with the body as a reader may see it (dataclasses.replace costs several times more)."""
        return Stored(self.resource_type, self.resource_id, self.version, self.last_updated, self.deleted,
                      self.method, body, self.layout)


class ResourceStore:
    def __init__(self, keys: DataKeys, indexer: Indexer, cipher: Cipher | None = None, gate: Gate | None = None,
                 sheets: SheetRules | None = None) -> None:
        self.keys = keys
        self.indexer = indexer
        self.cipher = cipher or AeadCipher()
        # For what the store records of itself (an integrity failure, an erasure), sealed as its resources are.
        self.trail = AuditTrail(keys, self.cipher)
        # Every caller with a principal passes the access decision here, on every path (access/gate.py).
        self.gate = gate
        # The sheet rules: templates, validation, lifecycle, scene rules (services/share/sheets/rules.py).
        self.sheets = sheets
        if sheets is not None:
            sheets.store = self

    # Writes -------------------------------------------------------------------------------------------

    def create(
        self, db: Session, caller: Caller, resource_type: str, body: dict[str, Any], *, resource_id: str | None = None
    ) -> Stored:
        """A new resource; ``resource_id`` is one the server assigned up front (a transaction's urn:uuid entries)."""
        resource_id = resource_id or uuid.uuid4().hex
        # The patient's existence is checked by the insert itself (_write), not by a query of its own.
        patient_id = self._compartment(db, caller, resource_type, resource_id, body, verify=False)
        if self.gate is not None:
            self.gate.check_write(db, caller.principal, resource_type, Action.CREATE, patient_id or "", body)
        change = self._sheet_rules_before(db, caller, resource_type, resource_id, body, existing=False)
        urgent = resource_type == "Communication" and body.get("priority") in acknowledgements.URGENT
        if urgent and without_transaction(db):  # before the first write: it runs again in a transaction
            raise TransactionRequired("an urgent message writes its urgent event (and its Tasks) beside it")
        if change is not None and without_transaction(db):
            # The sheet rules let through only a sheet whose rules write its record and Tasks, nothing else: those
            # ride in the sheet's own statement (SheetRules.beside), which commits by itself.
            if patient_id is None:  # a sheet of no one (a template never gets here: before_write sends it back)
                raise TransactionRequired("the sheet rules write this in several statements")
            assert self.sheets is not None
            sheets, patient = self.sheets, patient_id
            return self._write(db, caller, resource_type, resource_id, 1, patient_id, body, "POST", head=None,
                               beside=lambda stored: sheets.beside(db, caller, stored, body, patient, change))
        stored = self._write(db, caller, resource_type, resource_id, 1, patient_id, body, "POST", head=None)
        self._sheet_rules_after(db, caller, stored, body, patient_id, change)
        if urgent and patient_id:
            append_urgent(db, caller.network_id, patient_id, resource_type, resource_id, 1, caller.organization)
        if resource_type == "Patient" and self.gate is not None and caller.principal is not None:
            # The registrant is the first of the new patient's team (access/registration.py).
            team = registration.first_team(self.gate.matrix, caller.principal, resource_id)
            self.create(db, replace(caller, principal=None), "CareTeam", team)
        if resource_type == "Communication" and patient_id and acknowledgements.required(body):
            self._ask_acknowledgements(db, caller, resource_id, body, patient_id)
        return stored

    def _ask_acknowledgements(self, db: Session, caller: Caller, message_id: str, body: dict[str, Any],
                              patient_id: str) -> None:
        """An urgent message that must be acknowledged asks each member it names (or the whole team) in a Task,
        written in the message's transaction (services/share/messages/acknowledgements.py)."""
        now = utcnow()
        team = self.gate.team_read(db, patient_id) if self.gate is not None else None
        members = [f"Practitioner/{p.member}" for p in team or () if p.kind == "practitioner" and p.active(now)]
        for task in acknowledgements.tasks(body, message_id, patient_id, members, caller.organization):
            self.create(db, replace(caller, principal=None), "Task", task)

    def prepare_created(self, db: Session, caller: Caller, resources: list[tuple[str, str, dict[str, Any]]]
                        ) -> list[NewRows]:
        """The rows of new resources the server writes beside another (the Tasks a shared sheet asks for:
        sheets/rules.py), for ``Statements.insert_new`` to write together: (type, id, body) each, of a patient that
        exists, none of them decided on or projected."""
        assert caller.principal is None and not any(t in PROJECTED or t == "Patient" for t, _, _ in resources)
        prepared = []
        for resource_type, resource_id, body in resources:
            patient_id = self._compartment(db, caller, resource_type, resource_id, body, verify=False)
            _, rows = self._rows(db, caller, resource_type, resource_id, 1, patient_id, body, "POST")
            prepared.append((rows.version, rows.head, rows.index))
        return prepared

    def update(
        self,
        db: Session,
        caller: Caller,
        resource_type: str,
        resource_id: str,
        body: dict[str, Any],
        if_match: int | None,
    ) -> Stored:
        head = self._head(db, caller, resource_type, resource_id, for_update=True)
        self._check_change(db, caller, head, Action.UPDATE, body)
        if if_match is not None and if_match != head.version:
            raise PreconditionFailed(f"{resource_type}/{resource_id} is at version {head.version}, not {if_match}")
        if body.get("id") not in (None, resource_id):
            raise BadRequest(
                f"the body's id {body.get('id')!r} differs from the URL's {resource_id!r}", code="id_mismatch"
            )
        patient_id = self._compartment(db, caller, resource_type, resource_id, body)
        if not head.deleted and patient_id != (head.patient_id or None):
            raise BadRequest(
                "a resource cannot move to another patient; create a new one instead", code="compartment_change"
            )
        change = self._sheet_rules_before(db, caller, resource_type, resource_id, body, existing=not head.deleted)
        stored = self._write(db, caller, resource_type, resource_id, head.version + 1, patient_id, body, "PUT",
                             head=head)
        self._sheet_rules_after(db, caller, stored, body, patient_id, change)
        return stored

    def delete(self, db: Session, caller: Caller, resource_type: str, resource_id: str) -> Stored | None:
        """Delete (a new, empty version); deleting what is already deleted changes nothing."""
        head = self._head(db, caller, resource_type, resource_id, for_update=True)
        self._check_change(db, caller, head, Action.DELETE, None)
        if head.deleted:
            return None
        if self.sheets is not None and resource_type in SHEET_RESOURCES:
            self.sheets.deleted(db, caller, resource_type, resource_id)
        if resource_type == "Patient":
            db.info.get(_KNOWN_PATIENTS, set()).discard((caller.network_id, resource_id))
        now = utcnow()
        head.version += 1
        head.deleted = True
        head.last_updated = now
        db.add(
            ResourceVersion(
                resource_type=resource_type,
                resource_id=resource_id,
                version=head.version,
                network_id=caller.network_id,
                patient_id=head.patient_id,
                data_key_id="",
                body=b"",
                deleted=True,
                method="DELETE",
                last_updated=now,
                author=caller.subject,
                author_organization=caller.organization,
            )
        )
        db.execute(
            delete(SearchEntry).where(
                SearchEntry.resource_type == resource_type, SearchEntry.resource_id == resource_id
            )
        )
        if resource_type in PROJECTED:
            project(db, caller.network_id, resource_type, resource_id, head.patient_id, None)
        return Stored(resource_type, resource_id, head.version, now, True, "DELETE", b"")

    # Reads --------------------------------------------------------------------------------------------

    def read(self, db: Session, caller: Caller, resource_type: str, resource_id: str) -> Stored:
        """The current version, in one query (head joined to its version)."""
        row = statements(db).current(db, caller.network_id, resource_type, resource_id)
        if row is None:
            raise NotFound(f"{resource_type}/{resource_id} is not known")
        decision = self.gate.check_read(db, caller.principal, row) if self.gate else None
        if row.deleted:
            raise Gone(f"{resource_type}/{resource_id} has been deleted")
        return self._shaped(db, caller, decision, self.open(db, row))

    def vread(self, db: Session, caller: Caller, resource_type: str, resource_id: str, version: int) -> Stored:
        row = statements(db).version(db, resource_type, resource_id, version)
        if row is None or row.network_id != caller.network_id:
            raise NotFound(f"{resource_type}/{resource_id}/_history/{version} is not known")
        decision = self.gate.check_read(db, caller.principal, row) if self.gate else None
        stored = self.open(db, row)
        if stored.deleted:
            raise Gone(f"{resource_type}/{resource_id} version {version} is a deletion")
        return self._shaped(db, caller, decision, stored)

    def history(
        self,
        db: Session,
        caller: Caller,
        resource_type: str,
        resource_id: str | None,
        count: int,
        before: tuple[datetime, str, int] | None = None,
    ) -> list[Stored]:
        """Versions newest first; for a type, of every resource of that type in the caller's network."""
        if resource_id is not None:
            self._head(db, caller, resource_type, resource_id)
            if self.gate is not None and caller.principal is not None:
                current = statements(db).current(db, caller.network_id, resource_type, resource_id)
                if current is not None:
                    self.gate.check_read(db, caller.principal, current)  # decided on the resource as it stands
        query = select(ResourceVersion).where(
            ResourceVersion.network_id == caller.network_id, ResourceVersion.resource_type == resource_type
        )
        if resource_id is not None:
            query = query.where(ResourceVersion.resource_id == resource_id)
        if before is not None:
            query = query.where(ResourceVersion.last_updated <= before[0])
        query = query.order_by(
            ResourceVersion.last_updated.desc(), ResourceVersion.resource_id.desc(), ResourceVersion.version.desc()
        ).limit(count + 50 if before else count)
        rows = list(db.scalars(query))
        if before is not None:
            rows = [r for r in rows if (r.last_updated, r.resource_id, r.version) < before][:count]
        return self._visible(db, caller, rows, tolerate_erased=True)

    def heads(self, db: Session, caller: Caller, keys: list[tuple[str, str]]) -> list[Stored]:
        """Current versions of the given (type, id) pairs that exist and are not deleted, in the given order."""
        if not keys:
            return []
        # One query for all of them: a search page must not cost a round trip per resource.
        current = statements(db).currents(db, caller.network_id, keys)
        rows = {(row.resource_type, row.resource_id): row for row in current}
        return self.open_current(db, caller, [rows[key] for key in keys if key in rows])

    def open_current(self, db: Session, caller: Caller, rows: list[VersionRow]) -> list[Stored]:
        """Current versions the caller may see, decrypted and shaped for them, in the given order; those whose
        patient was erased are left out."""
        return self._visible(db, caller, rows)

    def _visible(self, db: Session, caller: Caller, rows: list[Any], tolerate_erased: bool = False) -> list[Stored]:
        decisions = self.gate.readable(db, caller.principal, rows) if self.gate else [None] * len(rows)
        found: list[Stored] = []
        for row, decision in zip(rows, decisions, strict=True):
            if self.gate is not None and decision is None:
                continue
            if row.deleted:
                found.append(self.open(db, row))
                continue
            try:
                body = self._decrypt(db, row)
            except KeyDestroyed:
                if tolerate_erased:
                    found.append(self.open(db, row, tolerate_erased=True))
                continue
            if self.gate is not None:  # shaped before the Stored is made: one object per row, not two
                shaped = self.gate.shape(db, caller.principal, decision, row.resource_type, body, row.layout)
                if shaped is None:
                    continue
                body = shaped
            found.append(Stored(row.resource_type, row.resource_id, row.version, row.last_updated, False, row.method,
                                body, row.layout))
        return found

    def _shaped(self, db: Session, caller: Caller, decision: Decision | None, stored: Stored) -> Stored:
        """One resource as the caller may see it: sections they may not see withheld; refused if nothing is."""
        if self.gate is None or stored.deleted:
            return stored
        body = self.gate.shape(db, caller.principal, decision, stored.resource_type, stored.body, stored.layout)
        if body is None:
            self.gate.refuse(db, deny("this kind of sheet is not shared with your profession"),
                             f"{stored.resource_type}/{stored.resource_id}")
            raise AssertionError("refuse raises")  # pragma: no cover
        return stored if body is stored.body else stored.with_body(body)

    def _check_change(self, db: Session, caller: Caller, head: ResourceHead, action: Action,
                      body: dict[str, Any] | None) -> None:
        """Refuse an update or delete the caller may not make: decided on the resource as it stands (its
        patient, its author's organisation), and on the new body (its sheet kind)."""
        if self.gate is None or caller.principal is None:
            return
        self.gate.check_write(db, caller.principal, head.resource_type, action, head.patient_id, body,
                              current=lambda: statements(db).current(db, caller.network_id, head.resource_type,
                                                                     head.resource_id))

    def open(self, db: Session, row: ResourceVersion | VersionRow, tolerate_erased: bool = False) -> Stored:
        """Decrypt one version. A ciphertext that fails to authenticate is refused and logged, never served."""
        if row.deleted:
            return Stored(row.resource_type, row.resource_id, row.version, row.last_updated, True, row.method, b"")
        try:
            body = self._decrypt(db, row)
        except KeyDestroyed:
            if tolerate_erased:
                return Stored(row.resource_type, row.resource_id, row.version, row.last_updated, True, "DELETE", b"")
            raise Gone(f"{row.resource_type}/{row.resource_id} has been erased") from None
        return Stored(row.resource_type, row.resource_id, row.version, row.last_updated, False, row.method, body,
                      row.layout)

    def _decrypt(self, db: Session, row: ResourceVersion | VersionRow) -> bytes:
        """The body of a version that is not a delete; KeyDestroyed if its patient was erased."""
        if row.data_key_id == ERASED:
            raise KeyDestroyed(row.data_key_id)
        key = self.keys.unwrap(db, row.data_key_id, record=getattr(row, "wrapped_key", None))
        try:
            return self.cipher.open(key, row.body, resource_aad(row.resource_type, row.resource_id, row.version))
        except TamperedCiphertext:
            self._audit_integrity_failure(db, row)  # first: it may ask for a transaction and a second attempt
            log.error(
                "ciphertext_integrity_failure",
                resource_type=row.resource_type,
                resource_id=row.resource_id,
                version=row.version,
            )
            raise IntegrityFailure(
                "this resource failed its integrity check and is not served", keep_writes=True
            ) from None

    # Internals ----------------------------------------------------------------------------------------

    def _sheet_rules_before(self, db: Session, caller: Caller, resource_type: str, resource_id: str,
                            body: dict[str, Any], existing: bool) -> Change | None:
        """A sheet checked against its template and lifecycle, after the access decision and before storage."""
        if self.sheets is None or resource_type not in SHEET_RESOURCES:
            return None
        return self.sheets.before_write(db, caller, resource_type, resource_id, body, existing)

    def _sheet_rules_after(self, db: Session, caller: Caller, stored: Stored, body: dict[str, Any],
                           patient_id: str | None, change: Change | None) -> None:
        if self.sheets is not None and change is not None:
            self.sheets.after_write(db, caller, stored, body, patient_id, change)

    def _audit_integrity_failure(self, db: Session, row: ResourceVersion | VersionRow) -> None:
        """Record the refusal; the error keeps this write (``keep_writes``) while the request fails."""
        entity = f"{row.resource_type}/{row.resource_id}/_history/{row.version}"
        record = store_audit_event(
            "integrity-failure",
            "暗号文の完全性検証失敗 (integrity check failed)",
            entity,
            "Renkei share service",
            action="R",
            outcome="8",
        )
        self.trail.record(db, Access(row.network_id, "integrity-check", row.patient_id, "R", "8"), record)

    def _head(
        self, db: Session, caller: Caller, resource_type: str, resource_id: str, for_update: bool = False
    ) -> ResourceHead:
        head = db.get(ResourceHead, (resource_type, resource_id), with_for_update=for_update)
        # Another network's resource answers exactly like a missing one: existence is not leaked.
        if head is None or head.network_id != caller.network_id:
            raise NotFound(f"{resource_type}/{resource_id} is not known")
        return head

    def _compartment(
        self, db: Session, caller: Caller, resource_type: str, resource_id: str, body: dict[str, Any],
        verify: bool = True,
    ) -> str | None:
        """The patient whose compartment the resource is in; ``verify``: that Patient must exist, undeleted."""
        patient_id = compartment_patient(resource_type, resource_id, body)
        element = COMPARTMENT_ELEMENT.get(resource_type)
        if patient_id is None and element is not None and body.get(element) is not None:
            # The reference decides which patient's key seals this resource: it must name one of ours.
            raise BadRequest(
                f"{resource_type}.{element} must reference a Patient of this server (Patient/<id>)",
                code="unknown_patient",
                expression=[f"{resource_type}.{element}"],
            )
        if patient_id is not None and resource_type != "Patient" and verify:
            self._verify_patient(db, caller, patient_id)
        return patient_id

    def _verify_patient(self, db: Session, caller: Caller, patient_id: str) -> None:
        known: set[tuple[str, str]] = db.info.setdefault(_KNOWN_PATIENTS, set())
        if (caller.network_id, patient_id) in known:
            return  # checked (or created) earlier in this transaction: no query, no autoflush
        state = statements(db).patient(db, patient_id)
        if state is None or state[0] != caller.network_id:
            raise BadRequest(f"Patient/{patient_id} is not known; the patient must exist first", code="unknown_patient")
        if state[1]:
            raise Gone(f"Patient/{patient_id} has been deleted or erased; nothing more can be stored for them")
        known.add((caller.network_id, patient_id))

    def _write_together(self, db: Session, caller: Caller, patient_id: str, rows: Rows, beside: Beside) -> None:
        """A new resource with what its rules write beside it, in one statement; if that wrote nothing, why."""
        if statements(db).insert_together(db, [(rows.version, rows.head, rows.index), *beside.resources],
                                          (caller.network_id, patient_id), beside):
            return
        self._verify_patient(db, caller, patient_id)  # raises the precise refusal (unknown, or gone)
        if beside.unless is not None:  # the rules have more to write: all of it, in a transaction
            raise TransactionRequired("the rules found more to write than one statement holds")
        raise Conflict(f"Patient/{patient_id} changed while this was written; retry", code="write_conflict")

    def prepare_new(
        self, db: Session, caller: Caller, resource_type: str, body: dict[str, Any], *, resource_id: str | None = None
    ) -> tuple[Stored, Rows]:
        """The rows a new resource's first version becomes, without writing them: for bulk loading."""
        resource_id = resource_id or uuid.uuid4().hex
        patient_id = self._compartment(db, caller, resource_type, resource_id, body)
        return self._rows(db, caller, resource_type, resource_id, 1, patient_id, body, "POST")

    def _rows(
        self,
        db: Session,
        caller: Caller,
        resource_type: str,
        resource_id: str,
        version: int,
        patient_id: str | None,
        body: dict[str, Any],
        method: str,
    ) -> tuple[Stored, Rows]:
        now = utcnow()
        body["id"] = resource_id
        meta: dict[str, Any] = body["meta"] if isinstance(body.get("meta"), dict) else {}
        body["meta"] = {**meta, "versionId": str(version), "lastUpdated": now.isoformat(timespec="milliseconds")}
        plaintext = orjson.dumps(body)
        try:
            key_id, key = self.keys.key_for(db, caller.network_id, patient_id)
        except KeyDestroyed:
            raise Gone(f"Patient/{patient_id} has been erased; nothing more can be stored for them") from None
        owner = {
            "resource_type": resource_type,
            "resource_id": resource_id,
            "network_id": caller.network_id,
            "patient_id": patient_id or "",
        }
        rows = Rows(
            version={
                **owner,
                "version": version,
                "data_key_id": key_id,
                "deleted": False,
                "method": method,
                "body": self.cipher.seal(self.keys.sealer(key_id, key), plaintext,
                                         resource_aad(resource_type, resource_id, version)),
                "last_updated": now,
                "author": caller.subject,
                "author_organization": caller.organization,
                "layout": layout_of(body, plaintext),
            },
            head={**owner, "version": version, "deleted": False, "last_updated": now},
            index=self.indexer.entries(caller.network_id, resource_type, resource_id, body),
        )
        if resource_type == "Patient":
            db.info.setdefault(_KNOWN_PATIENTS, set()).add((caller.network_id, resource_id))
        return Stored(resource_type, resource_id, version, now, False, method, plaintext, rows.version["layout"]), rows

    def _write(
        self,
        db: Session,
        caller: Caller,
        resource_type: str,
        resource_id: str,
        version: int,
        patient_id: str | None,
        body: dict[str, Any],
        method: str,
        *,
        head: ResourceHead | None,
        beside: Callable[[Stored], Beside] | None = None,
    ) -> Stored:
        """Write a version; ``head`` is the resource's current head row, None for a new resource; ``beside``, of a
        new resource of a patient: what else its statement writes (Statements.insert_together), given the version."""
        stored, rows = self._rows(db, caller, resource_type, resource_id, version, patient_id, body, method)
        if beside is not None:
            assert head is None and patient_id is not None
            self._write_together(db, caller, patient_id, rows, beside(stored))
            return stored
        if head is not None:
            head.version, head.deleted, head.last_updated = version, False, stored.last_updated
            head.patient_id = patient_id or ""
            db.execute(
                delete(SearchEntry).where(
                    SearchEntry.resource_type == resource_type, SearchEntry.resource_id == resource_id
                )
            )
        # Plain statements: the rows are complete, so the ORM's unit of work would only add cost to every write.
        known: set[tuple[str, str]] = db.info.setdefault(_KNOWN_PATIENTS, set())
        owner = (caller.network_id, patient_id) if patient_id else None
        check = owner if head is None and resource_type != "Patient" and owner not in known else None
        if not statements(db).insert(db, rows.version, rows.head if head is None else None, rows.index,
                                     patient=check):
            assert patient_id is not None
            self._verify_patient(db, caller, patient_id)  # raises the precise refusal (unknown, or gone)
            raise Conflict(f"Patient/{patient_id} changed while this was written; retry", code="write_conflict")
        if check is not None:
            known.add(check)
        if resource_type in PROJECTED:  # what access decisions read changes with this version, in this transaction
            approvals = self.gate.join_approvals(caller.network_id) if self.gate and caller.principal else ()
            project(db, caller.network_id, resource_type, resource_id, patient_id, body, approvals=approvals,
                    actor=caller.subject)
        return stored
