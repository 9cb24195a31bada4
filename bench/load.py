"""A closed-loop load generator: N keep-alive connections, each with one request in flight, for a fixed time.

The load runs in one child process on an asyncio event loop speaking plain HTTP/1.1 over raw sockets. A full HTTP
client library costs several hundred microseconds of CPU per request; on a 2-core machine that CPU is taken from
the server being measured. Here a request costs the client a few tens of microseconds, so the figures describe
the server. Each request's latency is measured from just before it is written to just after its body is read.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from queue import Empty
from typing import Any
from urllib.parse import urlencode, urlsplit

import orjson

from bench.common import client_tls
from bench.fixtures import sheet

Request = Callable[[random.Random], bytes]  # builds one HTTP request's bytes


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
    count: int = 20  # a search page's size
    make: Callable[[str, str, int], dict[str, Any]] = sheet  # a create's body: (patient, author, day)
    # Requests a second over all connections, each connection sending on a fixed schedule, every latency counted
    # from when its request was due (a slow answer delays the next send without hiding the wait); 0: closed loop.
    rate: float = 0.0
    cafile: str | None = None  # the certificate to trust when ``base`` is https (bench/fronted.py)


def _requests(work: Workload) -> dict[str, Request]:
    host = urlsplit(work.base).netloc
    common = (f"Host: {host}\r\nAuthorization: Bearer {work.token}\r\nAccept: application/fhir+json\r\n"
              "Connection: keep-alive\r\n")

    def create(rng: random.Random) -> bytes:
        body = orjson.dumps(work.make(rng.choice(work.patients), work.author, rng.randrange(365)))
        head = (f"POST {work.path} HTTP/1.1\r\n{common}Content-Type: application/fhir+json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n")
        return head.encode() + body

    def read(rng: random.Random) -> bytes:
        return f"GET {work.path}/{rng.choice(work.reads)} HTTP/1.1\r\n{common}\r\n".encode()

    def search(rng: random.Random) -> bytes:
        query = urlencode({"patient": rng.choice(work.search_patients), "_count": str(work.count)})
        return f"GET {work.path}?{query} HTTP/1.1\r\n{common}\r\n".encode()

    return {"create": create, "read": read, "search": search}


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> tuple[int, bool]:
    """Send one request and read its whole response: the status code, and whether the server closes the
    connection after it."""
    writer.write(request)
    status, _, closing = await read_response(reader)
    return status, closing


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """One HTTP/1.1 response: its status, its body, and whether the server closes the connection after it (nginx
    does after keepalive_requests, 1,000 by default)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length, closing = 0, False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"connection":
            closing = value.strip().lower() == b"close"
        elif name == b"transfer-encoding":
            raise RuntimeError("chunked responses are not expected from these endpoints")
    return int(head[9:12]), await reader.readexactly(length) if length else b"", closing


async def open_stream(base: str, cafile: str | None) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw connection to ``base``'s host and port: TLS for https, trusting ``cafile``."""
    address = urlsplit(base)
    return await asyncio.open_connection(address.hostname, address.port, ssl=client_tls(base, cafile))


async def _connection(work: Workload, seed: int, connections: int, deadline: float,
                      latencies: dict[str, list[float]], failures: list[int]) -> None:
    rng = random.Random(seed)
    requests = _requests(work)
    names, weights = zip(*work.mix.items(), strict=True)
    reader, writer = await open_stream(work.base, work.cafile)
    interval = connections / work.rate if work.rate else 0.0
    due = time.perf_counter() + interval * seed / connections  # the connections' schedules interleave
    try:
        while time.monotonic() < deadline:
            name = rng.choices(names, weights)[0]
            request = requests[name](rng)
            if interval:
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
            start = due if interval else time.perf_counter()
            due += interval
            status, closing = await _exchange(reader, writer, request)
            elapsed = time.perf_counter() - start
            if status >= 400:
                failures[0] += 1
            else:
                latencies[name].append(elapsed)
            if closing:  # a client of a keep-alive pool opens another, as browsers and tablets do
                writer.close()
                reader, writer = await open_stream(work.base, work.cafile)
    finally:
        writer.close()


async def _drive(work: Workload, connections: int) -> tuple[dict[str, list[float]], int, float]:
    latencies: dict[str, list[float]] = {name: [] for name in work.mix}
    failures = [0]
    began = time.monotonic()
    deadline = began + work.seconds
    await asyncio.gather(*(_connection(work, seed, connections, deadline, latencies, failures)
                           for seed in range(connections)))
    return latencies, failures[0], time.monotonic() - began


def _child(work: Workload, connections: int, queue: Any) -> None:
    try:
        import uvloop  # the faster event loop when it is installed (uvicorn[standard] brings it)

        uvloop.install()
    except ImportError:
        pass
    queue.put(asyncio.run(_drive(work, connections)))


def run(work: Workload, connections: int) -> tuple[dict[str, list[float]], int, float]:
    """(latencies by operation, error count, seconds under load) over ``connections`` concurrent connections."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child, args=(work, connections, queue))
    process.start()
    while True:  # a load process that died (a refused connection, say) must not leave the benchmark waiting
        try:
            result: tuple[dict[str, list[float]], int, float] = queue.get(timeout=1.0)
            break
        except Empty:
            if not process.is_alive():
                raise RuntimeError(f"the load process ended without its figures (exit {process.exitcode})") from None
    process.join()
    return result
