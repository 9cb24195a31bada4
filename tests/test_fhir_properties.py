"""Property-based tests: search-parameter parsing never crashes, and create → read gives back what was sent."""

from __future__ import annotations

from datetime import date
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.kit.errors import BadRequest
from services.share.store import params as P
from services.share.store import search as S
from tests.fhir_helpers import FHIR_JSON
from tests.infra import LiveServer, Network

NAMES = [
    "name",
    "family",
    "given",
    "identifier",
    "birthdate",
    "gender",
    "_id",
    "_lastUpdated",
    "_count",
    "_sort",
    "_include",
    "_revinclude",
    "_summary",
    "_cursor",
    "_before",
    "_total",
    "name:exact",
    "name:contains",
    "gender:not",
    "bogus",
    "",
    ":",
    "_format",
]
text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=30)


@given(st.lists(st.tuples(st.sampled_from(NAMES) | text, text), max_size=6))
@settings(max_examples=400, deadline=None)
def test_search_parsing_accepts_or_refuses_cleanly(items: list[tuple[str, str]]) -> None:
    try:
        query = S.parse("Patient", items)
    except BadRequest:
        return
    assert 0 <= query.count <= S.MAX_COUNT
    for item in query.filters:
        assert item.values and all(v != "" for v in item.values)


dates = st.dates(min_value=date(1900, 1, 1), max_value=date(2100, 12, 31))


@given(dates, st.sampled_from(["year", "month", "day"]), st.sampled_from(S.DATE_PREFIXES))
def test_date_values_parse_to_ordered_ranges(day: date, precision: str, prefix: str) -> None:
    text_value = {"year": f"{day:%Y}", "month": f"{day:%Y-%m}", "day": day.isoformat()}[precision]
    found = P.date_range(text_value)
    assert found is not None
    low, high = found
    assert low < high and low.date() <= day
    query = S.parse("Patient", [("birthdate", prefix + text_value)])
    assert query.filters[0].values == [prefix + text_value]


japanese = st.text(
    alphabet=st.sampled_from("山田佐藤鈴木花子太郎アイウエオカキクケコやまだｶﾀｶﾅＡＢＣ "), min_size=1, max_size=12
)


@st.composite
def patients(draw: st.DrawFn) -> dict[str, Any]:
    family = draw(japanese.filter(lambda s: s.strip() != ""))
    return {
        "resourceType": "Patient",
        "active": draw(st.booleans()),
        "name": [{"family": family.strip(), "given": [draw(japanese).strip() or "名"]}],
        "gender": draw(st.sampled_from(["male", "female", "other", "unknown"])),
        "birthDate": draw(dates).isoformat(),
        "telecom": draw(
            st.lists(
                st.fixed_dictionaries(
                    {"system": st.just("phone"), "value": st.from_regex(r"0\d{1,4}-\d{1,4}-\d{4}", fullmatch=True)}
                ),
                max_size=2,
            )
        ),
    }


@given(body=patients())
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_create_then_read_round_trips(server: LiveServer, network: Network, body: dict[str, Any]) -> None:
    http = server.client()
    auth = getattr(network, "_auth", None) or network.bearer("physician")
    network._auth = auth  # type: ignore[attr-defined]  # one login for all examples
    created = http.post("/fhir/Patient", json=body, headers={**auth, **FHIR_JSON})
    assert created.status_code == 201, created.text
    read = http.get(f"/fhir/Patient/{created.json()['id']}", headers=auth).json()
    assert {k: v for k, v in read.items() if k not in ("id", "meta")} == body
    found = http.get("/fhir/Patient", params={"family:exact": body["name"][0]["family"]}, headers=auth).json()
    assert read["id"] in {e["resource"]["id"] for e in found.get("entry", [])}


@given(st.lists(st.tuples(st.sampled_from(NAMES) | text, text), max_size=4))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_no_query_string_gets_a_500(server: LiveServer, network: Network, items: list[tuple[str, str]]) -> None:
    auth = getattr(network, "_auth", None) or network.bearer("physician")
    network._auth = auth  # type: ignore[attr-defined]
    answer = server.client().get("/fhir/Patient", params=httpx.QueryParams(items), headers=auth)
    assert answer.status_code == 200 or 400 <= answer.status_code < 500, answer.text
    assert answer.json()["resourceType"] in ("Bundle", "OperationOutcome")
