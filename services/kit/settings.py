"""Configuration, read from the environment with the ``RENKEI_`` prefix.

Every default is the embedded default: SQLite files and generated keys under one data directory, so
``renkei serve`` works on a fresh laptop with nothing configured. Production sets the database URLs, the public
URL and the key material explicitly (see ``deploy/``).
"""

from __future__ import annotations

import ipaddress
from functools import cached_property
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[2]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RENKEI_", extra="ignore")

    data_dir: Path = Field(default=Path("./renkei-data"), description="Where SQLite files and key files live.")
    schemas_dir: Path = Field(default=REPO_ROOT / "schemas", description="Code systems and templates (data).")

    # The URL at which clients reach this deployment; issuer, audience and token endpoint derive from it.
    public_url: str = "http://127.0.0.1:8000"

    auth_database_url: str | None = None
    share_database_url: str | None = None
    redis_url: str | None = None

    # Threads per process that run the share service's database work. Python runs one thread at a time, so
    # threads only overlap database round trips; many threads mostly contend for the interpreter (measured in
    # bench/store.py: 1-2 threads gave 15-20% more mixed throughput than 40; once reads stopped holding
    # transactions, 3 beat 2 in six alternating runs of 1M-resource mixed load, by 7% on average, and 4 lost).
    # Scale with processes instead (`renkei serve --workers N`).
    db_threads: int = Field(default=3, ge=1, le=64)
    # How often the share service links newly appended audit records into the hash chain (0: never; then only
    # another instance does). Rows wait unchained at most this long, plus 30 s behind a gap in their sequence.
    # Often, so that each pass is short: two seconds' records chained at once held requests back for tens of
    # milliseconds (bench/sheets.py at 300 sheets/s: p99 60 ms at 2 s, 21 ms at 0.5 s).
    audit_chain_interval_seconds: float = Field(default=0.5, ge=0)
    # How often a share worker writes the audit records of the reads it served (services/share/audit/buffer.py):
    # a killed worker loses at most this interval's read records. 0: each read waits for its own record instead.
    # PostgreSQL only; on SQLite each read records in its own session.
    audit_flush_seconds: float = Field(default=0.05, ge=0, le=5)
    # How often the share service looks for emergency sheets older than their network's review period and raises
    # their review Task (services/share/sheets/reviews.py). 0: never (another instance does it).
    emergency_review_interval_seconds: float = Field(default=3600.0, ge=0)
    # Push (services/share/events, services/share/push). How often each share process numbers and reads the event
    # log even when no wake-up came: the longest a reader waits for another instance's write while the wake-up
    # channel (Redis) is down or a message was missed.
    event_poll_seconds: float = Field(default=1.0, gt=0, le=30)
    # WebSocket /ws: seconds to authenticate after the handshake; the server's heartbeat period (a client silent
    # for two periods is dropped); events queued for one connection before it is closed as too slow (4002:
    # resume from your cursor).
    ws_auth_seconds: float = Field(default=5.0, gt=0)
    ws_heartbeat_seconds: float = Field(default=20.0, gt=0)
    ws_queue_events: int = Field(default=1000, ge=1)
    # Browser origins allowed to open /ws (JSON list); the public URL's origin always is. A client that sends no
    # Origin (a native app, a hospital system) is not a browser page and is let through to authenticate.
    allowed_origins: list[str] = Field(default_factory=list)
    # Endpoints the server calls for clients (rest-hook Subscriptions, Web Push) must be public https addresses;
    # this lets them be loopback too (tests, a one-machine demo). Never in production: services/kit/outbound.py.
    outbound_allow_loopback: bool = False
    # rest-hook Subscriptions (services/share/subscriptions/delivery.py): how often each share process looks for
    # subscriptions with work; how long a receiver may take to answer; the first retry's delay, doubled per failure
    # up to the cap; failures in a row before a subscription is set to 'error'.
    subscription_poll_seconds: float = Field(default=1.0, gt=0, le=60)
    subscription_timeout_seconds: float = Field(default=10.0, gt=0, le=60)
    subscription_retry_seconds: float = Field(default=1.0, gt=0)
    subscription_retry_max_seconds: float = Field(default=300.0, gt=0)
    subscription_max_failures: int = Field(default=10, ge=1)
    # Web Push (services/share/push/webpush.py). The VAPID signing key (RFC 8292): a PEM, or the raw 32-byte P-256
    # private value in base64url; when unset it is read from (or generated into) ``<key_dir>/vapid-private.pem``.
    # Changing it invalidates every browser's subscription. The subject is the contact a push service may write
    # to (default: an admin address at the public URL's host).
    vapid_private_key: str | None = Field(default=None, repr=False)
    vapid_subject: str | None = None
    web_push_ttl_seconds: int = Field(default=3600, ge=0, le=28 * 24 * 3600)

    # Key material. The master key encrypts TOTP secrets and signing keys at rest in the auth database;
    # when unset it is read from (or generated into) ``<data_dir>/keys/auth-master.key`` with mode 0600.
    auth_master_key: str | None = Field(default=None, repr=False)
    key_dir: Path | None = None
    # The share service's key-encryption keys, JSON {"1": "<base64 32 bytes>", "2": ...}; the highest version
    # wraps new data keys. When unset they live in ``<key_dir>/share-kek-<n>.key`` (version 1 made on first use).
    share_keks: str | None = Field(default=None, repr=False)
    # The blind-index key (base64, 32 bytes), separate from the KEKs so rotation never changes search tokens.
    # Required when share_keks is set; otherwise read from (or generated into) ``<key_dir>/share-index.key``.
    share_index_key: str | None = Field(default=None, repr=False)
    # Attachment (Binary) content, encrypted, outside the database; default ``<data_dir>/blobs``.
    blob_dir: Path | None = None

    # Tokens.
    access_token_ttl_seconds: int = 600
    refresh_token_ttl_seconds: int = 12 * 3600
    session_max_age_seconds: int = 7 * 24 * 3600
    mfa_challenge_ttl_seconds: int = 300
    client_assertion_max_lifetime_seconds: int = 300
    clock_skew_seconds: int = 30

    # The share service's view of the identity service. Unset means "this deployment's own auth service".
    share_jwks_url: str | None = None
    share_auth_url: str | None = None  # where it reads each network's sharing policy (default: beside the JWKS)
    network_policy_ttl_seconds: float = Field(default=30.0, ge=0)
    share_token_issuer: str | None = None
    share_token_audience: str | None = None
    jwks_min_refresh_seconds: float = 10.0

    # argon2id cost (RFC 9106 "second recommended option" by default; see README for the measured latency).
    argon2_time_cost: int = 3
    argon2_memory_kib: int = 65536
    argon2_parallelism: int = 4

    # Login throttling: free failures, then exponential back-off capped so no one is locked out for good.
    throttle_window_seconds: int = 24 * 3600
    throttle_account_ip_free: int = 5
    throttle_account_free: int = 20
    throttle_ip_free: int = 50
    throttle_max_lock_seconds: int = 900
    throttle_account_max_lock_seconds: int = 60

    # Operations (services/kit/requests.py, limits.py, metrics.py) ---------------------------------------------
    # One JSON log line per request (method, route template, status, duration, request id, pseudonymous user).
    access_log: bool = True
    # The key of the pseudonymous user id in logs (HMAC-SHA256 of the token's ``sub``), base64 of 32 bytes; when
    # unset it is read from (or generated into) ``<key_dir>/log-pseudonym.key``. Changing it unlinks old logs.
    log_pseudonym_key: str | None = Field(default=None, repr=False)
    # Networks (CIDRs) allowed to read GET /metrics; everyone else gets 404. Default: loopback only.
    metrics_allow: list[str] = Field(default_factory=lambda: ["127.0.0.0/8", "::1/128"])
    # Request bodies: the limit outside /fhir (the identity service's JSON, Web Push registrations), and under
    # /fhir (resources, Bundles: the store's own 20 MiB; Binary takes the base64 of its 20 MB content on top).
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    max_fhir_body_bytes: int = Field(default=20 * 1024 * 1024, ge=1024)
    # Rate limits (token buckets): requests per second sustained and the burst, per user or system client (the
    # token's subject and client_id), and per client address for requests without a bearer token. 0: no limit.
    # With redis_url set the counts are shared by every instance (fixed windows of burst/rate seconds).
    rate_limit_per_second: float = Field(default=50.0, ge=0)
    rate_limit_burst: int = Field(default=200, ge=0)
    rate_limit_address_per_second: float = Field(default=20.0, ge=0)
    rate_limit_address_burst: int = Field(default=100, ge=0)
    # Callers not rate-limited (CIDRs): by default this machine — health probes, the CLI, benchmarks. Behind a reverse
    # proxy the client is the address it forwards (uvicorn's FORWARDED_ALLOW_IPS), so the proxy is not exempt.
    rate_limit_exempt: list[str] = Field(default_factory=lambda: ["127.0.0.0/8", "::1/128"])

    @field_validator("public_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @field_validator("metrics_allow", "rate_limit_exempt")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for cidr in value:
            ipaddress.ip_network(cidr, strict=False)  # a ValueError names the bad entry at start, not at a request
        return value

    # Derived values -------------------------------------------------------------------------------------

    @cached_property
    def resolved_key_dir(self) -> Path:
        return self.key_dir or self.data_dir / "keys"

    @cached_property
    def resolved_blob_dir(self) -> Path:
        return self.blob_dir or self.data_dir / "blobs"

    @cached_property
    def resolved_auth_database_url(self) -> str:
        return self.auth_database_url or f"sqlite:///{(self.data_dir / 'auth.db').resolve()}"

    @cached_property
    def resolved_share_database_url(self) -> str:
        return self.share_database_url or f"sqlite:///{(self.data_dir / 'share.db').resolve()}"

    @property
    def issuer(self) -> str:
        return f"{self.public_url}/auth"

    @property
    def token_endpoint(self) -> str:
        return f"{self.public_url}/auth/token"

    @property
    def fhir_base(self) -> str:
        return f"{self.public_url}/fhir"

    @property
    def jwks_url(self) -> str:
        return self.share_jwks_url or f"{self.public_url}/auth/jwks.json"

    @property
    def auth_url(self) -> str:
        """The identity service's base (``…/auth``) as the share service reaches it."""
        return self.share_auth_url or self.jwks_url.rsplit("/", 1)[0]

    @property
    def ws_origins(self) -> frozenset[str]:
        """Origins allowed to open the WebSocket: the configured ones and the public URL's own."""
        parts = urlsplit(self.public_url)
        return frozenset([*(origin.rstrip("/") for origin in self.allowed_origins), f"{parts.scheme}://{parts.netloc}"])

    @property
    def resolved_vapid_subject(self) -> str:
        """The VAPID ``sub``: the configured contact, else ``mailto:admin@`` the public URL's host (a name, not an
        address; ``localhost`` otherwise, as push services ask for a well-formed contact)."""
        if self.vapid_subject:
            return self.vapid_subject
        host = urlsplit(self.public_url).hostname or ""
        named = "." in host and not host.replace(".", "").isdigit() and ":" not in host
        return f"mailto:admin@{host if named else 'localhost'}"

    @property
    def expected_issuer(self) -> str:
        return self.share_token_issuer or self.issuer

    @property
    def expected_audience(self) -> str:
        return self.share_token_audience or self.fhir_base
