"""The API driven by a real FHIR client library (fhirpy), as a hospital integrator would."""

from __future__ import annotations

import pytest
from fhirpy import SyncFHIRClient
from fhirpy.base.exceptions import OperationOutcome, ResourceNotFound

from tests.fhir_helpers import patient, response
from tests.infra import LiveServer, Network


@pytest.fixture
def client(server: LiveServer, network: Network) -> SyncFHIRClient:
    token = network.login("physician")["access_token"]
    return SyncFHIRClient(
        f"{server.base_url}/fhir", authorization=f"Bearer {token}", extra_headers={"Accept": "application/fhir+json"}
    )


def test_create_read_update_delete_with_fhirpy(client: SyncFHIRClient) -> None:
    resource = client.resource(
        "Patient", **{k: v for k, v in patient("田中", "一郎", ("タナカ", "イチロウ")).items() if k != "resourceType"}
    )
    resource.save()
    assert resource.id and resource["meta"]["versionId"] == "1"
    fetched = client.reference("Patient", resource.id).to_resource()
    assert fetched["name"][0]["family"] == "田中"
    fetched["gender"] = "other"
    fetched.save()
    assert client.reference("Patient", resource.id).to_resource()["gender"] == "other"
    fetched.delete()
    with pytest.raises((ResourceNotFound, OperationOutcome)):
        client.reference("Patient", resource.id).to_resource()


def test_search_and_paging_with_fhirpy(client: SyncFHIRClient) -> None:
    owner = client.resource(
        "Patient", **{k: v for k, v in patient("中村", "次郎", ("ナカムラ", "ジロウ")).items() if k != "resourceType"}
    )
    owner.save()
    for day in range(1, 6):
        body = response(owner.id, authored=f"2026-10-{day:02d}")
        client.resource("QuestionnaireResponse", **{k: v for k, v in body.items() if k != "resourceType"}).save()
    found = client.resources("Patient").search(name="ナカムラ").fetch()
    assert [p.id for p in found] == [owner.id]
    # fetch_all follows the server's `next` links page by page.
    sheets = client.resources("QuestionnaireResponse").search(patient=owner.id).sort("authored").limit(2).fetch_all()
    assert [s["authored"] for s in sheets] == [f"2026-10-{d:02d}" for d in range(1, 6)]
    assert client.resources("QuestionnaireResponse").search(patient=owner.id).count() == 5


def test_errors_reach_fhirpy_as_operation_outcomes(client: SyncFHIRClient) -> None:
    bad = client.resource("Patient", gender="bogus")
    with pytest.raises(OperationOutcome) as raised:
        bad.save()
    assert "Patient.gender" in str(raised.value)
