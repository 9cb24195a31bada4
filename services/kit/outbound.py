"""Checking a URL the server will call on a client's behalf (a rest-hook Subscription, a Web Push endpoint).

A client that could name any URL could make the server call its own internal network (SSRF): the database, the
metadata service of a cloud host, an admin port. So an endpoint must be https and every address its host resolves
to must be public. Loopback is allowed only when ``allow_loopback`` is set (``RENKEI_OUTBOUND_ALLOW_LOOPBACK``, for
tests and a single-machine demo), and then plain http to loopback too.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from services.kit.errors import BadRequest


def checked_endpoint(url: str, *, allow_loopback: bool) -> str:
    """``url`` if the server may call it; else BadRequest (code ``endpoint_refused``) saying why."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        raise _refused("the endpoint is not a URL") from None
    if not host or parts.scheme not in ("https", "http") or parts.username or parts.password:
        raise _refused("the endpoint must be an https URL without credentials")
    addresses = _resolve(host, port or (443 if parts.scheme == "https" else 80))
    loopback = all(address.is_loopback for address in addresses)
    if loopback and allow_loopback:
        return url
    if parts.scheme != "https":
        raise _refused("the endpoint must use https")
    for address in addresses:
        if not address.is_global or address.is_multicast:
            raise _refused("the endpoint's host is not a public address")
    return url


def _resolve(host: str, port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise _refused("the endpoint's host does not resolve") from None
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in found]
    if not addresses:
        raise _refused("the endpoint's host does not resolve")
    return addresses


def _refused(why: str) -> BadRequest:
    return BadRequest(why, code="endpoint_refused")
