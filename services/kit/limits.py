"""Protective limits on HTTP requests: body size (413) and request rates (429 + Retry-After), in one plain ASGI
middleware.

Body size. A request body is counted as it streams in — a missing or false Content-Length changes nothing — and
refused as soon as it passes its path's limit: ``settings.max_body_bytes`` outside ``/fhir``,
``settings.max_fhir_body_bytes`` under it, more for ``/fhir/Binary`` (the base64 of the largest attachment). The
refusal is raised from ``receive`` inside the route, so the application's own error handler answers it (an
OperationOutcome under /fhir, OAuth-style JSON elsewhere); a declared Content-Length over the limit is refused at
the first read.

Rates. Token buckets: ``rate_limit_per_second`` sustained with bursts of ``rate_limit_burst``, per caller — the
bearer token's ``sub`` and ``client_id``, read without verifying the signature (a key, not a decision) — and
``rate_limit_address_*`` per client address for requests without a bearer token. A request with a token is
counted against its subject after its answer, and only if that answer was not 401: a forged token naming
someone else cannot spend their allowance — it is counted against its sender's address instead, and a sender
whose address has spent its allowance is refused whatever token it shows. Callers in ``rate_limit_exempt``
(default: this machine — health probes, the CLI, benchmarks) are not limited. Decisions never wait for the
network: with ``redis_url`` set, each process also adds its counts, batched every 0.1 s, to a window per key
(burst/rate seconds) shared by every instance, and refuses a key whose shared count passed the burst; if Redis is
away each process keeps enforcing its own buckets (logged once) and Redis is tried again after 30 s. WebSockets
are not limited here (the socket's own authentication deadline and queue bound them).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import structlog
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.kit import metrics
from services.kit.errors import RenkeiError, TooManyRequests
from services.kit.settings import Settings

log = structlog.get_logger(__name__)

_BODILESS = frozenset({"GET", "HEAD", "OPTIONS"})
_REDIS_RETRY_SECONDS = 30.0
# Add a process's count to the key's shared window, starting the window with its first requests.
_FIXED_WINDOW = """
local count = redis.call('INCRBY', KEYS[1], ARGV[1])
if count == tonumber(ARGV[1]) then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]); ttl = tonumber(ARGV[2]) end
return {count, ttl}
"""


class BodyTooLarge(RenkeiError, StarletteHTTPException):  # type: ignore[misc]
    """413, raised from ``receive``. Also an HTTPException, so that FastAPI's body parsing passes it on as it is
    (it turns other exceptions into 400); the application's RenkeiError handler answers it."""

    status_code = 413
    code = "too_large"

    def __init__(self, limit: int) -> None:
        RenkeiError.__init__(self, f"the request body exceeds {limit} bytes")
        # RenkeiError's super().__init__ is HTTPException's here, which took the message for a status.
        self.status_code = 413
        self.detail = self.message


# Token buckets -----------------------------------------------------------------------------------------------


class Buckets:
    """In-process token buckets: ``rate`` tokens a second up to ``burst``; ``take`` answers 0 (allowed) or the
    seconds until a token is there."""

    MAX_KEYS = 100_000

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(max(burst, 1))
        self._state: dict[str, tuple[float, float]] = {}  # key → (tokens, at)

    def take(self, key: str, now: float) -> float:
        tokens, at = self._state.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens >= 1.0:
            if len(self._state) >= self.MAX_KEYS:
                self._forget_full(now)
            self._state[key] = (tokens - 1.0, now)
            return 0.0
        self._state[key] = (tokens, now)
        return (1.0 - tokens) / self.rate

    def _forget_full(self, now: float) -> None:
        """Keys whose bucket has refilled are the same as keys never seen: drop them (and, if none has, all)."""
        full = [k for k, (tokens, at) in self._state.items() if tokens + (now - at) * self.rate >= self.burst]
        for key in full:
            del self._state[key]
        if not full:
            self._state.clear()


class Limiter:
    """One kind of limit (per caller, or per address). Every decision is this process's and synchronous: its own
    token buckets, and the keys it knows to be over the limit. With Redis, each process also adds its counts to a
    window per key shared by every instance, in one pipelined round trip per ``flush_seconds`` for all keys (a
    round trip per request cost 0.14 ms of CPU, more than the rest of the limits together); a key whose shared
    count passed the burst is refused here until its window ends. So the shared limit takes hold within
    ``flush_seconds``, and without Redis (or while it is away) each instance still enforces its own."""

    MAX_KEYS = 100_000

    def __init__(self, name: str, rate: float, burst: int, redis: Any | None, flush_seconds: float = 0.1) -> None:
        self.name = name
        self.burst = max(burst, 1)
        self.local = Buckets(rate, burst)
        self.window_ms = max(1, int(self.burst / rate * 1000))
        self.flush_seconds = flush_seconds
        self._redis = redis
        self._blocked: dict[str, float] = {}  # key → until (monotonic)
        self._pending: dict[str, int] = {}
        self._flushing: asyncio.Task[None] | None = None
        self._redis_down_until = 0.0
        self._redis_down_logged = False

    def refused(self, key: str, now: float) -> float:
        """The seconds ``key`` must still wait, or 0."""
        until = self._blocked.get(key)
        if until is None:
            return 0.0
        if until <= now:
            del self._blocked[key]
            return 0.0
        return until - now

    def charge(self, key: str, now: float) -> float:
        """Count one request of ``key``: 0 if it was within the limit, else the seconds until the next one may go
        (and ``key`` is refused until then)."""
        wait = self.local.take(key, now)
        if wait:
            self._block(key, now + wait)
            return wait
        if self._redis is not None and now >= self._redis_down_until:
            self._pending[key] = self._pending.get(key, 0) + 1
            if self._flushing is None:
                self._flushing = asyncio.get_running_loop().create_task(self._flush_soon())
        return 0.0

    def _block(self, key: str, until: float) -> None:
        if len(self._blocked) >= self.MAX_KEYS:
            self._blocked.clear()
        self._blocked[key] = max(until, self._blocked.get(key, 0.0))

    async def _flush_soon(self) -> None:
        try:
            await asyncio.sleep(self.flush_seconds)
            pending, self._pending = self._pending, {}
            if pending:
                await self._flush(pending)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            self._redis_down_until = time.monotonic() + _REDIS_RETRY_SECONDS
            self._pending.clear()
            if not self._redis_down_logged:
                self._redis_down_logged = True
                log.warning("rate_limit_redis_unavailable", limit=self.name, error=type(error).__name__,
                            fallback="this process's own buckets")
        finally:
            self._flushing = None

    async def _flush(self, pending: dict[str, int]) -> None:
        assert self._redis is not None
        async with self._redis.pipeline(transaction=False) as pipe:
            for key, count in pending.items():
                pipe.eval(_FIXED_WINDOW, 1, f"renkei:rl:{self.name}:{key}", count, self.window_ms)
            results = await pipe.execute()
        now = time.monotonic()
        for key, (total, ttl_ms) in zip(pending, results, strict=True):
            if int(total) > self.burst:
                self._block(key, now + max(int(ttl_ms), 1) / 1000)
        if self._redis_down_logged:
            self._redis_down_logged = False
            log.info("rate_limit_redis_back", limit=self.name)


# Keys --------------------------------------------------------------------------------------------------------


def caller_key(token: str) -> str | None:
    """``sub`` and ``client_id`` from a JWT's payload, unverified (a bucket's key, never a decision); None if the
    token is not a JWT with a subject."""
    parts = token.split(".")
    if len(parts) != 3 or len(parts[1]) > 4096:
        return None
    try:
        claims = orjson.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (binascii.Error, ValueError):
        return None
    if not isinstance(claims, dict) or not isinstance(claims.get("sub"), str):
        return None
    client = claims.get("client_id")
    return f"{claims['sub']}|{client}" if isinstance(client, str) else claims["sub"]


def _retry_after(seconds: float) -> int:
    return max(1, math.ceil(seconds))


class Protect:
    """Body size and rate limits (see the module's docstring). ``refuse`` renders a RenkeiError for a path as the
    application's error handler would."""

    TOKEN_KEYS = 10_000

    def __init__(self, app: ASGIApp, settings: Settings, *, fhir_binary_body_bytes: int,
                 refuse: Callable[[str, RenkeiError], Response]) -> None:
        self.app = app
        self.refuse = refuse
        self.body_limit = settings.max_body_bytes
        self.fhir_body_limit = settings.max_fhir_body_bytes
        self.binary_body_limit = max(fhir_binary_body_bytes, settings.max_fhir_body_bytes)
        self.exempt = tuple(settings.rate_limit_exempt)
        self._exempt_hosts: dict[str, bool] = {}
        redis = None
        if settings.redis_url and (settings.rate_limit_per_second > 0 or settings.rate_limit_address_per_second > 0):
            import redis.asyncio as aioredis

            redis = aioredis.from_url(settings.redis_url, socket_connect_timeout=0.5, socket_timeout=0.5)
        self.callers = Limiter("caller", settings.rate_limit_per_second, settings.rate_limit_burst, redis) \
            if settings.rate_limit_per_second > 0 else None
        self.addresses = Limiter("address", settings.rate_limit_address_per_second,
                                 settings.rate_limit_address_burst, redis) \
            if settings.rate_limit_address_per_second > 0 else None
        self._token_keys: dict[str, str | None] = {}
        self._redis = redis

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # A plain function handing other scopes on: a WebSocket keeps no frame of this layer for its whole life.
        if scope["type"] == "http":
            return self._http(scope, receive, send)
        if scope["type"] == "lifespan" and self._redis is not None:
            return self.app(scope, receive, self._closing_redis(send))
        return self.app(scope, receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        token = None
        address = None
        if self.callers is not None or self.addresses is not None:
            client = scope.get("client")
            address = client[0] if client else "unknown"
            if self._is_exempt(address):
                address = None
            else:
                token = _bearer(scope)
                refused = self._before(address, token)
                if refused:
                    key_kind, wait = refused
                    metrics.RATE_LIMITED.labels(key_kind).inc()
                    error = TooManyRequests("too many requests; retry later", retry_after=_retry_after(wait))
                    await self.refuse(scope["path"], error)(scope, receive, send)
                    return
        if scope["method"] not in _BODILESS:
            receive = self._counted(scope, receive)
        if token is None or address is None:
            await self.app(scope, receive, send)
            return
        status = 0

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            self._after(address, token, status)

    def _closing_redis(self, send: Send) -> Send:
        async def closing(message: Message) -> None:
            if message["type"] == "lifespan.shutdown.complete" and self._redis is not None:
                with contextlib.suppress(Exception):
                    await self._redis.aclose()
            await send(message)

        return closing

    # Rates -----------------------------------------------------------------------------------------------------

    def _is_exempt(self, address: str) -> bool:
        known = self._exempt_hosts.get(address)
        if known is None:
            if len(self._exempt_hosts) >= 10_000:
                self._exempt_hosts.clear()
            known = self._exempt_hosts[address] = bool(self.exempt) and metrics.address_allowed(address, self.exempt)
        return known

    def _key_of(self, token: str) -> str | None:
        if token in self._token_keys:
            return self._token_keys[token]
        if len(self._token_keys) >= self.TOKEN_KEYS:
            self._token_keys.clear()
        key = self._token_keys[token] = caller_key(token)
        return key

    def _before(self, address: str, token: str | None) -> tuple[str, float] | None:
        """Whether to refuse now: an address without a token is counted here; a request with one is refused only if
        its caller (or its address) already spent its allowance — it is counted after its answer."""
        now = time.monotonic()
        addresses, callers = self.addresses, self.callers
        if token is None or (key := self._key_of(token)) is None:
            if addresses is None:
                return None
            wait = addresses.refused(address, now) or addresses.charge(address, now)
            return ("address", wait) if wait else None
        if addresses is not None and (wait := addresses.refused(address, now)):
            return "address", wait
        if callers is not None and (wait := callers.refused(key, now)):
            return "caller", wait
        return None

    def _after(self, address: str, token: str, status: int) -> None:
        key = self._key_of(token)
        if status == 401 or key is None:
            if self.addresses is not None:
                self.addresses.charge(address, time.monotonic())
        elif self.callers is not None:
            self.callers.charge(key, time.monotonic())

    # Body size -------------------------------------------------------------------------------------------------

    def _limit_for(self, path: str) -> int:
        if path.startswith("/fhir"):
            if path.startswith("/fhir/Binary"):
                return self.binary_body_limit
            return self.fhir_body_limit
        return self.body_limit

    def _counted(self, scope: Scope, receive: Receive) -> Receive:
        limit = self._limit_for(scope["path"])
        declared = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                declared = value
                break
        received = 0
        if declared is not None and declared.isdigit() and int(declared) > limit:
            received = limit + 1  # refused at the first read, before a byte is taken

        async def counted() -> Message:
            nonlocal received
            if received > limit:
                metrics.BODY_TOO_LARGE.inc()
                raise BodyTooLarge(limit)
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    metrics.BODY_TOO_LARGE.inc()
                    raise BodyTooLarge(limit)
            return message

        return counted


def _bearer(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            token = token.strip()
            return token if scheme.lower() == "bearer" and token else None
    return None


class Cors(CORSMiddleware):
    """Starlette's CORS, skipped for requests without an ``Origin`` (not a browser's cross-origin call: tablets'
    native requests, hospital systems), which are nearly all; services/kit/requests.py still marks every answer
    ``Vary: Origin``."""

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:  # type: ignore[override]
        # A plain function, as Protect's: WebSockets (whose Origin ws.py checks) and requests without an Origin
        # go straight on.
        if scope["type"] == "http":
            for name, _ in scope["headers"]:
                if name == b"origin":
                    return super().__call__(scope, receive, send)
        return self.app(scope, receive, send)


def cors_options(settings: Settings) -> dict[str, Any]:
    """Starlette CORSMiddleware's options: the tablet app's origins (``allowed_origins``, and the public URL's), no
    credentials (tokens travel in Authorization, not cookies)."""
    return {
        "allow_origins": sorted(settings.ws_origins),
        "allow_credentials": False,
        "allow_methods": ["GET", "POST", "PUT", "PATCH", "DELETE"],
        "allow_headers": ["Authorization", "Content-Type", "If-Match", "If-None-Exist", "Idempotency-Key",
                          "X-Request-ID"],
        "expose_headers": ["ETag", "Location", "Retry-After", "X-Request-ID"],
        "max_age": 600,
    }
