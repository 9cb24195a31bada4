"""Identity benchmarks: token verification in the share service, and login latency.

    .venv/bin/python bench/auth.py [--verifications 20000] [--logins 40]

Runs a real `renkei serve` in a child process (embedded default, SQLite) and measures, in the same run:

* token verification by the share service's verifier (JWKS fetched over HTTP from the server), on one core,
  against the bare PyJWT decode of the same token as a baseline — target ≥ 3,000 verifications/s;
* an authenticated request end to end (GET /fhir/MedicationRequest: verified, then 404 — no database work)
  beside an unauthenticated one (/healthz), so the cost of authentication on the wire is visible;
* argon2id hashing at the production cost (RFC 9106 second recommended option: t=3, m=64 MiB, p=4), and the
  full POST /auth/login latency at that cost, without and with a TOTP second factor.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import jwt
import pyotp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import load_topology, server_process, summary
from services.auth.credentials.passwords import Passwords
from services.kit.settings import Settings
from services.kit.tokens import keys_from_jwks
from services.share.security.verifier import TokenVerifier

PASSWORD = "bench password 2026"
SECRET = pyotp.random_base32()


def network_file(directory: Path) -> Path:
    tag = uuid.uuid4().hex[:6]
    data = {
        "network": {"id": f"bench-{tag}", "name": "bench", "settings": {"mfa_required": False}},
        "organizations": [{"id": f"bench-clinic-{tag}", "name": "ベンチ診療所", "type": "clinic"}],
        "users": [
            {"username": "bench-pw", "password": PASSWORD, "organization": f"bench-clinic-{tag}",
             "profession": "physician", "name": "ベンチ 一"},
            {"username": "bench-totp", "password": PASSWORD, "organization": f"bench-clinic-{tag}",
             "profession": "physician", "name": "ベンチ 二", "totp_secret": SECRET},
        ],
    }
    path = directory / "network.json"
    path.write_text(json.dumps(data, ensure_ascii=False))
    return path


@dataclass(frozen=True)
class Served:
    """Where the benchmark's requests go: the base URL, httpx's ``verify``, and where the keys are fetched (None:
    the base URL's /auth/jwks.json)."""

    base: str
    verify: ssl.SSLContext | bool = True
    jwks_url: str | None = None


@contextmanager
def direct(bootstrap_file: Path) -> Iterator[Served]:
    """One `renkei serve` on the embedded default (SQLite)."""
    with server_process(bootstrap_file=bootstrap_file) as base:
        yield Served(base)


@contextmanager
def deployed(bootstrap_file: Path) -> Iterator[Served]:
    """The topology of scripts/topology.py at the production password-hashing cost, the network bootstrapped into
    its identity database."""
    topology = load_topology().Topology(cheap_hashing=False).start()
    try:
        subprocess.run([sys.executable, "-m", "services.cli", "admin", "bootstrap", str(bootstrap_file)],
                       env={**os.environ, **topology.env}, check=True, capture_output=True)
        yield Served(topology.base_url, topology.ssl_context(), topology.env["RENKEI_SHARE_JWKS_URL"])
    finally:
        topology.stop()


def time_calls(count: int, call: object) -> list[float]:
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        call()  # type: ignore[operator]
        samples.append(time.perf_counter() - start)
    return samples


def bench_verifier(served: Served, token: str, count: int) -> dict[str, dict[str, float]]:
    settings = Settings(public_url=served.base, share_jwks_url=served.jwks_url)
    verifier = TokenVerifier(settings)
    header = f"Bearer {token}"
    jwks = httpx.get(served.jwks_url or f"{served.base}/auth/jwks.json", verify=served.verify).json()
    key = keys_from_jwks(jwks)[jwt.get_unverified_header(token)["kid"]]

    async def run() -> tuple[list[float], float]:
        await verifier.authenticate(header)  # warm the JWKS cache (one HTTP fetch)
        samples = []
        wall = time.perf_counter()
        for _ in range(count):
            start = time.perf_counter()
            await verifier.authenticate(header)
            samples.append(time.perf_counter() - start)
        return samples, time.perf_counter() - wall

    samples, wall = asyncio.run(run())
    baseline = time_calls(count, lambda: jwt.decode(token, key, algorithms=["ES256"], audience=settings.fhir_base,
                                                     issuer=settings.issuer))
    return {
        "share_verifier": {**summary(samples), "per_second": count / wall},
        "pyjwt_decode_baseline": {**summary(baseline), "per_second": count / sum(baseline)},
    }


def bench_http(served: Served, token: str, count: int) -> dict[str, dict[str, float]]:
    with httpx.Client(base_url=served.base, verify=served.verify) as http:
        headers = {"Authorization": f"Bearer {token}"}
        for _ in range(20):
            http.get("/fhir/MedicationRequest", headers=headers)
            http.get("/healthz")
        authed = time_calls(count, lambda: http.get("/fhir/MedicationRequest", headers=headers))
        public = time_calls(count, lambda: http.get("/healthz"))
    return {"http_authenticated": summary(authed), "http_unauthenticated_baseline": summary(public)}


def bench_logins(served: Served, count: int) -> dict[str, dict[str, float]]:
    totp = pyotp.TOTP(SECRET)
    with httpx.Client(base_url=served.base, timeout=30, verify=served.verify) as http:
        password_only = time_calls(count, lambda: http.post(
            "/auth/login", json={"username": "bench-pw", "password": PASSWORD}).raise_for_status())
        two_factor: list[float] = []
        # One TOTP login per 30-second step (replay protection), so only a few two-factor samples: use the
        # current and the next step.
        step = int(time.time() // 30)
        for offset in (0, 1):
            start = time.perf_counter()
            first = http.post("/auth/login", json={"username": "bench-totp", "password": PASSWORD}).json()
            http.post("/auth/login/mfa", json={"mfa_token": first["mfa_token"],
                                               "code": totp.generate_otp(step + offset)}).raise_for_status()
            two_factor.append(time.perf_counter() - start)
    return {"login_password_only": summary(password_only), "login_with_totp": summary(two_factor)}


def bench_argon2(count: int) -> dict[str, dict[str, float]]:
    defaults = Settings()
    passwords = Passwords(time_cost=defaults.argon2_time_cost, memory_kib=defaults.argon2_memory_kib,
                          parallelism=defaults.argon2_parallelism)
    stored = passwords.hash(PASSWORD)
    return {"argon2id_verify": summary(time_calls(count, lambda: passwords.verify(stored, PASSWORD)))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--verifications", type=int, default=20000)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--logins", type=int, default=40)
    parser.add_argument("--topology", action="store_true",
                        help="serve as deployed (scripts/topology.py): nginx (TLS) in front of an identity-service "
                             "process and two share-service processes, on PostgreSQL; the verifier reads the keys "
                             "from the identity service's loopback port, as the share processes do")
    args = parser.parse_args()

    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as scratch, \
            (deployed if args.topology else direct)(network_file(Path(scratch))) as served:
        token = httpx.post(f"{served.base}/auth/login", verify=served.verify,
                           json={"username": "bench-pw", "password": PASSWORD}).json()["access_token"]
        results |= bench_verifier(served, token, args.verifications)
        results |= bench_http(served, token, args.requests)
        results |= bench_argon2(max(10, args.logins // 2))
        results |= bench_logins(served, args.logins)

    defaults = Settings()
    print(f"argon2id cost: t={defaults.argon2_time_cost}, m={defaults.argon2_memory_kib} KiB, "
          f"p={defaults.argon2_parallelism}")
    print(f"{'measure':34} {'n':>6} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} {'per s':>10}")
    for name, figures in results.items():
        rate = f"{figures['per_second']:10.0f}" if "per_second" in figures else f"{'':>10}"
        print(f"{name:34} {figures['n']:6.0f} {figures['p50_ms']:9.3f} {figures['p90_ms']:9.3f} "
              f"{figures['p99_ms']:9.3f} {rate}")
    verifier = results["share_verifier"]["per_second"]
    overhead = results["http_authenticated"]["p50_ms"] - results["http_unauthenticated_baseline"]["p50_ms"]
    print(f"\nshare verifier: {verifier:.0f} verifications/s on one core "
          f"(target ≥ 3000: {'met' if verifier >= 3000 else 'NOT met'}); "
          f"{verifier / results['pyjwt_decode_baseline']['per_second']:.2f}× the bare PyJWT decode")
    print(f"authentication adds {overhead:.3f} ms at p50 to a request "
          f"({results['http_authenticated']['p50_ms'] / results['http_unauthenticated_baseline']['p50_ms']:.2f}× "
          "an unauthenticated one)")
    print(f"login p50 {results['login_password_only']['p50_ms']:.0f} ms (password), "
          f"argon2id alone p50 {results['argon2id_verify']['p50_ms']:.0f} ms")
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "auth.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
