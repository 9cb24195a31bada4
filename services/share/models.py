"""Imports every share-service model so ``ShareBase.metadata`` is complete (Alembic, the schema test)."""

from services.share.access.models import BreakGlassGrant, ConsentTerms, TeamParticipant
from services.share.audit.models import AuditChainHead, AuditEntry, AuditLink
from services.share.base import ShareBase
from services.share.crypto.models import DataKey
from services.share.events.models import EventEntry
from services.share.messages.models import ReadPosition
from services.share.push.devices import WebPushDevice, WebPushSent
from services.share.sheets.models import SheetRecord, SheetTemplate
from services.share.store.models import IdempotencyRecord, ResourceHead, ResourceVersion, SearchEntry
from services.share.subscriptions.models import SubscriptionState

__all__ = [
    "AuditChainHead", "AuditEntry", "AuditLink", "BreakGlassGrant", "ConsentTerms", "DataKey", "EventEntry",
    "IdempotencyRecord", "ReadPosition", "ResourceHead", "ResourceVersion", "SearchEntry", "ShareBase", "SheetRecord",
    "SheetTemplate", "SubscriptionState", "TeamParticipant", "WebPushDevice", "WebPushSent",
]
