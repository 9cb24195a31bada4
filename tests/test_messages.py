"""The team thread through the HTTP API, on SQLite and PostgreSQL: a message posted twice with one Idempotency-Key
is stored once; read receipts move forward only and tell the sender of an urgent message who has read it and who
has not; an urgent message that must be acknowledged asks each member in a Task."""

from __future__ import annotations

from typing import Any

import httpx

from services.share.messages.acknowledgements import REQUIRED
from tests.fhir_helpers import FHIR_JSON, create, created_id, patient
from tests.infra import LiveServer
from tests.test_access_rules import add_to_team, consent, open_network
from tests.test_push_socket import receive, subscribed

CATEGORY = "urn:renkei:codesystem:message-category"
TASK = "urn:renkei:codesystem:task-code"
Json = dict[str, Any]


class Thread:
    def __init__(self, server: LiveServer) -> None:
        self.network = open_network(server)
        self.http = server.client()
        self.doctor = self.network.bearer("physician")
        self.nurse, self.manager = self.network.bearer("nurse"), self.network.bearer("care_manager")
        self.pid = created_id(create(self.http, self.doctor, patient()))
        created_id(create(self.http, self.doctor, consent(self.pid)))
        for member, role in (("nurse", "visiting-nurse"), ("care_manager", "care-manager")):
            add_to_team(self.http, self.doctor, self.pid, self.ref(member), role)

    def ref(self, role: str) -> str:
        return f"Practitioner/{self.network.user(role)['id']}"

    def message(self, text: str, *, category: str = "daily-update", priority: str = "routine",
                **extra: Any) -> Json:
        return {"resourceType": "Communication", "status": "completed", "priority": priority,
                "category": [{"coding": [{"system": CATEGORY, "code": category}]}],
                "subject": {"reference": f"Patient/{self.pid}"}, "sent": "2026-12-04T09:00:00+09:00",
                "sender": {"reference": self.ref("physician")}, "payload": [{"contentString": text}], **extra}

    def post(self, who: dict[str, str], body: Json, **headers: str) -> httpx.Response:
        return self.http.post("/fhir/Communication", json=body, headers={**who, **FHIR_JSON, **headers})

    def read(self, who: dict[str, str], message_id: str) -> httpx.Response:
        return self.http.post(f"/fhir/Communication/{message_id}/$read", headers=who)

    def status(self, who: dict[str, str], message_id: str) -> dict[str, set[str]]:
        answer = self.http.get(f"/fhir/Communication/{message_id}/$read-status", headers=who)
        assert answer.status_code == 200, answer.text
        found: dict[str, set[str]] = {"read": set(), "unread": set()}
        for parameter in answer.json()["parameter"]:
            found[parameter["name"]].add(parameter["part"][0]["valueReference"]["reference"])
        return found


def position(answer: httpx.Response) -> int:
    assert answer.status_code == 200, answer.text
    (found,) = [p["valueString"] for p in answer.json()["parameter"] if p["name"] == "position"]
    return int(found)


def test_a_retried_post_with_the_same_idempotency_key_is_stored_once(server: LiveServer) -> None:
    thread = Thread(server)
    body = thread.message("本日14時に訪問しました。血圧安定。")
    first = thread.post(thread.doctor, body, **{"Idempotency-Key": "tablet-7-msg-1"})
    again = thread.post(thread.doctor, body, **{"Idempotency-Key": "tablet-7-msg-1"})
    assert first.status_code == 201 and again.status_code in (200, 201)
    assert again.json()["id"] == first.json()["id"]
    found = thread.http.get("/fhir/Communication", params={"patient": thread.pid}, headers=thread.doctor).json()
    assert [entry["resource"]["id"] for entry in found["entry"]] == [first.json()["id"]]


def test_read_receipts_tell_the_sender_who_has_read_and_only_move_forward(server: LiveServer) -> None:
    thread = Thread(server)
    urgent = created_id(thread.post(thread.doctor, thread.message("発熱38.5℃、至急連絡ください", category="urgent",
                                                                   priority="urgent")))
    later = created_id(thread.post(thread.doctor, thread.message("解熱しました")))
    assert thread.status(thread.doctor, urgent) == {
        "read": {thread.ref("physician")}, "unread": {thread.ref("nurse"), thread.ref("care_manager")}}
    at_later = position(thread.read(thread.nurse, later))  # reading the later message reads the thread before it
    assert thread.status(thread.doctor, urgent)["read"] == {thread.ref("physician"), thread.ref("nurse")}
    assert position(thread.read(thread.nurse, urgent)) == at_later  # never back
    assert thread.status(thread.doctor, later)["unread"] == {thread.ref("care_manager")}
    position(thread.read(thread.manager, urgent))
    status = thread.status(thread.doctor, urgent)
    assert status["unread"] == set() and thread.ref("care_manager") in status["read"]
    assert thread.ref("care_manager") in thread.status(thread.doctor, later)["unread"]  # only up to the urgent one


def test_someone_outside_the_team_gets_no_receipt_and_no_status(server: LiveServer) -> None:
    thread = Thread(server)
    message = created_id(thread.post(thread.doctor, thread.message("連絡事項")))
    stranger = open_network(server).bearer("nurse")  # another network
    assert thread.read(stranger, message).status_code == 404
    assert thread.http.get(f"/fhir/Communication/{message}/$read-status", headers=stranger).status_code == 404


def test_an_urgent_message_that_must_be_acknowledged_asks_each_recipient_in_a_task(server: LiveServer) -> None:
    thread = Thread(server)
    body = thread.message("酸素濃縮器の設定を変更しました。確認してください", category="urgent", priority="stat",
                          recipient=[{"reference": thread.ref("nurse")}],
                          extension=[{"url": REQUIRED, "valueBoolean": True}])
    message = created_id(thread.post(thread.doctor, body))
    tasks = thread.http.get("/fhir/Task", params={"patient": thread.pid, "code": f"{TASK}|acknowledge"},
                            headers=thread.doctor).json().get("entry", [])
    (task,) = [entry["resource"] for entry in tasks]
    assert task["owner"] == {"reference": thread.ref("nurse")}
    assert task["focus"] == {"reference": f"Communication/{message}"} and task["priority"] == "stat"
    done = thread.http.post(f"/fhir/Task/{task['id']}/$acknowledge", headers=thread.nurse)
    assert done.status_code == 200, done.text
    assert done.json()["status"] == "completed"
    # A routine message asks no one, whatever it says.
    created_id(thread.post(thread.doctor, thread.message("定期連絡", extension=[{"url": REQUIRED,
                                                                              "valueBoolean": True}])))
    assert len(thread.http.get("/fhir/Task", params={"patient": thread.pid, "code": f"{TASK}|acknowledge"},
                               headers=thread.doctor).json().get("entry", [])) == 1


def test_an_urgent_message_is_also_an_urgent_event_for_the_team(server: LiveServer) -> None:
    thread = Thread(server)
    socket = subscribed(server, thread.nurse["Authorization"].removeprefix("Bearer "))
    try:
        routine = created_id(thread.post(thread.doctor, thread.message("定期連絡")))
        urgent = created_id(thread.post(thread.doctor, thread.message("呼吸苦あり", category="urgent",
                                                                      priority="asap")))
        kinds: list[tuple[str, str]] = []
        while len(kinds) < 3:
            frame = receive(socket)
            if frame["type"] == "event" and frame["resource"]["type"] == "Communication":
                kinds.append((frame["resource"]["id"], frame["kind"]))
        assert kinds == [(routine, "created"), (urgent, "created"), (urgent, "urgent")]
    finally:
        socket.close()
