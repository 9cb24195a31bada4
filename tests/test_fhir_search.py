"""FHIR search over the blind index: names in kanji and kana, tokens, dates, references, paging, includes."""

from __future__ import annotations

import uuid

import httpx
import pytest

from tests.fhir_helpers import create, created_id, patient, response


def ids(bundle: dict[str, object], mode: str = "match") -> set[str]:
    entries = bundle.get("entry") or []
    return {e["resource"]["id"] for e in entries if e["search"]["mode"] == mode}  # type: ignore[index, union-attr]


def test_name_matches_kanji_and_kana_with_width_folding(http: httpx.Client, auth: dict[str, str]) -> None:
    yamada = created_id(create(http, auth, patient("山田", "太郎", ("ヤマダ", "タロウ"))))
    sato = created_id(create(http, auth, patient("佐藤", "花子", ("サトウ", "ハナコ"))))
    for query in ("山田", "ヤマダ", "やまだ", "ﾔﾏﾀﾞ", "山田太郎", "山田 太郎", "ヤマダタロウ"):
        found = ids(http.get("/fhir/Patient", params={"name": query}, headers=auth).json())
        assert found == {yamada}, query
    assert ids(http.get("/fhir/Patient", params={"family": "サトウ"}, headers=auth).json()) == {sato}
    assert ids(http.get("/fhir/Patient", params={"name:exact": "山田"}, headers=auth).json()) == {yamada}
    assert ids(http.get("/fhir/Patient", params={"name:exact": "山"}, headers=auth).json()) == set()
    assert ids(http.get("/fhir/Patient", params={"name:contains": "タロ"}, headers=auth).json()) == {yamada}
    assert ids(http.get("/fhir/Patient", params={"name:contains": "マダタ"}, headers=auth).json()) == {yamada}
    assert ids(http.get("/fhir/Patient", params={"name": "山田,佐藤"}, headers=auth).json()) == {yamada, sato}


def test_contains_does_not_return_bigram_false_positives(http: httpx.Client, auth: dict[str, str]) -> None:
    # "あいう" and "いえ" share the bigram "い…" pieces but not the text "あいえ".
    created_id(create(http, auth, patient("あいう", "いえ", ("アイウ", "イエ"))))
    assert ids(http.get("/fhir/Patient", params={"family:contains": "あいえ"}, headers=auth).json()) == set()


def test_identifier_gender_birthdate(http: httpx.Client, auth: dict[str, str]) -> None:
    number = uuid.uuid4().hex[:8]
    old = created_id(create(http, auth, patient(identifier=number, birth="1940-05-12", gender="male")))
    young = created_id(create(http, auth, patient(birth="1960-01-02", gender="female")))
    system = "urn:oid:1.2.392.100495.20.3.51.1"
    assert ids(http.get("/fhir/Patient", params={"identifier": f"{system}|{number}"}, headers=auth).json()) == {old}
    assert ids(http.get("/fhir/Patient", params={"identifier": number}, headers=auth).json()) == {old}
    assert ids(http.get("/fhir/Patient", params={"identifier": f"|{number}"}, headers=auth).json()) == set()
    assert ids(http.get("/fhir/Patient", params={"gender": "female"}, headers=auth).json()) == {young}
    cases = {"1940": {old}, "1940-05": {old}, "eq1940-05-12": {old}, "ne1940-05-12": {young}, "lt1950": {old},
             "gt1950": {young}, "le1940-05-12": {old}, "ge1960-01-02": {young}, "lt1900": set()}
    for value, expected in cases.items():
        assert ids(http.get("/fhir/Patient", params={"birthdate": value}, headers=auth).json()) == expected, value


def test_patient_scoped_sheet_search_sort_and_paging(http: httpx.Client, auth: dict[str, str]) -> None:
    pid = created_id(create(http, auth, patient()))
    other = created_id(create(http, auth, patient(family="別")))
    sheets = [created_id(create(http, auth, response(pid, authored=f"2026-10-{day:02d}T09:00:00+09:00")))
              for day in range(1, 8)]
    created_id(create(http, auth, response(other)))
    query = {"patient": pid, "_sort": "authored", "_count": "3"}
    page = http.get("/fhir/QuestionnaireResponse", params=query, headers=auth).json()
    seen = [e["resource"]["id"] for e in page["entry"]]
    assert seen == sheets[:3]
    # A sheet added in front of the cursor does not shift the pages.
    created_id(create(http, auth, response(pid, authored="2026-09-01T09:00:00+09:00")))
    while next_link := next((link["url"] for link in page["link"] if link["relation"] == "next"), None):
        page = http.get(next_link, headers=auth).json()
        seen += [e["resource"]["id"] for e in page["entry"]]
    assert seen == sheets
    previous = next(link["url"] for link in page["link"] if link["relation"] == "previous")
    back = http.get(previous, headers=auth).json()
    assert [e["resource"]["id"] for e in back["entry"]] == sheets[3:6]
    count = http.get("/fhir/QuestionnaireResponse", params={"patient": pid, "_summary": "count"}, headers=auth)
    assert count.json()["total"] == 8
    newest = http.get("/fhir/QuestionnaireResponse", params={"patient": f"Patient/{pid}", "_sort": "-authored",
                                                               "_count": "1"}, headers=auth).json()
    assert [e["resource"]["id"] for e in newest["entry"]] == [sheets[-1]]


def test_tokens_uris_dates_on_sheets(http: httpx.Client, auth: dict[str, str]) -> None:
    pid = created_id(create(http, auth, patient()))
    done = created_id(create(http, auth, response(pid, status="completed", authored="2026-11-01")))
    draft = created_id(create(http, auth, response(pid, status="in-progress", authored="2026-11-03")))
    get = lambda **p: ids(http.get("/fhir/QuestionnaireResponse", params=p, headers=auth).json())  # noqa: E731
    assert get(patient=pid, status="completed") == {done}
    assert get(patient=pid, status="completed,in-progress") == {done, draft}
    assert get(patient=pid, questionnaire="urn:renkei:questionnaire:DischargeSheet") == {done, draft}
    assert get(patient=pid, questionnaire="urn:renkei:questionnaire:DischargeSheet|1.0.0") == {done, draft}
    assert get(patient=pid, questionnaire="urn:renkei:questionnaire:Other") == set()
    assert get(patient=pid, authored="ge2026-11-02") == {draft}
    assert get(_id=done) == {done}


def test_include_and_revinclude(http: httpx.Client, auth: dict[str, str]) -> None:
    pid = created_id(create(http, auth, patient()))
    sheet = created_id(create(http, auth, response(pid)))
    bundle = http.get("/fhir/QuestionnaireResponse", params={"_id": sheet, "_include": "QuestionnaireResponse:subject"},
                      headers=auth).json()
    assert ids(bundle) == {sheet} and ids(bundle, "include") == {pid}
    bundle = http.get("/fhir/Patient", params={"_id": pid, "_revinclude": "QuestionnaireResponse:subject"},
                      headers=auth).json()
    assert ids(bundle) == {pid} and ids(bundle, "include") == {sheet}


def test_last_updated_and_post_search(http: httpx.Client, auth: dict[str, str]) -> None:
    pid = created_id(create(http, auth, patient()))
    assert pid in ids(http.get("/fhir/Patient", params={"_lastUpdated": "gt2020-01-01"}, headers=auth).json())
    assert pid not in ids(http.get("/fhir/Patient", params={"_lastUpdated": "lt2020-01-01"}, headers=auth).json())
    posted = http.post("/fhir/Patient/_search", data={"_id": pid}, headers=auth)
    assert posted.status_code == 200 and ids(posted.json()) == {pid}


def test_deleted_resources_leave_search(http: httpx.Client, auth: dict[str, str]) -> None:
    number = uuid.uuid4().hex[:8]
    pid = created_id(create(http, auth, patient(identifier=number)))
    http.delete(f"/fhir/Patient/{pid}", headers=auth)
    assert ids(http.get("/fhir/Patient", params={"identifier": number}, headers=auth).json()) == set()


@pytest.mark.parametrize("query", ["bogus=1", "birthdate=1940-99", "birthdate=yesterday", "_count=-1",
                                   "_sort=name", "gender:exact=male", "_include=Patient:name", "_cursor=%%%",
                                   "_summary=true", "name="])
def test_bad_searches_get_a_400_outcome(http: httpx.Client, auth: dict[str, str], query: str) -> None:
    answer = http.get(f"/fhir/Patient?{query}", headers=auth)
    assert answer.status_code == 400, (query, answer.text)
    assert answer.json()["resourceType"] == "OperationOutcome"


def test_patient_timeline_answers_exactly_as_the_general_search(http: httpx.Client, auth: dict[str, str]) -> None:
    # `patient=<id>` alone, first page, newest first, is answered by a dedicated statement; adding a filter that
    # excludes nothing sends the same search down the general path. Both must agree, entry for entry.
    pid = created_id(create(http, auth, patient()))
    other = created_id(create(http, auth, patient(family="佐藤")))
    sheets = [created_id(create(http, auth, response(pid))) for _ in range(7)]
    create(http, auth, response(other))
    assert http.delete(f"/fhir/QuestionnaireResponse/{sheets[3]}", headers=auth).status_code == 204
    assert http.put(f"/fhir/QuestionnaireResponse/{sheets[0]}", headers=auth,
                    json={**response(pid, status="amended"), "id": sheets[0]}).status_code == 200  # now the newest
    for reference in (pid, f"Patient/{pid}"):
        for count in ("3", "6", "20"):
            timeline = http.get("/fhir/QuestionnaireResponse", headers=auth,
                                params={"patient": reference, "_count": count}).json()
            general = http.get("/fhir/QuestionnaireResponse", headers=auth,
                               params={"patient": reference, "_count": count,
                                       "_lastUpdated": "ge1900-01-01"}).json()
            order = [e["resource"]["id"] for e in timeline.get("entry", [])]
            assert order == [e["resource"]["id"] for e in general.get("entry", [])]
            assert [e["resource"] for e in timeline["entry"]] == [e["resource"] for e in general["entry"]]
            assert ("next" in {link["relation"] for link in timeline["link"]}) == (int(count) < 6)
    assert order[0] == sheets[0] and sheets[3] not in order and len(order) == 6
