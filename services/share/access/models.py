"""What access decisions read, kept beside the resources they come from (services/share/access/projection.py):
each CareTeam's participants and each Consent's terms, as ids, codes and dates only — never patient data.

The resources stay the record (encrypted, versioned); these rows are rewritten in the same transaction as every
version of them, so a decision never waits for a decryption, and a revoked consent or an ended participation
counts from the very next request.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Index, Integer, String, true
from sqlalchemy.orm import Mapped, mapped_column

from services.kit.db import UTCDateTime
from services.share.base import ShareBase


class TeamParticipant(ShareBase):
    """One participant of one CareTeam (its position in ``CareTeam.participant``)."""

    __tablename__ = "care_team_participants"
    __table_args__ = (Index("ix_care_team_participants_patient", "network_id", "patient_id"),)

    care_team_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    network_id: Mapped[str] = mapped_column(String(64))
    patient_id: Mapped[str] = mapped_column(String(64))
    team_status: Mapped[str] = mapped_column(String(20))  # the CareTeam's status: only "active" teams count
    kind: Mapped[str] = mapped_column(String(20))  # practitioner | organization | practitioner-role
    member_id: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(64))  # a care-team-role code, "" when none is given
    start: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    end: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Every approval the network requires for joining is in (team_invitations); until then no access.
    approved: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())


class ConsentTerms(ShareBase):
    """One Consent's terms for sharing within the care team."""

    __tablename__ = "consent_terms"
    __table_args__ = (Index("ix_consent_terms_patient", "network_id", "patient_id"),)

    consent_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    network_id: Mapped[str] = mapped_column(String(64))
    patient_id: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(20))  # Consent.status: only "active" counts
    start: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    end: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # null: every organisation of the team (network-wide consent); else the organisations it names
    organizations: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    excluded_organizations: Mapped[list[str]] = mapped_column(JSON)
    withheld_labels: Mapped[list[str]] = mapped_column(JSON)

    def terms(self) -> dict[str, Any]:
        return {"organizations": self.organizations, "excluded": self.excluded_organizations,
                "withheld": self.withheld_labels}


class BreakGlassGrant(ShareBase):
    """An emergency user's time-limited access to one patient outside the team (POST Patient/{id}/$break-glass).
    Its reason lives in the audit trail (``audit_seq``), sealed like every audit record."""

    __tablename__ = "break_glass_grants"
    __table_args__ = (
        Index("ix_break_glass_grants_patient", "network_id", "patient_id", "subject"),
        Index("ix_break_glass_grants_granted", "network_id", "granted_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    network_id: Mapped[str] = mapped_column(String(64))
    patient_id: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(String(200))
    organization: Mapped[str] = mapped_column(String(64))
    profession: Mapped[str] = mapped_column(String(64))
    granted_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    audit_seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"))


class TeamInvitation(ShareBase):
    """A participant added to a CareTeam, and the approvals their joining still needs (the network's
    ``team_join_approvals``: the invitee accepts, their organisation's administrator approves, the patient's
    approval is recorded). Access starts when ``waiting_for`` is empty (services/share/access/invitations.py)."""

    __tablename__ = "team_invitations"
    __table_args__ = (
        Index("ix_team_invitations_member", "care_team_id", "kind", "member_id", unique=True),
        Index("ix_team_invitations_network", "network_id", "member_id"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    network_id: Mapped[str] = mapped_column(String(64))
    care_team_id: Mapped[str] = mapped_column(String(64))
    patient_id: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(20))  # practitioner | organization | practitioner-role
    member_id: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(64))
    invited_by: Mapped[str] = mapped_column(String(200))
    invited_at: Mapped[datetime] = mapped_column(UTCDateTime)
    needs: Mapped[list[str]] = mapped_column(JSON)  # the approvals required when invited
    # approval -> {"by": principal, "at": ISO time, "organization": …}
    given: Mapped[dict[str, Any]] = mapped_column(JSON)

    @property
    def waiting_for(self) -> list[str]:
        return [approval for approval in self.needs if approval not in self.given]
