"""Endpoints the server calls for clients: public https only; loopback only when configured (no SSRF)."""

from __future__ import annotations

import pytest

from services.kit.errors import BadRequest
from services.kit.outbound import checked_endpoint


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:8080/hook",  # loopback
    "https://127.0.0.1/hook",
    "https://[::1]/hook",
    "https://10.0.0.5/hook",  # private
    "https://192.168.1.10/hook",
    "https://169.254.169.254/latest/meta-data",  # a cloud host's metadata service
    "https://localhost/hook",
    "ftp://example.org/hook",
    "https://user:secret@8.8.8.8/hook",
    "not a url",
    "https://no-such-host.invalid/hook",
])
def test_what_could_reach_inside_is_refused(url: str) -> None:
    with pytest.raises(BadRequest) as refused:
        checked_endpoint(url, allow_loopback=False)
    assert refused.value.code == "endpoint_refused"


def test_a_public_https_address_is_accepted_and_loopback_only_when_allowed() -> None:
    assert checked_endpoint("https://8.8.8.8/hook", allow_loopback=False) == "https://8.8.8.8/hook"
    assert checked_endpoint("http://127.0.0.1:9/hook", allow_loopback=True) == "http://127.0.0.1:9/hook"
    with pytest.raises(BadRequest):
        checked_endpoint("http://8.8.8.8/hook", allow_loopback=True)  # plain http only to loopback
    with pytest.raises(BadRequest):
        checked_endpoint("https://10.1.2.3/hook", allow_loopback=True)  # loopback is not "private"
