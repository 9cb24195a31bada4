"""Crashes under sustained writes: `renkei serve` killed with SIGKILL at random moments and restarted, then its
PostgreSQL stopped in immediate mode (a database crash: WAL replay at the next start) and started again — while
several clients keep posting Observations. After each recovery: every acknowledged write is there as sent, an
unanswered one is there whole or not at all, and the event log holds exactly one event per stored version.

RENKEI_RELIABILITY_CYCLES kills (default 5; the full run is 100), and as many database crashes, at most 20.
"""

from __future__ import annotations

import random
import time

import httpx

from tests.reliability.conftest import CYCLES, Stack, Writers, settle_and_verify, verify_search


def first_acknowledged_after(writers: Writers, count: int, timeout: float = 60) -> float:
    """Seconds until a write beyond the first ``count`` attempts is acknowledged."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if writers.acknowledged_after(count):
            return time.monotonic() - started
        time.sleep(0.02)
    raise AssertionError(f"no write acknowledged within {timeout} s of recovery")


def test_sigkill_under_writes_loses_no_acknowledged_write_and_leaves_nothing_half_written(stack: Stack) -> None:
    rng = random.Random(20261205)
    writers = Writers(stack, [stack.server.base]).start()
    verified = stack.verified
    checked = verified.checks
    before = len(verified.unacknowledged_present)
    recoveries: list[float] = []
    started = time.monotonic()
    try:
        for _ in range(CYCLES):
            writers.resume()
            time.sleep(rng.uniform(0.3, 1.5))  # a random moment, mid-write
            stack.server.kill()
            killed = time.monotonic()
            stack.server.start()
            recoveries.append(time.monotonic() - killed)
            settle_and_verify(stack, writers, verified, rng)
        writers.pause()
        searched = verify_search(stack)
    finally:
        writers.stop()
    acked, statuses = writers.acknowledged(), writers.statuses()
    unanswered = statuses.get(None, 0)
    print(f"\n[crash: SIGKILL] {CYCLES} kills of renkei serve under {writers.threads} writing clients in "
          f"{time.monotonic() - started:.1f} s: {len(writers.attempts)} writes posted, {len(acked)} acknowledged, "
          f"{len(set(acked) & verified.read_back)} read back as sent, {unanswered} unanswered ({writers.cut()} cut "
          f"mid-request, the rest refused a connection) of which {len(verified.unacknowledged_present) - before} "
          f"found stored whole and the rest absent; {searched} found by "
          f"search; event log = versions after each of {verified.checks - checked} checks; restart to ready: "
          f"max {max(recoveries):.2f} s, mean {sum(recoveries) / len(recoveries):.2f} s; statuses {statuses}")
    assert len(acked) >= CYCLES * 5, "too few writes to mean anything"
    assert set(acked) <= verified.read_back
    assert set(statuses) <= {201, None}, statuses  # a write is acknowledged or unanswered, never refused


def test_postgresql_crash_under_writes_loses_no_acknowledged_write_and_the_service_recovers_by_itself(
        stack: Stack) -> None:
    rng = random.Random(20261206)
    crashes = min(CYCLES, 20)
    writers = Writers(stack, [stack.server.base]).start()
    verified = stack.verified
    checked = verified.checks
    before = len(verified.unacknowledged_present)
    recoveries: list[float] = []
    replays: list[float] = []
    pid = stack.server.process.pid if stack.server.process else None
    started = time.monotonic()
    try:
        for _ in range(crashes):
            writers.resume()
            time.sleep(rng.uniform(0.3, 1.5))
            stack.pg.stop("immediate")
            time.sleep(rng.uniform(0.2, 1.0))  # requests meanwhile are answered 503
            with httpx.Client(base_url=stack.server.base, timeout=10) as http:
                assert http.get("/readyz").status_code == 503
            count = len(writers.attempts)
            replays.append(stack.pg.start())
            recoveries.append(first_acknowledged_after(writers, count))
            settle_and_verify(stack, writers, verified, rng)
        writers.pause()
        searched = verify_search(stack)
    finally:
        writers.stop()
    assert stack.server.process is not None and stack.server.process.pid == pid
    assert stack.server.process.poll() is None, "the service died with its database"
    acked, statuses = writers.acknowledged(), writers.statuses()
    print(f"\n[crash: PostgreSQL stopped -m immediate] {crashes} database crashes under {writers.threads} writing "
          f"clients in {time.monotonic() - started:.1f} s, the service never restarted: {len(writers.attempts)} "
          f"writes posted, {len(acked)} acknowledged, {len(set(acked) & verified.read_back)} read back as sent, "
          f"{len(verified.unacknowledged_present) - before} answered 503 or not at all yet found stored whole; "
          f"{searched} on the stack found by search; event "
          f"log = versions after each of {verified.checks - checked} checks; PostgreSQL start (WAL replay): max "
          f"{max(replays):.2f} s; from it being ready to the next acknowledged write: max {max(recoveries):.2f} s, "
          f"mean {sum(recoveries) / len(recoveries):.2f} s; statuses {statuses}")
    assert len(acked) >= crashes * 5
    assert set(acked) <= verified.read_back
    assert set(statuses) <= {201, 503, None}, statuses  # never a 500: the database away is a 503
