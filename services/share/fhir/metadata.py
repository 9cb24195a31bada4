"""The CapabilityStatement and SMART configuration: what this server does, told to integrators.

Both are public. The resource list grows with the store; it states exactly what is supported, nothing more.
"""

from __future__ import annotations

from typing import Any

from fhir.resources.R4B.capabilitystatement import CapabilityStatement

from services.kit.settings import Settings
from services.share.store.params import PARAMS
from services.share.store.types import READ_ONLY, SUPPORTED

FHIR_VERSION = "4.3.0"
SOFTWARE_VERSION = "0.1.0"


def capability_statement(settings: Settings, published: str) -> dict[str, Any]:
    statement = {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": published,
        "publisher": "Renkei",
        "kind": "instance",
        "software": {"name": "Renkei", "version": SOFTWARE_VERSION},
        "implementation": {
            "description": "Renkei care-information-sharing server (在宅医療・介護連携)",
            "url": settings.fhir_base,
        },
        "fhirVersion": FHIR_VERSION,
        "format": ["application/fhir+json", "json"],
        "rest": [
            {
                "mode": "server",
                "documentation": "Access tokens from the Renkei identity service (ES256 JWTs; see the SMART "
                "configuration). Every interaction except this statement requires a token. Sharing follows each "
                "network's published policy — whether the patient's consent is required (consent_required, on by "
                f"default; a network may turn it off) and which approvals a new care-team participant needs — at "
                f"{settings.auth_url}/networks/{{network}}/policy, and its joint-use notice at "
                f"{settings.auth_url}/networks/{{network}}/joint-use. Every interaction passes the access decision "
                "(care team, consent, the profession's row of the permission matrix, SMART scopes for system "
                "clients) and is audited; sections a reader may not see are withheld (meta.security REDACTED). "
                "AuditEvents are for network administrators.",
                "security": {
                    "cors": False,
                    "service": [
                        {
                            "coding": [
                                {
                                    "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                                    "code": "SMART-on-FHIR",
                                }
                            ]
                        }
                    ],
                    "extension": [
                        {
                            "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                            "extension": [{"url": "token", "valueUri": settings.token_endpoint}],
                        }
                    ],
                },
                "resource": [_resource_capability(t) for t in SUPPORTED],
                "interaction": [{"code": "batch"}, {"code": "transaction"}],
            }
        ],
    }
    # Built from the model once, so a malformed statement fails at start-up, not in a client.
    CapabilityStatement.model_validate(statement)
    return statement


_WRITE = ("create", "update", "delete")
_READ = ("read", "vread", "history-instance", "history-type", "search-type")
# Types served by a router of their own, with fewer interactions (services/share/fhir/subscriptions.py).
_OWN_INTERACTIONS = {"Subscription": ("create", "delete", "read", "search-type")}


def _resource_capability(resource_type: str) -> dict[str, Any]:
    """Exactly what the store does for this type, interaction by interaction, parameter by parameter."""
    writable = resource_type not in READ_ONLY
    interactions = list(_OWN_INTERACTIONS.get(resource_type, (*(_WRITE if writable else ()), *_READ)))
    params = PARAMS.get(resource_type, {})
    search = [{"name": "_id", "type": "token"}, {"name": "_lastUpdated", "type": "date"}]
    search += [{"name": p.name, "type": p.kind} for p in params.values()]
    references = [p.name for p in params.values() if p.kind == "reference"]
    reverse = [f"{source}:{p.name}" for source, source_params in PARAMS.items() for p in source_params.values()
               if p.kind == "reference" and resource_type in p.targets]
    return {
        "type": resource_type,
        "versioning": "versioned",
        "readHistory": True,
        "updateCreate": False,
        "conditionalCreate": writable,
        "conditionalRead": "not-supported",
        "conditionalUpdate": False,
        "conditionalDelete": "not-supported",
        "interaction": [{"code": code} for code in interactions],
        "searchInclude": [f"{resource_type}:{name}" for name in references],
        "searchRevInclude": reverse,
        "searchParam": search,
        **({"operation": _OPERATIONS[resource_type]} if resource_type in _OPERATIONS else {}),
    }


# Instance operations beyond FHIR's own (services/share/access/break_glass.py, services/share/audit/report.py,
# services/share/fhir/teams.py, services/share/fhir/sheets.py, services/share/fhir/messages.py).
_OPERATIONS = {
    "Communication": [
        {"name": "read", "definition": "urn:renkei:operation:read",
         "documentation": "The caller has read this message and every earlier one of the patient's thread; a read "
                          "position only moves forward."},
        {"name": "read-status", "definition": "urn:renkei:operation:read-status",
         "documentation": "Who of the patient's current team has read this message (and when), and who has not."},
    ],
    "QuestionnaireResponse": [
        {"name": "document", "definition": "http://hl7.org/fhir/OperationDefinition/Composition-document",
         "documentation": "A shared sheet as a FHIR document Bundle (Composition first); a discharge sheet follows "
                          "the JP-CLINS discharge summary. The same version gives the same document."},
        {"name": "diff", "definition": "urn:renkei:operation:sheet-diff",
         "documentation": "What changed between versions 'from' and 'to' (default: the last two), by linkId."},
    ],
    "Task": [
        {"name": "acknowledge", "definition": "urn:renkei:operation:acknowledge",
         "documentation": "The owner of an 'acknowledge' Task completes it; an optional 'question' goes back to "
                          "the requester as a Communication."},
    ],
    "Subscription": [
        {"name": "status", "definition":
            "http://hl7.org/fhir/uv/subscriptions-backport/OperationDefinition/backport-subscription-status",
         "documentation": "The Subscription's status (requested, active, error, off) and events since its start, as "
                          "a SubscriptionStatus. Topics (Subscription.criteria): urn:renkei:topic:sheet-shared "
                          "(QuestionnaireResponse shared or amended), urn:renkei:topic:message-posted (Communication "
                          "posted), urn:renkei:topic:task-changed (Task created or changed); rest-hook only, "
                          "payload application/fhir+json, content id-only or full-resource, optional filter "
                          "patient=Patient/<id> and heartbeat period (backport IG extensions). Only the owner, or a "
                          "network administrator, sees a Subscription."},
        {"name": "events", "definition":
            "http://hl7.org/fhir/uv/subscriptions-backport/OperationDefinition/backport-subscription-events",
         "documentation": "Past notifications by event number (eventsSinceNumber, eventsUntilNumber, content), "
                          "decided by the owner's access now; event numbers are the event log's sequence numbers."},
    ],
    "Bundle": [
        {"name": "discharge-draft", "definition": "urn:renkei:operation:discharge-draft",
         "documentation": "A discharge-sheet draft (in-progress) prefilled from a stored discharge-summary document."},
    ],
    "Patient": [
        {"name": "emergency-summary", "definition": "urn:renkei:operation:emergency-summary",
         "documentation": "The current emergency sheet and the current ACP wishes as one document, the DNAR order "
                          "apart from the wider wishes; what a break-the-glass reader opens."},
        {"name": "crew-report", "definition": "urn:renkei:operation:crew-report",
         "documentation": "The ambulance crew's blocks (the call, the crew's findings and destination) added to "
                          "the current emergency sheet: Parameters 'report' (a QuestionnaireResponse with only "
                          "emergency.call and emergency.crew) and optional 'receiving' (Organization/<id>)."},
        {"name": "break-glass", "definition": "urn:renkei:operation:break-glass",
         "documentation": "Emergency access outside the care team: a Parameters resource with a 'reason'; for the "
                          "professions the permission matrix names, for a limited time, audited."},
        {"name": "access-report", "definition": "urn:renkei:operation:access-report",
         "documentation": "Who accessed this patient's data, and when (network administrators)."},
    ],
    "CareTeam": [
        {"name": "invitations", "definition": "urn:renkei:operation:team-invitations",
         "documentation": "Each newcomer's invitation and the step it waits for (invitee, organization, "
                          "patient); for the team's managers."},
        {"name": "accept", "definition": "urn:renkei:operation:team-accept",
         "documentation": "The invited user (or, for an organisation, its administrator) accepts."},
        {"name": "approve", "definition": "urn:renkei:operation:team-approve",
         "documentation": "Parameters 'member' and 'approval' (organization: by the invitee's organisation "
                          "administrator; patient: recorded by a team manager), optional 'note'."},
    ],
}


def smart_configuration(settings: Settings) -> dict[str, Any]:
    return {
        "issuer": settings.issuer,
        "jwks_uri": settings.jwks_url,
        "token_endpoint": settings.token_endpoint,
        "grant_types_supported": ["client_credentials", "refresh_token"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["ES384", "RS384"],
        "scopes_supported": ["openid", "fhirUser", "user/*.cruds", "system/*.cruds", "system/*.rs"],
        "capabilities": ["client-confidential-asymmetric", "permission-v2", "permission-user"],
        "code_challenge_methods_supported": [],
    }
