"""Shapes of directory data: network settings, the bootstrap file, admin API bodies."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# FHIR's id rule: the same ids name Organization and Practitioner resources in the share service.
FHIR_ID = r"^[A-Za-z0-9\-\.]{1,64}$"
USERNAME = r"^[A-Za-z0-9_\-\.@]{1,150}$"

Approval = Literal["invitee", "organization", "patient"]
DEFAULT_PURPOSE = ("患者・利用者が住み慣れた地域で療養を続けられるよう、"
                   "医療・介護の関係者が必要な情報を共有し連携するため "
                   "(so that the medical and care professionals of a patient's team can share what they need to care "
                   "for the patient at home)")


class NetworkSettings(BaseModel):
    """Per-network policy. Unknown keys are refused so a typo never silently weakens a policy."""

    model_config = ConfigDict(extra="forbid")

    mfa_required: bool = Field(True, description="Clinical users must use a second factor (MHLW guideline 6th ed.).")
    consent_required: bool = True
    team_join_approvals: list[Approval] = Field(default_factory=lambda: list[Approval](["invitee", "organization"]))
    emergency_review_days: int = Field(90, ge=1, le=3650, description=(
        "An emergency sheet not reviewed for this many days gets a review Task (the [sheets] scene rules)."))
    # What joint use (共同利用) must publish beside the shared items and the partners (the public joint-use page).
    purpose: str = Field(DEFAULT_PURPOSE, min_length=1, max_length=1000)
    responsible_party: str | None = Field(None, min_length=1, max_length=300,
                                          description="The party responsible for the shared data (name, address).")
    contact: str | None = Field(None, min_length=1, max_length=300, description="Where patients ask or object.")


class NetworkSettingsPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mfa_required: bool | None = None
    consent_required: bool | None = None
    team_join_approvals: list[Approval] | None = None
    emergency_review_days: int | None = Field(None, ge=1, le=3650)
    purpose: str | None = Field(None, min_length=1, max_length=1000)
    responsible_party: str | None = Field(None, min_length=1, max_length=300)
    contact: str | None = Field(None, min_length=1, max_length=300)


class NetworkIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=FHIR_ID)
    name: str = Field(min_length=1, max_length=200)
    settings: NetworkSettings | None = None


class OrganizationIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(None, pattern=FHIR_ID)
    name: str = Field(min_length=1, max_length=200)
    type: str


class UserIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(None, pattern=FHIR_ID)
    username: str = Field(pattern=USERNAME)
    password: str = Field(min_length=8, max_length=1024, repr=False)
    totp_secret: str | None = Field(None, repr=False)
    organization: str
    profession: str
    name: str = Field(min_length=1, max_length=200)
    admin: bool = False
    org_admin: bool = False  # administrator of their own organisation (scope ``org-admin``), not of the network

    @field_validator("totp_secret")
    @classmethod
    def _base32(cls, value: str | None) -> str | None:
        if value is None:
            return None
        import base64

        cleaned = value.replace(" ", "").upper()
        try:
            base64.b32decode(cleaned + "=" * (-len(cleaned) % 8))
        except ValueError:
            raise ValueError("totp_secret must be base32") from None
        if len(cleaned) < 16:
            raise ValueError("totp_secret must hold at least 80 bits (16 base32 characters)")
        return cleaned


class ClientIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    client_id: str = Field(pattern=r"^[A-Za-z0-9_\-\.:]{1,200}$")
    organization: str
    jwks: dict[str, list[dict[str, Any]]]
    scope: str = Field(min_length=1, max_length=2000)


class BootstrapFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    network: NetworkIn
    organizations: list[OrganizationIn] = Field(default_factory=list)
    users: list[UserIn] = Field(default_factory=list)
    clients: list[ClientIn] = Field(default_factory=list)


class UserPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, min_length=1, max_length=200)
    organization: str | None = None
    profession: str | None = None
    admin: bool | None = None
    org_admin: bool | None = None
    disabled: bool | None = None
    password: str | None = Field(None, min_length=8, max_length=1024, repr=False)


class UserOut(BaseModel):
    id: str
    username: str
    name: str
    organization: str
    profession: str
    admin: bool
    org_admin: bool
    disabled: bool
    mfa_enabled: bool


class OrganizationOut(BaseModel):
    id: str
    name: str
    type: str


class ClientOut(BaseModel):
    client_id: str
    organization: str
    scope: str
    disabled: bool
    kids: list[str]
