"""A closed-loop load generator: N client processes, each sending one request at a time for a fixed time."""

from __future__ import annotations

import multiprocessing
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from bench.fixtures import sheet

Operation = Callable[[httpx.Client, random.Random], int]


@dataclass
class Workload:
    base: str
    token: str
    mix: dict[str, float]  # operation name -> share
    seconds: float
    patients: list[str] = field(default_factory=list)  # for creates
    search_patients: list[str] = field(default_factory=list)  # patients with >= 20 sheets
    reads: list[str] = field(default_factory=list)  # QuestionnaireResponse ids
    author: str = "bench-author"
    path: str = "/fhir/QuestionnaireResponse"


def _operations(work: Workload) -> dict[str, Operation]:
    headers = {"Authorization": f"Bearer {work.token}", "Content-Type": "application/fhir+json",
               "Accept": "application/fhir+json"}

    def create(http: httpx.Client, rng: random.Random) -> int:
        body = orjson.dumps(sheet(rng.choice(work.patients), work.author, rng.randrange(365)))
        return http.post(work.path, content=body, headers=headers).status_code

    def read(http: httpx.Client, rng: random.Random) -> int:
        return http.get(f"{work.path}/{rng.choice(work.reads)}", headers=headers).status_code

    def search(http: httpx.Client, rng: random.Random) -> int:
        params = {"patient": rng.choice(work.search_patients), "_count": "20"}
        return http.get(work.path, params=params, headers=headers).status_code

    return {"create": create, "read": read, "search": search}


def _client(work: Workload, seed: int, queue: Any) -> None:
    rng = random.Random(seed)
    operations = _operations(work)
    names, weights = zip(*work.mix.items(), strict=True)
    latencies: dict[str, list[float]] = {name: [] for name in names}
    errors = 0
    with httpx.Client(base_url=work.base, timeout=30) as http:
        began = time.monotonic()
        deadline = began + work.seconds
        while time.monotonic() < deadline:
            name = rng.choices(names, weights)[0]
            start = time.perf_counter()
            status = operations[name](http, rng)
            elapsed = time.perf_counter() - start
            if status >= 400:
                errors += 1
            else:
                latencies[name].append(elapsed)
    queue.put((latencies, errors, time.monotonic() - began))


def run(work: Workload, clients: int) -> tuple[dict[str, list[float]], int, float]:
    """(latencies by operation, error count, seconds under load) over ``clients`` concurrent processes.

    Each client times its own loop (process start-up is not load time); they run side by side for the same time.
    """
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    processes = [context.Process(target=_client, args=(work, seed, queue)) for seed in range(clients)]
    for process in processes:
        process.start()
    results = [queue.get() for _ in processes]
    for process in processes:
        process.join()
    merged: dict[str, list[float]] = {name: [] for name in work.mix}
    errors, durations = 0, []
    for latencies, failed, duration in results:
        errors += failed
        durations.append(duration)
        for name, values in latencies.items():
            merged[name].extend(values)
    return merged, errors, sum(durations) / len(durations)
