"""A filled sheet is checked against the template it names: realistic sheets pass, each kind of mistake is caught
at the item it concerns, with a message in Japanese and in English."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.kit.settings import REPO_ROOT
from services.share.sheets.validation import Issue, validate_response

SHIPPED = REPO_ROOT / "schemas" / "questionnaires"
JAPANESE = re.compile(r"[\u3040-\u30ff\u4e00-\u9fff]")
Json = dict[str, Any]


def template(name: str) -> Json:
    data: Json = orjson.loads((SHIPPED / f"{name}.json").read_bytes())
    return data


def node(tpl: Json, link_id: str) -> Json:
    pending = list(tpl["item"])
    while pending:
        item = pending.pop()
        if item["linkId"] == link_id:
            return item
        pending += item.get("item", [])
    raise KeyError(link_id)


def option(tpl: Json, link_id: str, code: str) -> Json:
    """An answer coding taken from the template's own answerOptions, so the test breaks if the template drops it."""
    coding = next(o["valueCoding"] for o in node(tpl, link_id)["answerOption"] if o["valueCoding"]["code"] == code)
    return {"valueCoding": dict(coding)}


def q(link_id: str, *answers: Json) -> Json:
    return {"linkId": link_id, "answer": list(answers)}


def g(link_id: str, *items: Json) -> Json:
    return {"linkId": link_id, "item": list(items)}


def response(tpl: Json, *items: Json) -> Json:
    return {
        "resourceType": "QuestionnaireResponse",
        "questionnaire": f"{tpl['url']}|{tpl['version']}",
        "status": "completed",
        "subject": {"reference": "Patient/p1"},
        "item": list(items),
    }


def daily_note() -> tuple[Json, Json]:
    tpl = template("DailyCareNote")
    return tpl, response(
        tpl,
        g(
            "daily.visit",
            q("daily.visit.time", {"valueDateTime": "2026-12-02T09:30:00+09:00"}),
            q("daily.visit.profession", option(tpl, "daily.visit.profession", "nurse")),
            q("daily.visit.urgent", {"valueBoolean": False}),
        ),
        g(
            "daily.vitals",
            q("daily.vitals.temperature", {"valueDecimal": 36.8}),
            g(
                "daily.vitals.blood-pressure",
                q("daily.vitals.blood-pressure.systolic", {"valueInteger": 128}),
                q("daily.vitals.blood-pressure.diastolic", {"valueInteger": 76}),
            ),
            q("daily.vitals.pulse", {"valueInteger": 72}),
            q("daily.vitals.spo2", {"valueInteger": 95}),
            q("daily.vitals.on-oxygen", {"valueBoolean": True}),
            q("daily.vitals.oxygen-flow", {"valueDecimal": 1.0}),
        ),
        g("daily.sleep", q("daily.sleep.state", option(tpl, "daily.sleep.state", "fair"))),
        g(
            "daily.skin",
            q("daily.skin.has-ulcer", {"valueBoolean": True}),
            g(
                "daily.skin.ulcer",
                q("daily.skin.ulcer.site", {"valueString": "仙骨部"}),
                q("daily.skin.ulcer.depth", option(tpl, "daily.skin.ulcer.depth", "d2")),
                q("daily.skin.ulcer.care", {"valueString": "洗浄後、ハイドロコロイド材で保護"}),
            ),
            g(
                "daily.skin.ulcer",
                q("daily.skin.ulcer.site", {"valueString": "右踵部"}),
                q("daily.skin.ulcer.depth", option(tpl, "daily.skin.ulcer.depth", "d1")),
            ),
        ),
        g(
            "daily.medication",
            q("daily.medication.taken", option(tpl, "daily.medication.taken", "partly")),
            q("daily.medication.prn", {"valueString": "カロナール200mg 1錠"}, {"valueString": "酸化マグネシウム330mg"}),
        ),
        g(
            "daily.observation",
            q("daily.observation.photo", {"valueAttachment": {"contentType": "image/jpeg", "url": "Binary/b1"}}),
        ),
        g("daily.handover", q("daily.handover.text", {"valueString": "夕方に再度SpO2を確認してください。"})),
    )


def emergency_sheet() -> tuple[Json, Json]:
    tpl = template("EmergencySheet")

    def contact(name: str, relation: str, phone: str) -> Json:
        return g(
            "emergency.contacts.person",
            q("emergency.contacts.person.name", {"valueString": name}),
            q("emergency.contacts.person.relation", {"valueString": relation}),
            q("emergency.contacts.person.phone", {"valueString": phone}),
        )

    return tpl, response(
        tpl,
        g(
            "emergency.identity",
            q("emergency.identity.name", {"valueString": "山田 花子"}),
            q("emergency.identity.kana", {"valueString": "ヤマダ ハナコ"}),
            q("emergency.identity.birth-date", {"valueDate": "1938-04-12"}),
            q("emergency.identity.sex", option(tpl, "emergency.identity.sex", "female")),
            q("emergency.identity.address", {"valueString": "東京都架空区緑町1-2-3"}),
            q("emergency.identity.care-level", option(tpl, "emergency.identity.care-level", "care-3")),
        ),
        g(
            "emergency.contacts",
            contact("山田 一郎", "長男", "090-0000-0001"),
            contact("佐藤 良子", "長女", "090-0000-0002"),
        ),
        g(
            "emergency.team",
            g(
                "emergency.team.primary",
                q("emergency.team.primary.name", {"valueString": "みどり在宅クリニック"}),
                q("emergency.team.primary.phone-24h", {"valueString": "03-0000-0003"}),
            ),
        ),
        # No infection: the infections list is required only when enabled, so its absence is fine.
        g("emergency.medical", q("emergency.medical.has-infection", {"valueBoolean": False})),
        g(
            "emergency.medications",
            q("emergency.medications.current", {"valueString": "アムロジピン5mg"}, {"valueString": "ワルファリン1mg"}),
            q("emergency.medications.has-allergy", {"valueBoolean": True}),
            g(
                "emergency.medications.allergy",
                q("emergency.medications.allergy.substance", {"valueString": "ペニシリン"}),
            ),
        ),
        g(
            "emergency.devices",
            q("emergency.devices.list", option(tpl, "emergency.devices.list", "home-oxygen")),
            q("emergency.devices.oxygen-flow", {"valueDecimal": 2.0}),
        ),
        g(
            "emergency.wishes",
            g(
                "emergency.wishes.dnar",
                q("emergency.wishes.dnar.ordered", {"valueBoolean": True}),
                q("emergency.wishes.dnar.physician", {"valueString": "緑川 医師"}),
                q("emergency.wishes.dnar.date", {"valueDate": "2026-10-01"}),
            ),
            q("emergency.wishes.acp-record", {"valueReference": {"reference": "QuestionnaireResponse/acp-1"}}),
        ),
        g(
            "emergency.review",
            q("emergency.review.date", {"valueDate": "2026-11-20"}),
            q("emergency.review.by", {"valueString": "訪問看護師 青木"}),
        ),
    )


def changed(build: Callable[[], tuple[Json, Json]], change: Callable[[Json], None]) -> list[Issue]:
    tpl, filled = build()
    change(filled)
    return validate_response(filled, tpl)


def only(issues: list[Issue], code: str, link_id: str | None) -> Issue:
    assert [(issue.code, issue.link_id) for issue in issues] == [(code, link_id)]
    issue = issues[0]
    assert JAPANESE.search(issue.message_ja), issue.message_ja
    assert issue.message_en and not JAPANESE.search(issue.message_en), issue.message_en
    return issue


def items_of(filled: Json, *path: int) -> list[Json]:
    items: list[Json] = filled["item"]
    for index in path:
        items = items[index]["item"]
    return items


@pytest.mark.parametrize("build", [daily_note, emergency_sheet])
def test_realistic_sheets_are_valid(build: Callable[[], tuple[Json, Json]]) -> None:
    tpl, filled = build()
    assert validate_response(filled, tpl) == []


def test_a_sheet_for_another_template_version_is_refused() -> None:
    issues = changed(daily_note, lambda r: r.update(questionnaire="urn:renkei:questionnaire:DailyCareNote|0.9.0"))
    assert only(issues, "wrong-questionnaire", None).expression == "QuestionnaireResponse.questionnaire"
    tpl, _ = emergency_sheet()
    _, note = daily_note()
    only(validate_response(note, tpl), "wrong-questionnaire", None)


def test_an_item_the_template_lacks_is_unknown() -> None:
    issues = changed(daily_note, lambda r: items_of(r, 1).append(q("daily.vitals.weight", {"valueDecimal": 48.5})))
    issue = only(issues, "unknown-item", "daily.vitals.weight")
    assert issue.path == "daily.vitals/daily.vitals.weight"
    assert issue.expression == "QuestionnaireResponse.item[1].item[6]"


def test_an_item_out_of_its_group_is_unknown_there() -> None:
    issues = changed(daily_note, lambda r: r["item"].append(q("daily.vitals.pulse", {"valueInteger": 80})))
    assert only(issues, "unknown-item", "daily.vitals.pulse").expression == "QuestionnaireResponse.item[7]"


def test_a_missing_required_question_is_reported_where_it_belongs() -> None:
    issues = changed(daily_note, lambda r: items_of(r, 0).pop(0))
    issue = only(issues, "required", "daily.visit.time")
    assert issue.expression == "QuestionnaireResponse.item[0].item.where(linkId='daily.visit.time')"
    assert issue.path == "daily.visit/daily.visit.time"
    assert "記録日時" in issue.message_ja and "Time" in issue.message_en


def test_a_required_section_without_answers_is_missing() -> None:
    issues = changed(emergency_sheet, lambda r: r["item"][7].update(item=[{"linkId": "emergency.review.date"}]))
    assert {(issue.code, issue.link_id) for issue in issues} == {
        ("required", "emergency.review"),
        ("required", "emergency.review.date"),
        ("required", "emergency.review.by"),
    }
    only(changed(emergency_sheet, lambda r: r["item"].pop(0)), "required", "emergency.identity")


def test_a_required_item_counts_only_when_enabled() -> None:
    def infected(filled: Json) -> None:
        items_of(filled, 3)[0] = q("emergency.medical.has-infection", {"valueBoolean": True})

    only(changed(emergency_sheet, infected), "required", "emergency.medical.infections")


def test_a_required_item_of_an_absent_optional_group_is_not_missing() -> None:
    # emergency.medications.has-allergy is required, but only once the medications section is filled in.
    assert changed(emergency_sheet, lambda r: r["item"].pop(4)) == []


def test_a_question_without_repeats_takes_one_answer() -> None:
    issues = changed(daily_note, lambda r: items_of(r, 1)[2]["answer"].append({"valueInteger": 75}))
    issue = only(issues, "not-repeating", "daily.vitals.pulse")
    assert issue.expression == "QuestionnaireResponse.item[1].item[2].answer[1]"


def test_a_group_without_repeats_occurs_once() -> None:
    issues = changed(daily_note, lambda r: r["item"].append(copy.deepcopy(r["item"][6])))
    assert only(issues, "not-repeating", "daily.handover").expression == "QuestionnaireResponse.item[7]"


@pytest.mark.parametrize(
    ("position", "link_id", "answer"),
    [
        ((1, 2), "daily.vitals.pulse", {"valueString": "72"}),
        ((1, 2), "daily.vitals.pulse", {"valueInteger": "72"}),
        ((1, 2), "daily.vitals.pulse", {"valueInteger": True}),
        ((1, 0), "daily.vitals.temperature", {"valueInteger": 37}),
        ((0, 1), "daily.visit.profession", {"valueString": "看護師"}),
        ((0, 0), "daily.visit.time", {"valueDate": "2026-12-02"}),
    ],
)
def test_an_answer_of_the_wrong_type_is_refused(position: tuple[int, int], link_id: str, answer: Json) -> None:
    section, index = position
    issues = changed(daily_note, lambda r: items_of(r, section)[index].update(answer=[answer]))
    issue = only(issues, "answer-type", link_id)
    assert issue.expression == f"QuestionnaireResponse.item[{section}].item[{index}].answer[0]"


def test_an_answer_without_a_value_neither_types_nor_fills_the_item() -> None:
    issues = changed(daily_note, lambda r: items_of(r, 0)[0].update(answer=[{}]))
    assert [(issue.code, issue.link_id) for issue in issues] == [
        ("answer-type", "daily.visit.time"),
        ("required", "daily.visit.time"),
    ]


def test_a_group_takes_no_answers() -> None:
    issues = changed(daily_note, lambda r: r["item"][6].update(answer=[{"valueString": "申し送り"}]))
    only(issues, "answer-type", "daily.handover")


@pytest.mark.parametrize(
    "coding",
    [
        {"system": "urn:renkei:codesystem:sleep-state", "code": "excellent"},
        {"system": "urn:renkei:codesystem:profession", "code": "good"},
        {"code": "good"},
    ],
)
def test_a_coded_answer_must_be_one_of_the_options(coding: Json) -> None:
    issues = changed(daily_note, lambda r: items_of(r, 2)[0].update(answer=[{"valueCoding": coding}]))
    issue = only(issues, "answer-option", "daily.sleep.state")
    assert str(coding["code"]) in issue.message_ja and str(coding["code"]) in issue.message_en


def test_a_display_text_does_not_decide_an_option() -> None:
    def relabel(filled: Json) -> None:
        items_of(filled, 2)[0]["answer"][0]["valueCoding"]["display"] = "まあまあ"

    assert changed(daily_note, relabel) == []


def test_answering_a_disabled_item_is_refused() -> None:
    issues = changed(daily_note, lambda r: items_of(r, 1)[4].update(answer=[{"valueBoolean": False}]))
    issue = only(issues, "disabled-answered", "daily.vitals.oxygen-flow")
    assert issue.expression == "QuestionnaireResponse.item[1].item[5]"


def test_a_coded_condition_disables_its_item() -> None:
    def ventilator(filled: Json) -> None:
        tpl = template("EmergencySheet")
        items_of(filled, 5)[0] = q("emergency.devices.list", option(tpl, "emergency.devices.list", "ventilator"))

    only(changed(emergency_sheet, ventilator), "disabled-answered", "emergency.devices.oxygen-flow")


def test_a_disabled_repeating_group_is_one_issue() -> None:
    issues = changed(daily_note, lambda r: items_of(r, 3)[0].update(answer=[{"valueBoolean": False}]))
    assert [(issue.code, issue.link_id) for issue in issues] == [("disabled-answered", "daily.skin.ulcer")] * 2


# The shipped templates only use "=", so the other operators are tried on a two-question template.
def condition_template(kind: str, *conditions: Json, behavior: str | None = None) -> Json:
    dependent: Json = {"linkId": "b", "text": "質問B", "type": "string", "enableWhen": list(conditions)}
    if behavior:
        dependent["enableBehavior"] = behavior
    return {
        "url": "urn:test:q",
        "version": "1",
        "item": [{"linkId": "a", "text": "質問A", "type": kind, "repeats": True}, dependent],
    }


def b_is_enabled(tpl: Json, *answers: Json) -> bool:
    filled = response(tpl, *([q("a", *answers)] if answers else []), q("b", {"valueString": "はい"}))
    issues = validate_response(filled, tpl)
    assert all(issue.code == "disabled-answered" and issue.link_id == "b" for issue in issues), issues
    return not issues


@pytest.mark.parametrize(
    ("kind", "op", "expected", "answers", "enabled"),
    [
        ("integer", "exists", {"answerBoolean": True}, [{"valueInteger": 1}], True),
        ("integer", "exists", {"answerBoolean": True}, [], False),
        ("integer", "exists", {"answerBoolean": False}, [], True),
        ("integer", "=", {"answerInteger": 3}, [{"valueInteger": 1}, {"valueInteger": 3}], True),
        ("integer", "=", {"answerInteger": 3}, [], False),
        ("integer", "!=", {"answerInteger": 3}, [{"valueInteger": 1}, {"valueInteger": 3}], False),
        ("integer", "!=", {"answerInteger": 3}, [{"valueInteger": 1}], True),
        ("integer", ">", {"answerInteger": 3}, [{"valueInteger": 4}], True),
        ("integer", ">", {"answerInteger": 3}, [{"valueInteger": 3}], False),
        ("integer", ">=", {"answerInteger": 3}, [{"valueInteger": 3}], True),
        ("integer", "<", {"answerInteger": 3}, [{"valueInteger": 3}], False),
        ("integer", "<=", {"answerInteger": 3}, [{"valueInteger": 3}], True),
        ("decimal", "<", {"answerDecimal": 90}, [{"valueDecimal": 88.5}], True),
        ("date", ">", {"answerDate": "2026-01-31"}, [{"valueDate": "2026-02-01"}], True),
        ("date", ">", {"answerDate": "2026-01-31"}, [{"valueDate": "2025-12-31"}], False),
        (
            "dateTime",
            "<",
            {"answerDateTime": "2026-12-02T09:00:00+09:00"},
            [{"valueDateTime": "2026-12-01T23:30:00Z"}],
            True,
        ),
        # 00:30 UTC is 09:30 in Japan: compared as instants, not as text.
        (
            "dateTime",
            "<",
            {"answerDateTime": "2026-12-02T09:00:00+09:00"},
            [{"valueDateTime": "2026-12-02T00:30:00Z"}],
            False,
        ),
        # A date against a zoned dateTime has no order: the condition is not met.
        ("dateTime", "<", {"answerDateTime": "2026-12-02T09:00:00+09:00"}, [{"valueDateTime": "2026-12-01"}], False),
        ("time", ">=", {"answerTime": "22:00:00"}, [{"valueTime": "23:30:00"}], True),
        ("boolean", "=", {"answerBoolean": True}, [{"valueBoolean": True}], True),
        ("boolean", ">", {"answerBoolean": False}, [{"valueBoolean": True}], False),
        (
            "choice",
            "=",
            {"answerCoding": {"system": "urn:s", "code": "x"}},
            [{"valueCoding": {"system": "urn:s", "code": "x", "display": "エックス"}}],
            True,
        ),
        (
            "choice",
            "=",
            {"answerCoding": {"system": "urn:s", "code": "x"}},
            [{"valueCoding": {"system": "urn:t", "code": "x"}}],
            False,
        ),
        (
            "quantity",
            ">",
            {"answerQuantity": {"value": 38, "code": "Cel"}},
            [{"valueQuantity": {"value": 38.5, "code": "Cel"}}],
            True,
        ),
        (
            "quantity",
            ">",
            {"answerQuantity": {"value": 38, "code": "Cel"}},
            [{"valueQuantity": {"value": 101, "code": "[degF]"}}],
            False,
        ),
    ],
)
def test_enable_when_operators(kind: str, op: str, expected: Json, answers: list[Json], enabled: bool) -> None:
    tpl = condition_template(kind, {"question": "a", "operator": op, **expected})
    assert b_is_enabled(tpl, *answers) is enabled


@pytest.mark.parametrize(("behavior", "enabled"), [(None, False), ("all", False), ("any", True)])
def test_enable_behavior(behavior: str | None, enabled: bool) -> None:
    conditions = (
        {"question": "a", "operator": ">", "answerInteger": 0},
        {"question": "a", "operator": ">", "answerInteger": 10},
    )
    assert b_is_enabled(condition_template("integer", *conditions, behavior=behavior), {"valueInteger": 5}) is enabled


def test_answers_of_a_disabled_question_do_not_enable_others() -> None:
    tpl = condition_template("integer", {"question": "a", "operator": "exists", "answerBoolean": True})
    tpl["item"][0]["enableWhen"] = [{"question": "c", "operator": "=", "answerBoolean": True}]
    tpl["item"].append({"linkId": "c", "text": "質問C", "type": "boolean"})
    issues = validate_response(response(tpl, q("a", {"valueInteger": 1}), q("b", {"valueString": "x"})), tpl)
    assert [(issue.code, issue.link_id) for issue in issues] == [("disabled-answered", "a"), ("disabled-answered", "b")]


def test_a_display_item_takes_no_answer() -> None:
    tpl = {"url": "urn:test:q", "version": "1", "item": [{"linkId": "note", "text": "注意", "type": "display"}]}
    only(validate_response(response(tpl, q("note", {"valueString": "x"})), tpl), "answer-type", "note")


LINK_IDS = [item["linkId"] for item in template("DailyCareNote")["item"]] + ["daily.vitals.pulse", "x"]
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=5)
    | st.sampled_from(LINK_IDS),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(["linkId", "item", "answer", "valueInteger", "valueCoding", "system", "code"]),
            inner,
            max_size=4,
        )
    ),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(items=JSON_VALUES)
def test_any_json_gives_issues_never_an_exception(items: Any) -> None:
    # A tablet can send anything: the answer is always a list of issues, each with both messages.
    tpl, filled = daily_note()
    filled["item"] = items
    for issue in validate_response(filled, tpl):
        assert issue.code and issue.expression.startswith("QuestionnaireResponse")
        assert JAPANESE.search(issue.message_ja) and issue.message_en


@pytest.mark.parametrize("path", sorted(SHIPPED.glob("*.json")), ids=lambda path: path.stem)
def test_an_empty_sheet_misses_exactly_the_required_sections(path: Path) -> None:
    tpl = template(path.stem)
    issues = validate_response(response(tpl), tpl)
    assert {issue.code for issue in issues} == {"required"}
    assert [issue.link_id for issue in issues] == [item["linkId"] for item in tpl["item"] if item.get("required")]
