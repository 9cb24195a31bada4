"""An urgent message that must be acknowledged: one Task per member asked, completed by Task $acknowledge."""

from __future__ import annotations

from typing import Any

from services.share.sheets import scenes

REQUIRED = "urn:renkei:extension:acknowledgement-required"  # valueBoolean on the Communication
URGENT = frozenset({"urgent", "asap", "stat"})


def required(body: dict[str, Any]) -> bool:
    wanted = any(isinstance(e, dict) and e.get("url") == REQUIRED and e.get("valueBoolean") is True
                 for e in body.get("extension") or [])
    return wanted and body.get("priority") in URGENT


def tasks(body: dict[str, Any], message_id: str, patient_id: str, team: list[str], requester: str
          ) -> list[dict[str, Any]]:
    """A Task per member asked: the message's practitioner recipients, or, when it names none, every current
    practitioner of the team but its sender."""
    sender = (body.get("sender") or {}).get("reference")
    named = [r.get("reference") for r in body.get("recipient") or [] if isinstance(r, dict)]
    owners = [r for r in named if isinstance(r, str) and r.startswith("Practitioner/")] or \
        [member for member in team if member != sender]
    found = []
    for owner in dict.fromkeys(owners):
        task = scenes.task("acknowledge", "受領確認", "至急の連絡を確認してください / Please acknowledge the urgent "
                           "message", message_id, patient_id, {"reference": owner}, requester,
                           focus_type="Communication")
        task["priority"] = body.get("priority")
        found.append(task)
    return found
