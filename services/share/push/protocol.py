"""The WebSocket protocol's fixed parts: its version, subprotocol names and close codes (docs/push-protocol.md)."""

from __future__ import annotations

VERSION = 1
SUBPROTOCOL = "renkei.v1"
TOKEN_PREFIX = "bearer."  # noqa: S105 - a prefix, not a secret; a second subprotocol "bearer.<access token>" authenticates in the handshake

# Close codes, each telling the client what to do next.
TOKEN_EXPIRED = 4001  # reconnect with a fresh token and your cursor
TOO_SLOW = 4002  # you fell behind; reconnect and subscribe from your cursor
HEARTBEAT_MISSED = 4003  # nothing from you for two heartbeats; reconnect
PROTOCOL_ERROR = 4400  # a frame was not understood; fix the client
UNAUTHENTICATED = 4401  # no valid token in time; get a token and reconnect
ORIGIN_REFUSED = 4403  # this page's origin may not open the socket (the handshake itself is refused with 403)
GOING_AWAY = 1001  # the server is shutting down; reconnect (another instance) with your cursor
INTERNAL_ERROR = 1011  # the server could not go on with this connection; reconnect with your cursor
