"""The CapabilityStatement and SMART configuration: what this server does, told to integrators.

Both are public. The resource list grows with the store; it states exactly what is supported, nothing more.
"""

from __future__ import annotations

from typing import Any

from fhir.resources.R4B.capabilitystatement import CapabilityStatement

from services.kit.settings import Settings

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
                "configuration). Every interaction except this statement requires a token.",
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
                "resource": [],
            }
        ],
    }
    # Built from the model once, so a malformed statement fails at start-up, not in a client.
    CapabilityStatement.model_validate(statement)
    return statement


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
