"""Access benchmark: what the access decision, redaction and audit cost a patient-scoped search of 50 sheets.

    .venv/bin/python bench/access.py                 # about four minutes
    .venv/bin/python bench/access.py --seconds 30    # longer turns, steadier figures

Two servers of the same application on the same PostgreSQL databases and key files, in turns:
  renkei     as deployed: each search decided (team, consent, profession, sheet kind), every sheet's sections
             the reader may not see withheld, one audit record written per search
  unchecked  the same application with access checks (and so redaction) and the audit off — the baseline
The reader is a care worker in the patients' care team (their organisation is a participant, the patients
consent): each search returns 50 daily care notes, and in each 3 of its 7 sections are withheld (vitals, skin
and observation, labelled nursing; bench/fixtures.py). Figures: throughput and p50/p90/p99 latency of each, the
CPU each server and the database spent per search, and the overhead of the checked search: the larger of its
extra time per search (the inverse of throughput; the closed loop keeps the machine busy) and its extra median
latency.
Target (the [access] issue): at most 20% overhead.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, func, select

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import cpu_seconds
from bench.fixtures import daily_note
from bench.load import Workload
from bench.pg import POSTMASTERS
from bench.seed import seed
from bench.store import PG, Server, analyze, bootstrap_network, measure_alternating, scene
from services.share.audit.models import AuditEntry

PASSWORD = "bench password 2026"
TARGET = 0.20


def prepare(server: Server, scratch: Path) -> tuple[str, str]:
    """Migrate, bootstrap a network with a care worker and the sheets' author: (network id, organisation id)."""
    network = f"bench-{uuid.uuid4().hex[:6]}"
    clinic = f"{network}-office"
    description = {
        "network": {"id": network, "name": "bench", "settings": {"mfa_required": False}},
        "organizations": [{"id": clinic, "name": "ベンチ介護事業所", "type": "care-service"}],
        "users": [{"username": f"{network}-worker", "id": "bench-worker", "password": PASSWORD,
                   "organization": clinic, "profession": "care-worker", "name": "ベンチ 介護職員"},
                  {"username": f"{network}-author", "id": "bench-author", "password": PASSWORD,
                   "organization": clinic, "profession": "nurse", "name": "ベンチ 看護師"}],
    }
    bootstrap_network(server, scratch, description)
    return network, clinic


def check_answers(renkei: Server, unchecked: Server, token: str, patient: str) -> None:
    """Both servers answer the same 50 sheets; only the checked one withholds sections (and says so)."""
    query = {"patient": patient, "_count": "50"}
    headers = {"Authorization": f"Bearer {token}"}
    checked = httpx.get(f"{renkei.base}/fhir/QuestionnaireResponse", params=query, headers=headers,
                        verify=renkei.verify).json()
    baseline = httpx.get(f"{unchecked.base}/fhir/QuestionnaireResponse", params=query, headers=headers,
                         verify=unchecked.verify).json()
    entries = [e["resource"] for e in checked.get("entry", [])]
    assert len(entries) == 50 and len(baseline.get("entry", [])) == 50, (checked, baseline)
    redacted = sum(any(s.get("code") == "REDACTED" for s in e.get("meta", {}).get("security", [])) for e in entries)
    withheld = sum(1 for e in entries for item in e["item"] if "answer" not in item and "item" not in item)
    assert redacted == 50 and withheld == 150, (redacted, withheld)
    assert not any("security" in e["resource"].get("meta", {}) for e in baseline["entry"])
    print(f"  checked search: 50 sheets, all marked REDACTED, {withheld} sections withheld; "
          "baseline: 50 sheets, nothing withheld", flush=True)


def audit_rows(url: str) -> int:
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.connect() as connection:
        count = int(connection.scalar(select(func.count()).select_from(AuditEntry.__table__)) or 0)
    engine.dispose()
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", type=int, default=400, help="patients, each with --sheets daily notes")
    parser.add_argument("--sheets", type=int, default=60, help="daily care notes per patient (>= 50)")
    parser.add_argument("--seconds", type=float, default=60.0, help="load time per server, over all its turns")
    parser.add_argument("--rounds", type=int, default=6, help="turns per server, alternating")
    parser.add_argument("--clients", type=int, default=8, help="concurrent connections (closed loop)")
    parser.add_argument("--workers", type=int, default=2, help="server worker processes (each server alike)")
    parser.add_argument("--pg", default="own",
                        help=f"'own' (default): a cluster of this run's own; or an admin database URL ({PG})")
    parser.add_argument("--topology", action="store_true",
                        help="serve both as deployed: nginx (TLS), an identity-service process and two share-service "
                             "processes each (bench/fronted.py); --workers is then ignored")
    args = parser.parse_args()
    results: dict[str, Any] = {"config": vars(args)}

    with scene(args.pg) as where:
        scratch, urls, server_url = where.scratch, where.urls, where.server_url
        renkei = where.primary("renkei", args.workers, topology=args.topology)
        unchecked = renkei.baseline("unchecked")
        try:
            network, organization = prepare(renkei, scratch)
            print(f"1. seeding {args.patients:,} patients × {args.sheets} daily care notes", flush=True)
            patients, _, _ = seed(renkei.settings, network, args.patients, args.patients, args.sheets, 0,
                                  organization=organization, make_sheet=daily_note)
            analyze(urls["share"])
            renkei.start()
            unchecked.start()
            login = httpx.post(f"{renkei.base}/auth/login", verify=renkei.verify,
                               json={"username": f"{network}-worker", "password": PASSWORD})
            token = login.json()["access_token"]
            check_answers(renkei, unchecked, token, patients[0])

            print(f"2. patient-scoped search, _count=50, {args.clients} connections, "
                  f"{args.rounds} alternating turns", flush=True)
            before = audit_rows(urls["share"])
            works = {label: Workload(server.base, token, {"search": 1.0}, args.seconds, search_patients=patients,
                                     count=50, cafile=server.cafile)
                     for label, server in (("renkei (access)", renkei), ("unchecked (baseline)", unchecked))}
            postmaster = POSTMASTERS.get(server_url)

            def cpu_of(server: Server) -> Callable[[], dict[str, float]]:
                def read() -> dict[str, float]:
                    parts = {"server": server.cpu_seconds()}
                    if postmaster is not None:  # only a cluster of this run's own is this run's alone
                        parts["database"] = cpu_seconds(postmaster)
                    return parts
                return read

            measure_alternating(works, args.clients, results, rounds=args.rounds,
                                cpu={"renkei (access)": cpu_of(renkei), "unchecked (baseline)": cpu_of(unchecked)})
            time.sleep(1.0)  # reads' records are written in the background, within audit_flush_seconds
            written = audit_rows(urls["share"]) - before
            report(results, written)
        finally:
            renkei.stop()
            unchecked.stop()
    out = Path(__file__).with_name("results")
    out.mkdir(exist_ok=True)
    (out / "access.json").write_text(json.dumps(results, indent=2, default=str))
    print(f"\nresults written to {out / 'access.json'}")


def report(results: dict[str, Any], audit_written: int) -> None:
    on, off = results["renkei (access)"], results["unchecked (baseline)"]
    # Each search's share of the machine: the inverse of throughput (the closed loop keeps the machine busy).
    overhead_throughput = off["throughput"] / on["throughput"] - 1
    overhead_p50 = on["search"]["p50_ms"] / off["search"]["p50_ms"] - 1
    searches = int(on["search"]["n"])
    results["overhead"] = {"time_per_search": overhead_throughput, "p50": overhead_p50,
                           "audit_records": audit_written, "searches": searches}
    print("\nsummary")
    print(f"  throughput   {on['throughput']:.0f} vs {off['throughput']:.0f} req/s: "
          f"time per search {overhead_throughput:+.1%}")
    for name in ("p50_ms", "p90_ms", "p99_ms"):
        print(f"  {name[:-3]:12} {on['search'][name]:.1f} vs {off['search'][name]:.1f} ms: "
              f"{on['search'][name] / off['search'][name] - 1:+.1%}")
    print(f"  audit records written during the checked turns: {audit_written:,} for {searches:,} searches")
    worst = max(overhead_throughput, overhead_p50)
    print(f"  target: overhead at most {TARGET:.0%} — {'met' if worst <= TARGET else 'NOT met'} "
          f"({worst:+.1%}, the larger of the time-per-search and median-latency figures)")

if __name__ == "__main__":
    main()
