"""Prometheus metrics: what an operator watches, never what a patient is.

Labels hold route templates (``/fhir/{type}/{id}``), methods, status classes, channels and error codes — never a
raw path, a query, an id or a user. ``GET /metrics`` (services/health.py) answers only callers inside
``settings.metrics_allow`` and 404 to everyone else.

Several worker processes (``renkei serve --workers N``): each writes its values to files in
``PROMETHEUS_MULTIPROC_DIR`` (the supervisor makes a fresh directory when it is unset) and ``/metrics``, whichever
worker answers it, adds them up. The variable must be set before this module is first imported, which is why the
supervisor (services/serving.py) sets it before starting workers.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable
from functools import lru_cache

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Seconds; a FHIR read takes a few milliseconds, a sheet tens, a Binary upload up to seconds.
_LATENCY_BUCKETS = (0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

REQUEST_SECONDS = Histogram(
    "renkei_http_request_duration_seconds", "HTTP request latency, by method, route template and status class.",
    ["method", "route", "status"], buckets=_LATENCY_BUCKETS,
)
WS_CONNECTIONS = Gauge(
    "renkei_ws_connections", "Open WebSocket connections (accepted, not yet closed).", multiprocess_mode="livesum",
)
EVENT_LOG_LAG = Gauge(
    "renkei_event_log_lag_seconds",
    "How far this process's event hub is behind the event log: the age of the oldest event appended but not yet "
    "passed to its connections (0 when caught up).", multiprocess_mode="livemax",
)
DELIVERY_FAILURES = Counter(
    "renkei_delivery_failures_total", "Failed deliveries, by channel (rest-hook, web-push) and outcome.",
    ["channel", "outcome"],
)
DELIVERY_RETRIES = Counter(
    "renkei_delivery_retries_total", "Delivery attempts that retried an earlier failure, by channel.", ["channel"],
)
TOKEN_FAILURES = Counter(
    "renkei_token_failures_total", "Requests refused for their bearer token, by service (fhir, auth) and error.",
    ["service", "error"],
)
RATE_LIMITED = Counter(
    "renkei_rate_limited_total", "Requests refused with 429 by the rate limits, by what was limited.", ["key"],
)
BODY_TOO_LARGE = Counter("renkei_body_too_large_total", "Requests refused with 413 by the body size limit.")

# Label children, found once: ``labels()`` costs microseconds per call (a lock and a tuple of strings).
_latency_children: dict[tuple[str, str, str], Histogram] = {}
_STATUS_CLASSES = {1: "1xx", 2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}


def observe_request(method: str, route: str, status: int, seconds: float) -> None:
    key = (method, route, _STATUS_CLASSES.get(status // 100, "5xx"))
    child = _latency_children.get(key)
    if child is None:
        child = _latency_children[key] = REQUEST_SECONDS.labels(*key)
    child.observe(seconds)


def set_event_log_lag(seconds: float) -> None:
    """The event hub's lag behind the log, in seconds (call it from the hub after each pass; 0 when caught up)."""
    EVENT_LOG_LAG.set(max(0.0, seconds))


def delivery_failed(channel: str, outcome: str) -> None:
    """``channel``: ``rest-hook`` or ``web-push``; ``outcome``: a short fixed word (``refused``, ``gone`` …)."""
    DELIVERY_FAILURES.labels(channel, outcome).inc()


def delivery_retried(channel: str) -> None:
    DELIVERY_RETRIES.labels(channel).inc()


def token_failed(service: str, error: str) -> None:
    TOKEN_FAILURES.labels(service, error).inc()


# Exposition ------------------------------------------------------------------------------------------------


def render() -> tuple[bytes, str]:
    """The text exposition: of every worker when several write to PROMETHEUS_MULTIPROC_DIR, else this process's."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


@lru_cache(maxsize=16)
def _networks(allowed: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(cidr, strict=False) for cidr in allowed)


def address_allowed(address: str | None, allowed: Iterable[str]) -> bool:
    """Whether ``address`` (the client as the server sees it, after trusted proxy headers) is in a CIDR of
    ``allowed``."""
    if not address:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip.version == net.version and ip in net for net in _networks(tuple(allowed)))

