"""Calls from one of our services to another: the share service asking the identity service for its JWKS or a
network's sharing policy.

A keep-alive connection can be closed by the peer at the moment it is taken from the pool for a new request: the
peer's idle timeout (uvicorn's is 5 s) fires as the request arrives, and the request is lost with the connection
("Server disconnected without sending a response"). With httpx's own expiry also 5 s that happens now and then,
and the caller then took the identity service for unreachable — a network's first request got the strictest
policy. So the client drops idle connections well before any peer does, and a GET lost with its connection is
sent once more, on a new one: it changes nothing, so sending it twice is safe.
"""

from __future__ import annotations

import httpx

# Idle connections kept at most this long: under uvicorn's 5 s and nginx's 75 s keep-alive timeouts.
KEEPALIVE_SECONDS = 2.0
# What a request sent on a connection the peer has just closed fails with (a timeout is not one: the peer is slow).
_CLOSED_UNDER_US = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)


def peer_client(timeout_seconds: float) -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=timeout_seconds, limits=httpx.Limits(keepalive_expiry=KEEPALIVE_SECONDS))


async def get(client: httpx.AsyncClient, url: str) -> httpx.Response:
    """GET ``url``, once more on a new connection if the first went out on one the peer had just closed."""
    try:
        return await client.get(url)
    except _CLOSED_UNDER_US:
        return await client.get(url)
