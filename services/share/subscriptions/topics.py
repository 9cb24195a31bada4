"""The topics a Subscription may name: what each one is about, told by the event log's own facts.

A topic is matched on the event alone (type, kind, draft mark), never on the resource's content, so a pass decides
it without decrypting anything. Which of the matching events a subscriber hears of is the access decision's
(delivery.py), made for the subscription's owner at delivery time.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.share.events.log import Event


@dataclass(frozen=True)
class Topic:
    url: str
    resource_type: str
    kinds: frozenset[str]  # the event kinds that trigger it (created, updated, deleted)
    title: str

    def matches(self, event: Event, patient_id: str) -> bool:
        """Whether ``event`` is a notification of this topic; ``patient_id`` ("" for any) is the filter."""
        if event.resource_type != self.resource_type or event.kind not in self.kinds:
            return False
        if event.draft:  # a sheet still in progress is not shared yet
            return False
        return not patient_id or event.patient_id == patient_id


SHEET_SHARED = Topic("urn:renkei:topic:sheet-shared", "QuestionnaireResponse", frozenset({"created", "updated"}),
                     "A sheet was shared, or a shared sheet amended")
MESSAGE_POSTED = Topic("urn:renkei:topic:message-posted", "Communication", frozenset({"created"}),
                       "A message was posted to a patient's team thread")
TASK_CHANGED = Topic("urn:renkei:topic:task-changed", "Task", frozenset({"created", "updated"}),
                     "A Task was created or changed")

TOPICS = {topic.url: topic for topic in (SHEET_SHARED, MESSAGE_POSTED, TASK_CHANGED)}
