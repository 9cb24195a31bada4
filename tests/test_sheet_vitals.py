"""A daily care note's vitals become valid, LOINC-coded R4B Observations interpreted against the ranges file, and
readings beyond the urgent bounds come back as findings in Japanese and English."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.kit.settings import REPO_ROOT
from services.share.sheets.validation import validate_response
from services.share.sheets.vital_ranges import DEFAULT_RANGES, VitalRanges, VitalRangesError
from services.share.sheets.vitals import (
    Finding,
    is_urgent,
    observations_from_note,
    urgent_findings,
)
from services.share.store.validation import parse_resource

Json = dict[str, Any]
TEMPLATE: Json = orjson.loads((REPO_ROOT / "schemas" / "questionnaires" / "DailyCareNote.json").read_bytes())
RANGES = VitalRanges.load(DEFAULT_RANGES)
REF = "QuestionnaireResponse/note-1/_history/3"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"


def q(link_id: str, *answers: Json) -> Json:
    return {"linkId": link_id, "answer": list(answers)}


def g(link_id: str, *items: Json) -> Json:
    return {"linkId": link_id, "item": list(items)}


def note(
    *, temperature: Any = 36.6, systolic: Any = 128, diastolic: Any = 76, pulse: Any = 72, spo2: Any = 96,
    rate: Any = 16, pain: Any = 2, urgent: bool = False, oxygen: float | None = None,
) -> Json:
    """A nurse's morning visit; a vital passed as None is left unanswered."""

    def number(link_id: str, value: Any, kind: str) -> list[Json]:
        return [] if value is None else [q(link_id, {kind: value})]

    bp = [*number("daily.vitals.blood-pressure.systolic", systolic, "valueInteger"),
          *number("daily.vitals.blood-pressure.diastolic", diastolic, "valueInteger")]
    oxygen_items = [] if oxygen is None else [q("daily.vitals.on-oxygen", {"valueBoolean": True}),
                                              q("daily.vitals.oxygen-flow", {"valueDecimal": oxygen})]
    return {
        "resourceType": "QuestionnaireResponse",
        "questionnaire": "urn:renkei:questionnaire:DailyCareNote|1.0.0",
        "status": "completed",
        "subject": {"reference": "Patient/p1"},
        "authored": "2026-12-02T11:05:00+09:00",
        "item": [
            g("daily.visit",
              q("daily.visit.time", {"valueDateTime": "2026-12-02T09:30:00+09:00"}),
              q("daily.visit.urgent", {"valueBoolean": urgent})),
            g("daily.vitals",
              *number("daily.vitals.temperature", temperature, "valueDecimal"),
              *([g("daily.vitals.blood-pressure", *bp)] if bp else []),
              *number("daily.vitals.pulse", pulse, "valueInteger"),
              *number("daily.vitals.spo2", spo2, "valueInteger"),
              *number("daily.vitals.respiratory-rate", rate, "valueInteger"),
              *oxygen_items),
            g("daily.pain",
              *number("daily.pain.nrs", pain, "valueInteger"),
              q("daily.pain.site", {"valueString": "腰部（体動時）"})),
            g("daily.observation",
              q("daily.observation.state", {"valueString": "朝食は8割摂取。表情穏やかで会話も弾む。"})),
            g("daily.handover", q("daily.handover.text", {"valueString": "夕方にもう一度血圧を測ってください。"})),
        ],
    }


def valid(observation: Json) -> Json:
    return parse_resource(orjson.dumps(observation), "Observation")


def by_code(observations: list[Json]) -> dict[str, Json]:
    return {o["code"]["coding"][0]["code"]: o for o in observations}


def interpretation(part: Json) -> str:
    codings = part["interpretation"][0]["coding"]
    assert codings[0]["system"] == INTERPRETATION
    return str(codings[0]["code"])


def observations(body: Json, template: Json = TEMPLATE) -> list[Json]:
    return observations_from_note(body, template, note_reference=REF, ranges=RANGES)


def test_normal_vitals_become_loinc_coded_observations() -> None:
    found = observations(note())
    for observation in found:
        valid(observation)
    obs = by_code(found)
    assert list(obs) == ["8310-5", "85354-9", "8867-4", "59408-5", "9279-1", "72514-3"]
    units = {code: o["valueQuantity"]["code"] for code, o in obs.items() if "valueQuantity" in o}
    assert units == {"8310-5": "Cel", "8867-4": "/min", "59408-5": "%", "9279-1": "/min", "72514-3": "{score}"}
    assert obs["8310-5"]["valueQuantity"] == {
        "value": 36.6, "unit": "Cel", "system": "http://unitsofmeasure.org", "code": "Cel"}
    assert obs["8310-5"]["code"]["text"] == "体温"
    for o in found:
        assert o["status"] == "final"
        assert o["subject"] == {"reference": "Patient/p1"}
        assert o["effectiveDateTime"] == "2026-12-02T09:30:00+09:00"  # the visit, not when it was written up
        assert o["derivedFrom"] == [{"reference": REF}]
        assert interpretation(o) == "N"
    assert [c["coding"][0]["code"] for o in found for c in o["category"]] == ["vital-signs"] * 5 + ["survey"]
    bp = obs["85354-9"]
    assert "valueQuantity" not in bp
    assert [(c["code"]["coding"][0]["code"], c["valueQuantity"]["value"], c["valueQuantity"]["code"],
             interpretation(c)) for c in bp["component"]] == [("8480-6", 128, "mm[Hg]", "N"),
                                                               ("8462-4", 76, "mm[Hg]", "N")]
    # The vital-signs profile wants 2708-6 beside the pulse-oximetry code.
    assert [c["code"] for c in obs["59408-5"]["code"]["coding"]] == ["59408-5", "2708-6"]


def test_the_note_used_here_is_a_valid_daily_care_note() -> None:
    assert validate_response(note(oxygen=1.5), TEMPLATE) == []
    assert validate_response(note(temperature=None, systolic=None, diastolic=None), TEMPLATE) == []


@pytest.mark.parametrize(
    ("note_status", "status"),
    [("completed", "final"), ("amended", "amended"), ("in-progress", "preliminary"),
     ("entered-in-error", "entered-in-error")],
)
def test_the_observation_status_follows_the_note(note_status: str, status: str) -> None:
    body = {**note(), "status": note_status}
    assert {o["status"] for o in observations(body)} == {status}
    for o in observations(body):
        valid(o)


def test_identifiers_stay_the_same_across_versions_of_a_note() -> None:
    first = observations_from_note(note(), TEMPLATE, note_reference="QuestionnaireResponse/note-1/_history/1")
    again = observations_from_note(note(pulse=80), TEMPLATE, note_reference="QuestionnaireResponse/note-1/_history/2")
    ids = [o["identifier"] for o in first]
    assert ids == [o["identifier"] for o in again]
    assert len({i[0]["value"] for i in ids}) == len(ids)
    assert ids[0] == [{"system": "urn:renkei:identifier:sheet-observation",
                       "value": "QuestionnaireResponse/note-1#daily.vitals.temperature"}]


def test_observations_carry_the_sensitivity_label_of_their_section() -> None:
    # The vitals section is nursing information: a reader it is withheld from must not read it as Observations.
    for o in observations(note()):
        assert o["meta"]["security"] == [{"system": "urn:renkei:codesystem:sensitivity-label", "code": "nursing"}]


def test_an_amended_note_gives_amended_observations_and_authored_stands_in_for_the_visit_time() -> None:
    body = note()
    body["status"] = "amended"
    body["item"][0]["item"] = [q("daily.visit.urgent", {"valueBoolean": False})]
    for o in observations(body):
        assert o["status"] == "amended"
        assert o["effectiveDateTime"] == "2026-12-02T11:05:00+09:00"


@pytest.mark.parametrize(
    ("vitals", "expected"),
    [
        ({"temperature": 37.5}, "H"),
        ({"temperature": 38.0}, "HH"),  # "urgent at 38.0 or above"
        ({"temperature": 35.0}, "L"),  # "urgent below 35.0": 35.0 itself is only low
        ({"temperature": 34.9}, "LL"),
        ({"pulse": 120}, "HH"),
        ({"pulse": 55}, "L"),
        ({"pulse": 49}, "LL"),
        ({"spo2": 93}, "L"),
        ({"spo2": 89}, "LL"),
        ({"rate": 25}, "HH"),
        ({"rate": 9}, "LL"),
        ({"pain": 5}, "H"),
        ({"pain": 7}, "HH"),
    ],
)
def test_each_reading_is_interpreted_against_the_ranges(vitals: Json, expected: str) -> None:
    (name,) = vitals
    code = {"temperature": "8310-5", "pulse": "8867-4", "spo2": "59408-5", "rate": "9279-1", "pain": "72514-3"}[name]
    assert interpretation(by_code(observations(note(**vitals)))[code]) == expected


def test_out_of_range_note_gives_the_urgent_findings() -> None:
    body = note(temperature=38.4, systolic=86, diastolic=48, pulse=124, spo2=88, rate=26, pain=8)
    obs = by_code(observations(body))
    bp = obs["85354-9"]
    assert [interpretation(c) for c in bp["component"]] == ["LL", "L"]
    assert interpretation(bp) == "LL"  # the panel says the worst of its parts
    for o in obs.values():
        valid(o)
    findings = urgent_findings(body, RANGES)
    assert [(f.link_id, f.value, f.bound) for f in findings] == [
        ("daily.vitals.temperature", 38.4, 38.0),
        ("daily.vitals.blood-pressure.systolic", 86, 90),
        ("daily.vitals.pulse", 124, 120),
        ("daily.vitals.spo2", 88, 90),
        ("daily.vitals.respiratory-rate", 26, 25),
        ("daily.pain.nrs", 8, 7),
    ]
    assert findings[0] == Finding(
        "daily.vitals.temperature", 38.4, 38.0,
        "発熱しています（体温 38.4℃、38.0℃以上）", "Fever: temperature 38.4 °C is 38.0 °C or higher")
    assert is_urgent(body, RANGES)


def test_a_calm_note_is_urgent_only_when_the_recorder_says_so() -> None:
    assert urgent_findings(note(), RANGES) == []
    assert not is_urgent(note(), RANGES)
    assert is_urgent(note(urgent=True), RANGES)


def test_unanswered_vitals_give_no_observation() -> None:
    body = note(temperature=None, systolic=None, diastolic=None, spo2=None, rate=None, pain=None)
    assert [o["code"]["coding"][0]["code"] for o in observations(body)] == ["8867-4"]
    body["item"] = [item for item in body["item"] if item["linkId"] != "daily.vitals"]
    assert observations(body) == []
    assert urgent_findings(body, RANGES) == []


def test_a_blood_pressure_with_only_the_systolic_keeps_only_that_component() -> None:
    bp = by_code(observations(note(systolic=184, diastolic=None)))["85354-9"]
    valid(bp)
    assert [c["code"]["coding"][0]["code"] for c in bp["component"]] == ["8480-6"]
    assert interpretation(bp) == "HH"


def test_oxygen_flow_travels_with_the_spo2() -> None:
    spo2 = by_code(observations(note(spo2=92, oxygen=2.0)))["59408-5"]
    valid(spo2)
    assert spo2["component"][0]["code"]["coding"][0]["code"] == "3151-8"
    assert spo2["component"][0]["valueQuantity"]["value"] == 2.0
    assert "component" not in by_code(observations(note()))["59408-5"]


def test_codes_come_from_the_template() -> None:
    template = copy.deepcopy(TEMPLATE)
    vitals = next(item for item in template["item"] if item["linkId"] == "daily.vitals")
    pulse = next(item for item in vitals["item"] if item["linkId"] == "daily.vitals.pulse")
    pulse["code"] = [{"system": "http://loinc.org", "code": "8889-8", "display": "Heart rate by Pulse oximetry"}]
    template["item"] = [item for item in template["item"] if item["linkId"] != "daily.pain"]
    codes = [o["code"]["coding"][0]["code"] for o in observations(note(), template)]
    assert codes == ["8310-5", "85354-9", "8889-8", "59408-5", "9279-1"]


def test_the_shipped_ranges_match_the_template() -> None:
    # A reading is interpreted only when its bounds exist in the template's unit: every shipped range must be used.
    measured = [part for o in observations(note(oxygen=1.0)) for part in [o, *o.get("component", [])]
                if "valueQuantity" in part]
    interpreted = [part for part in measured if "interpretation" in part]
    assert len(interpreted) == len(RANGES.by_link_id) == 7
    for part in interpreted:
        assert part["referenceRange"][0]["low"]["code"] == part["valueQuantity"]["code"]


READING = st.one_of(
    st.none(),
    st.integers(min_value=-(10**12), max_value=10**12),
    st.floats(),  # NaN and infinities included: they must count as unanswered, not crash
    st.booleans(),
    st.text(max_size=5),
)


@settings(max_examples=150, deadline=None)
@given(st.fixed_dictionaries({
    name: READING for name in ("temperature", "systolic", "diastolic", "pulse", "spo2", "rate", "pain")}),
    st.one_of(st.none(), st.floats(min_value=0, max_value=15)))
def test_arbitrary_numbers_never_raise_and_always_give_valid_observations(vitals: Json, oxygen: float | None) -> None:
    body = note(**vitals, oxygen=oxygen)
    for o in observations(body):
        valid(o)
    for finding in urgent_findings(body, RANGES):
        assert finding.message_ja and finding.message_en
    is_urgent(body, RANGES)


def broken(tmp: Path, change: Any) -> Path:
    data = orjson.loads(DEFAULT_RANGES.read_bytes())
    change(data)
    path = tmp / "ranges.json"
    path.write_bytes(orjson.dumps(data))
    return path


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop("vitals"), "non-empty object 'vitals'"),
        (lambda d: d["vitals"]["daily.vitals.pulse"].pop("unit"), r"'daily.vitals.pulse'.*unit"),
        (lambda d: d["vitals"]["daily.vitals.pulse"]["normal"].update(low="60"), "'normal' needs numbers"),
        (lambda d: d["vitals"]["daily.vitals.pulse"]["normal"].update(low=110), "low is above high"),
        (lambda d: d["vitals"]["daily.vitals.pulse"]["urgent"].update(above=130), "'urgent' takes numbers"),
        (lambda d: d["vitals"]["daily.vitals.pulse"]["urgent"].update(atOrAbove=90), "outside the normal range"),
        (lambda d: d["vitals"]["daily.vitals.spo2"]["messages"].pop("below"), "'messages.below' needs"),
        (lambda d: d["vitals"]["daily.vitals.spo2"]["messages"]["below"].update(en="SpO2 {reading}"),
         "only {value} and {bound}"),
    ],
)
def test_a_broken_ranges_file_is_refused_with_a_clear_error(tmp_path: Path, change: Any, message: str) -> None:
    with pytest.raises(VitalRangesError, match=message):
        VitalRanges.load(broken(tmp_path, change))


def test_a_ranges_file_that_is_not_json_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ranges.json"
    path.write_text("{ not json")
    with pytest.raises(VitalRangesError, match="cannot be read as JSON"):
        VitalRanges.load(path)


EXAMPLES = sorted((REPO_ROOT / "schemas" / "examples" / "DailyCareNote").glob("valid-*.json"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_shipped_example_notes_give_valid_observations(path: Path) -> None:
    body = orjson.loads(path.read_bytes())
    for o in observations(body):
        valid(o)
        assert o["derivedFrom"] == [{"reference": REF}]
    is_urgent(body, RANGES)
