"""What the sheet rules read, kept beside the resources they come from (services/share/sheets/rules.py): each
network's registered templates, and each sheet's kind and status — ids, codes and dates only, never an answer.

Like the access projections (services/share/access/models.py) these rows are rewritten in the same transaction
as the resource version they describe, so the rules never decrypt a sheet to know what it is.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, Index, Integer, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from services.kit.db import UTCDateTime
from services.share.base import ShareBase


class SheetTemplate(ShareBase):
    """One Questionnaire of a network: a shipped template installed there, or the network's own variant.

    The template itself is kept here in plain JSON (it is a form, not patient data) so that checking a sheet
    against it costs no decryption; the Questionnaire resource stays the record that clients read."""

    __tablename__ = "sheet_templates"
    __table_args__ = (Index("ix_sheet_templates_canonical", "network_id", "url", "version", unique=True),)

    resource_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    network_id: Mapped[str] = mapped_column(String(64))
    url: Mapped[str] = mapped_column(String(255))
    version: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(20))  # Questionnaire.status: sheets are checked against "active" ones
    shipped: Mapped[bool] = mapped_column(Boolean, default=False)  # from schemas/questionnaires, not the network's
    body: Mapped[bytes] = mapped_column(LargeBinary)


class SheetRecord(ShareBase):
    """One sheet (QuestionnaireResponse) as the scene rules see it: whose, which kind, which state."""

    __tablename__ = "sheet_records"
    __table_args__ = (Index("ix_sheet_records_patient", "network_id", "patient_id", "kind"),)

    resource_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    network_id: Mapped[str] = mapped_column(String(64))
    patient_id: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(64))  # the template's name: DischargeSheet, EmergencySheet …
    template: Mapped[str] = mapped_column(String(320))  # the questionnaire canonical, url|version
    status: Mapped[str] = mapped_column(String(20))
    version: Mapped[int] = mapped_column(Integer)
    author_organization: Mapped[str] = mapped_column(String(64))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # An emergency sheet's last review (its emergency.review.date), for raising a review Task when it is old.
    reviewed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # The review Task open for this sheet ("" when none): one at a time, closed when the sheet is amended.
    review_task: Mapped[str] = mapped_column(String(64), default="")
