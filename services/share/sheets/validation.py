"""A filled sheet (a QuestionnaireResponse) checked against the exact template version it names.

Pure: dicts in, a list of issues out — no database, no HTTP — so the create/update path, a bulk import and the
tests can all call it. Every issue is reported rather than the first, and each names the item twice: by linkId
(what a tablet app keys its fields by) and by a FHIRPath ``expression`` into the response (what an
OperationOutcome carries), with a message in Japanese and English to show beside the field.

enableWhen reads the answers of the question it names; inside a repeating group, a question of that group is read
in the same repetition (each participant's own role), anything outside it wherever it is answered.
Not checked here: the order of items, answers from an answerValueSet (no terminology server), and the lexical
form of primitive values (a date's format), which parsing the resource with fhir.resources already refuses.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from services.share.sheets.answers import dicts, walk
from services.share.sheets.templates import english_text


@dataclass(frozen=True)
class Issue:
    code: str
    link_id: str | None
    path: str  # linkIds from the top-level section down to the item, joined by "/"
    expression: str  # FHIRPath into the QuestionnaireResponse
    message_ja: str
    message_en: str


# The value[x] an answer to each item type may carry (R4B QuestionnaireItemType).
ANSWER_TYPES: dict[str, tuple[str, ...]] = {
    "boolean": ("valueBoolean",),
    "decimal": ("valueDecimal",),
    "integer": ("valueInteger",),
    "date": ("valueDate",),
    "dateTime": ("valueDateTime",),
    "time": ("valueTime",),
    "string": ("valueString",),
    "text": ("valueString",),
    "url": ("valueUri",),
    "choice": ("valueCoding",),
    "open-choice": ("valueCoding", "valueString"),
    "attachment": ("valueAttachment",),
    "reference": ("valueReference",),
    "quantity": ("valueQuantity",),
}


def _is_number(value: Any) -> bool:
    # JSON true would pass isinstance(.., int): a boolean is never a number here.
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_text(value: Any) -> bool:
    return isinstance(value, str)


def _is_object(value: Any) -> bool:
    return isinstance(value, dict)


# The JSON shape of each value[x], so that {"valueInteger": "3"} is not taken for an integer answer.
_SHAPES: dict[str, Callable[[Any], bool]] = {
    "valueBoolean": lambda v: isinstance(v, bool),
    "valueDecimal": _is_number,
    "valueInteger": lambda v: _is_number(v) and isinstance(v, int),
    **dict.fromkeys(("valueDate", "valueDateTime", "valueTime", "valueString", "valueUri"), _is_text),
    **dict.fromkeys(("valueCoding", "valueAttachment", "valueReference", "valueQuantity"), _is_object),
}

_ORDERED: dict[str, Callable[[Any, Any], bool]] = {
    ">": operator.gt,
    "<": operator.lt,
    ">=": operator.ge,
    "<=": operator.le,
}


# Why an item is wrong, in Japanese and English; the item's own label is put in front of each.
_MESSAGES: dict[str, tuple[str, str]] = {
    "unknown": ("は様式のこの位置にない項目です", "the template has no such item here"),
    "once": ("は一度だけ記入できます", "this item occurs only once"),
    "required": ("は必須項目です", "this item is required"),
    "disabled": (
        "は前の回答により記入しない項目です",
        "this item is not enabled by the answers it depends on, so it takes no answer",
    ),
    "group": ("はグループのため回答を付けられません", "a group carries items, not answers"),
    "display": ("は表示項目のため回答を付けられません", "a display item takes no answer"),
    "one-answer": ("の回答は一つだけです", "this question takes one answer only"),
    "type": ("の回答の型が違います（{wanted}）", "the answer must be a {wanted}"),
    "option": ("の回答が選択肢にありません（{coding}）", "{coding} is not one of the answer options"),
}


def validate_response(response: dict[str, Any], template: dict[str, Any]) -> list[Issue]:
    """Every issue of ``response`` against ``template``; an empty list means the sheet is valid."""
    expected = f"{template.get('url')}|{template.get('version')}"
    actual = response.get("questionnaire")
    if actual != expected:
        # Checked against another template, every item would look wrong: one issue says what is.
        return [
            Issue(
                "wrong-questionnaire",
                None,
                "",
                "QuestionnaireResponse.questionnaire",
                f"この記録は様式 {expected} に対するものではありません（{actual}）",
                f"the response names {actual!r}, not the template {expected}",
            )
        ]
    validator = _Validator(template, response)
    validator.check_items(response.get("item"), template.get("item") or [], (), "QuestionnaireResponse")
    return validator.issues


class _Validator:
    def __init__(self, template: dict[str, Any], response: dict[str, Any]) -> None:
        self.nodes, self.groups, self.children = _index(template)
        self.answers: dict[str, list[Any]] = {}
        for item in walk(response.get("item")):
            self.answers.setdefault(str(item.get("linkId")), []).extend(dicts(item.get("answer")))
        self.issues: list[Issue] = []
        self._enabled: dict[str, bool] = {}
        self._resolving: set[str] = set()
        self._content: dict[int, bool] = {}  # by id() of items of the response, which lives as long as this

    def add(
        self, code: str, node: dict[str, Any], path: tuple[str, ...], expression: str, reason: str, **detail: str
    ) -> None:
        label_ja, label_en = _labels(node)
        ja, en = (text.format(**detail) for text in _MESSAGES[reason])
        link_id = node.get("linkId") if isinstance(node.get("linkId"), str) else None
        self.issues.append(
            Issue(code, link_id, "/".join(path), expression, f"「{label_ja}」{ja}", f"'{label_en}': {en}")
        )

    def check_items(self, items: Any, nodes: list[dict[str, Any]], path: tuple[str, ...], parent: str) -> None:
        """One item list of the response (top level, a group's, an answer's) against the template's children."""
        if not items and not nodes:
            return  # a question's or an answer's absent child list: most of them, and nothing to check
        items = dicts(items)
        by_id = self.children.get(id(nodes)) or {node.get("linkId"): node for node in nodes}
        for index, item in enumerate(items):
            where = f"{parent}.item[{index}]"
            link_id = item.get("linkId")
            # A linkId that is no string (a list, say) names nothing, and must not be used as a key.
            node = by_id.get(link_id) if isinstance(link_id, str) else None
            if node is None:
                self.add("unknown-item", {"linkId": link_id}, (*path, str(link_id)), where, "unknown")
            else:
                self.check_item(item, node, (*path, str(node["linkId"])), where)
        positions: dict[Any, list[int]] = {}
        for index, item in enumerate(items):
            link_id = item.get("linkId")
            if isinstance(link_id, str):
                positions.setdefault(link_id, []).append(index)
        for node in nodes:
            self.check_occurrences(items, positions.get(node.get("linkId"), []), node, path, parent)

    def check_occurrences(self, items: list[dict[str, Any]], indexes: list[int], node: dict[str, Any],
                          path: tuple[str, ...], parent: str) -> None:
        """``indexes``: where the node's linkId occurs in ``items``."""
        link_id = node.get("linkId")
        here = (*path, str(link_id))
        # A repeating question keeps all its answers in one item; only a repeating group occurs more than once.
        if len(indexes) > 1 and not (node.get("type") == "group" and node.get("repeats")):
            self.add("not-repeating", node, here, f"{parent}.item[{indexes[1]}]", "once")
        if node.get("required") and not any(self.has_content(items[i]) for i in indexes) \
                and self.enabled(str(link_id)):
            self.add("required", node, here, f"{parent}.item.where(linkId='{link_id}')", "required")

    def check_item(self, item: dict[str, Any], node: dict[str, Any], path: tuple[str, ...], where: str) -> None:
        if not self.enabled(str(node["linkId"])):
            # One issue for the whole disabled branch: everything below it is disabled too.
            if self.has_content(item):
                self.add("disabled-answered", node, path, where, "disabled")
            return
        kind = node.get("type")
        answers = dicts(item.get("answer"))
        if kind == "group":
            if answers:
                self.add("answer-type", node, path, where, "group")
            if node.get("repeats"):
                self.check_repetition(item, node, path, where)
            else:
                self.check_items(item.get("item"), node.get("item") or [], path, where)
            return
        if kind == "display":
            if answers:
                self.add("answer-type", node, path, where, "display")
            return
        if len(answers) > 1 and not node.get("repeats"):
            self.add("not-repeating", node, path, f"{where}.answer[1]", "one-answer")
        # R4B nests a question's child items under its answers, never directly under the question.
        self.check_items(item.get("item"), [], path, where)
        for index, answer in enumerate(answers):
            self.check_answer(answer, node, path, f"{where}.answer[{index}]")
            self.check_items(answer.get("item"), node.get("item") or [], path, f"{where}.answer[{index}]")

    def check_repetition(self, item: dict[str, Any], node: dict[str, Any], path: tuple[str, ...], where: str) -> None:
        """One repetition of a repeating group: an enableWhen naming a question of the same group reads that
        question in this repetition (one participant's role decides whether that participant needs a profession),
        not in any repetition."""
        outer_answers, outer_enabled = self.answers, self._enabled
        local: dict[str, list[Any]] = {}
        for child in walk(item.get("item")):
            local.setdefault(str(child.get("linkId")), []).extend(dicts(child.get("answer")))
        inside = self.groups.get(str(node.get("linkId")), frozenset())
        self.answers = {**outer_answers, **{link: local.get(link, []) for link in inside}}
        self._enabled = {link: state for link, state in outer_enabled.items() if link not in inside}
        try:
            self.check_items(item.get("item"), node.get("item") or [], path, where)
        finally:
            self.answers, self._enabled = outer_answers, outer_enabled

    def check_answer(self, answer: dict[str, Any], node: dict[str, Any], path: tuple[str, ...], where: str) -> None:
        allowed = ANSWER_TYPES.get(str(node.get("type")), ())
        entry = _value_entry(answer)
        if entry is None or entry[0] not in allowed or not _SHAPES[entry[0]](entry[1]):
            self.add("answer-type", node, path, where, "type", wanted=" / ".join(allowed) or "-")
            return
        options = [option[entry[0]] for option in dicts(node.get("answerOption")) if entry[0] in option]
        # Free text of an open-choice has no options to match; a coded answer always must.
        if entry[0] == "valueCoding" and options and not any(_equal(entry[1], option) for option in options):
            code = f"{entry[1].get('system')}#{entry[1].get('code')}"
            self.add("answer-option", node, path, where, "option", coding=code)

    def has_content(self, item: dict[str, Any]) -> bool:
        """_has_content, remembered per item: a required group's check would otherwise walk each section again for
        every required item inside it."""
        found = self._content.get(id(item))
        if found is None:
            found = self._content[id(item)] = _has_content(item)
        return found

    def enabled(self, link_id: str) -> bool:
        """Whether the item is enabled: its parent is, and its enableWhen conditions hold (R4B semantics)."""
        if link_id not in self._enabled:
            if link_id in self._resolving:
                # A cycle of conditions (which the template check should refuse): enabled keeps it checked.
                return True
            self._resolving.add(link_id)
            self._enabled[link_id] = self._resolve(link_id)
            self._resolving.discard(link_id)
        return self._enabled[link_id]

    def _resolve(self, link_id: str) -> bool:
        node, parent = self.nodes.get(link_id, ({}, None))
        if parent is not None and not self.enabled(parent):
            return False
        results = [self.condition_met(condition) for condition in dicts(node.get("enableWhen"))]
        if not results:
            return True
        return any(results) if node.get("enableBehavior") == "any" else all(results)

    def condition_met(self, condition: dict[str, Any]) -> bool:
        question = str(condition.get("question"))
        # A disabled question counts as unanswered, whatever it holds (R4B Questionnaire.item.enableWhen).
        answered = self.answers.get(question, []) if self.enabled(question) else []
        values = [entry[1] for entry in map(_value_entry, answered) if entry is not None]
        expected = next((v for k, v in condition.items() if k.startswith("answer")), None)
        match condition.get("operator"):
            case "exists":
                return bool(values) == expected
            case "=":
                return any(_equal(value, expected) for value in values)
            case "!=":
                return not any(_equal(value, expected) for value in values)
            case op if op in _ORDERED:
                return any(_compare(_ORDERED[op], value, expected) for value in values)
        return False


Nodes = dict[str, tuple[dict[str, Any], str | None]]  # linkId -> (template item, its parent's linkId)
Children = dict[int, dict[Any, dict[str, Any]]]  # id() of a template item list -> its items by linkId
_INDEXES: dict[int, tuple[dict[str, Any], Nodes, dict[str, frozenset[str]], Children]] = {}


def _index(template: dict[str, Any]) -> tuple[Nodes, dict[str, frozenset[str]], Children]:
    """The template's items by linkId, each repeating group's descendants, and each of its item lists by linkId:
    worked out once per template (the registry's templates live as long as the process), not on every sheet."""
    found = _INDEXES.get(id(template))
    if found is not None and found[0] is template:
        return found[1], found[2], found[3]
    nodes: Nodes = dict(_template_nodes(template.get("item"), None))
    # The template is kept below, so the ids of its lists are not reused meanwhile.
    lists = [template.get("item"), *(node.get("item") for node, _ in nodes.values())]
    children: Children = {id(items): {node.get("linkId"): node for node in items}
                          for items in lists if isinstance(items, list) and items}
    groups: dict[str, set[str]] = {}
    for link_id, (node, _) in nodes.items():
        if node.get("type") == "group" and node.get("repeats"):
            groups[link_id] = set()
    for link_id in nodes:
        parent = nodes[link_id][1]
        while parent is not None:
            if parent in groups:
                groups[parent].add(link_id)
            parent = nodes.get(parent, ({}, None))[1]
    frozen = {group: frozenset(members) for group, members in groups.items()}
    if len(_INDEXES) > 256:
        _INDEXES.clear()
    _INDEXES[id(template)] = (template, nodes, frozen, children)  # kept: its id is not reused meanwhile
    return nodes, frozen, children


def _template_nodes(items: Any, parent: str | None) -> Iterator[tuple[str, tuple[dict[str, Any], str | None]]]:
    for node in dicts(items):
        yield str(node.get("linkId")), (node, parent)
        yield from _template_nodes(node.get("item"), str(node.get("linkId")))


def _value_entry(answer: dict[str, Any]) -> tuple[str, Any] | None:
    return next(((key, value) for key, value in answer.items() if key.startswith("value")), None)


def _has_content(item: dict[str, Any]) -> bool:
    """An answer with a value somewhere in the item: an empty group or a bare linkId does not fill a field."""
    answers = (answer for each in walk([item]) for answer in dicts(each.get("answer")))
    return any(_value_entry(answer) is not None for answer in answers)


def _equal(value: Any, expected: Any) -> bool:
    if isinstance(value, dict) and isinstance(expected, dict):
        # Codings match on system and code, quantities on value and unit; a display never decides.
        keys = [key for key in ("system", "code", "value", "unit", "reference", "url") if key in expected]
        return bool(keys) and all(value.get(key) == expected[key] for key in keys)
    if isinstance(value, bool) or isinstance(expected, bool):
        return value is expected  # JSON true must not equal the integer 1
    return bool(value == expected)


def _compare(op: Callable[[Any, Any], bool], value: Any, expected: Any) -> bool:
    if isinstance(value, dict) and isinstance(expected, dict):
        # Quantities compare only in the same unit; no conversion is attempted.
        if (value.get("system"), value.get("code"), value.get("unit")) != (
            expected.get("system"),
            expected.get("code"),
            expected.get("unit"),
        ):
            return False
        value, expected = value.get("value"), expected.get("value")
    try:
        return bool(op(_order_key(value), _order_key(expected)))
    except TypeError:
        # Different precisions (a date against a zoned dateTime), a boolean, a coding: not ordered, not met.
        return False


def _order_key(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return value  # a time ("09:30:00") or a string: ISO text orders as written
    return value


def _labels(node: dict[str, Any]) -> tuple[str, str]:
    """The item's Japanese text and its English translation, falling back to the linkId."""
    link_id = str(node.get("linkId"))
    return str(node.get("text") or link_id), english_text(node) or link_id
