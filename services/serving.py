"""Serving on several CPU cores: worker processes, each accepting connections on its own SO_REUSEPORT socket.

A Python process uses about one core. uvicorn's own ``--workers`` shares one listening socket between its
workers, and the worker that wakes first accepts every waiting connection at once: with keep-alive connections
(tablets, a reverse proxy's upstream pool) one worker ends up with all of them while the others idle — measured
here as one worker at 100% CPU and the other at 0%. With a socket per worker and SO_REUSEPORT, the kernel spreads
new connections across the workers.

The parent only supervises: it restarts a worker that dies and stops them all on SIGTERM or SIGINT.
"""

from __future__ import annotations

import multiprocessing
import signal
import socket
import time
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from typing import Any

import structlog

log = structlog.get_logger(__name__)


def listening_socket(host: str, port: int) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(address)
    sock.set_inheritable(True)
    return sock


# WebSocket frames here are a few hundred bytes of ids (services/share/push/): permessage-deflate would save next to
# nothing on them, cost about 2.5x the CPU per delivery and keep a zlib context per connection (tens of KB each).
WEBSOCKET_OPTIONS: dict[str, Any] = {"ws_per_message_deflate": False}


def _worker(app: str, host: str, port: int, options: dict[str, Any]) -> None:
    import uvicorn

    sock = listening_socket(host, port)
    uvicorn.Server(uvicorn.Config(app, factory=True, **{**WEBSOCKET_OPTIONS, **options})).run(sockets=[sock])


def serve_workers(app: str, host: str, port: int, workers: int, *, prepare: Callable[[], None] | None = None,
                  **options: Any) -> None:
    """Serve the application factory ``app`` ("module:function") in ``workers`` processes until signalled.

    ``prepare`` (picklable) runs first, once, in a process of its own: the supervisor itself never imports the
    application, so it stays a few megabytes instead of another worker's hundred.
    """
    context = multiprocessing.get_context("spawn")
    if prepare is not None:
        preparation = context.Process(target=prepare)
        preparation.start()
        preparation.join()
        if preparation.exitcode != 0:
            raise SystemExit(f"preparing to serve failed (exit code {preparation.exitcode})")
    stopping = False

    def start() -> BaseProcess:
        process = context.Process(target=_worker, args=(app, host, port, options), daemon=False)
        process.start()
        return process

    def stop(_signal: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    processes = [start() for _ in range(workers)]
    try:
        while not stopping:
            time.sleep(0.5)
            for index, process in enumerate(processes):
                if not process.is_alive() and not stopping:
                    log.error("worker_exited_restarting", exitcode=process.exitcode)
                    processes[index] = start()
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()  # uvicorn finishes in-flight requests on SIGTERM
        for process in processes:
            process.join(timeout=30)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
