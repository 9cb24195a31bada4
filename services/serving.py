"""Serving on several CPU cores: worker processes, each accepting connections on its own SO_REUSEPORT socket.

A Python process uses about one core. uvicorn's own ``--workers`` shares one listening socket between its
workers, and the worker that wakes first accepts every waiting connection at once: with keep-alive connections
(tablets, a reverse proxy's upstream pool) one worker ends up with all of them while the others idle — measured
here as one worker at 100% CPU and the other at 0%. With a socket per worker and SO_REUSEPORT, the kernel spreads
new connections across the workers.

The parent only supervises: it restarts a worker that dies and stops them all on SIGTERM or SIGINT.

Metrics: the workers write their Prometheus values to files in ``PROMETHEUS_MULTIPROC_DIR`` and ``/metrics`` adds
them up (services/kit/metrics.py). Unless the variable is set, the supervisor makes a fresh directory for the run
and removes it at the end; a directory given is emptied of an earlier run's files first.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
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
# The protocol-level pings of the server are off too: the application's heartbeats (ping frames every
# RENKEI_WS_HEARTBEAT_SECONDS, a silent client dropped after two) find dead connections, and each protocol ping
# timer costs every connection memory.
WEBSOCKET_OPTIONS: dict[str, Any] = {"ws_per_message_deflate": False, "ws_ping_interval": None}


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
    metrics_dir = _metrics_directory()
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
                    _worker_dead(process.pid)
                    processes[index] = start()
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()  # uvicorn finishes in-flight requests on SIGTERM
        for process in processes:
            process.join(timeout=30)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


_METRICS_ENV = "PROMETHEUS_MULTIPROC_DIR"


def _metrics_directory() -> str | None:
    """Set up the workers' shared metrics directory (inherited through the environment); the path, if this run
    made it (and must remove it)."""
    given = os.environ.get(_METRICS_ENV)
    if not given:
        made = tempfile.mkdtemp(prefix="renkei-metrics-")
        os.environ[_METRICS_ENV] = made
        return made
    os.makedirs(given, exist_ok=True)
    for name in os.listdir(given):  # an earlier run's values would be added to this one's
        if name.endswith(".db") and name.split("_", 1)[0] in ("counter", "gauge", "histogram", "summary"):
            os.remove(os.path.join(given, name))
    return None


def _worker_dead(pid: int | None) -> None:
    """A dead worker's live gauges (open WebSockets, hub lag) stop counting."""
    if pid is None:
        return
    try:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
    except Exception as error:
        log.warning("metrics_cleanup_failed", error=type(error).__name__)
