"""Shared helpers for the benchmarks: a real server in its own process, and honest statistics."""

from __future__ import annotations

import importlib.util
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def client_tls(base: str, cafile: str | None) -> ssl.SSLContext | None:
    """The TLS context a load client speaks to ``base`` with: None for http; for https (nginx in front,
    bench/fronted.py) trusting ``cafile``, the topology's self-signed certificate."""
    return ssl.create_default_context(cafile=cafile) if base.startswith("https://") else None


def descendants(pid: int) -> list[int]:
    """Every live process under ``pid``."""
    found: list[int] = []
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return found  # ended meanwhile
    for child in children:
        found += [int(child), *descendants(int(child))]
    return found


def cpu_seconds(pid: int) -> float:
    """CPU time (user and system) of a process and of every process under it, live or ended: an ended child's
    time is in its parent's "children" fields once the parent has reaped it (a PostgreSQL backend's, say)."""
    total = 0.0
    for current in [pid, *descendants(pid)]:
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended between the listing and the read
        total += sum(int(value) for value in fields[11:15]) / os.sysconf("SC_CLK_TCK")
    return total


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def summary(samples_seconds: list[float]) -> dict[str, float]:
    """Latency figures in milliseconds."""
    ms = [s * 1000 for s in samples_seconds]
    return {"n": len(ms), "p50_ms": statistics.median(ms), "p90_ms": percentile(ms, 0.90),
            "p99_ms": percentile(ms, 0.99), "mean_ms": statistics.fmean(ms)}


@contextmanager
def server_process(env: dict[str, str] | None = None, bootstrap_file: Path | None = None) -> Iterator[str]:
    """`renkei serve` in a child process on a free port with a fresh data directory; yields its base URL."""
    with tempfile.TemporaryDirectory(prefix="renkei-bench-") as data_dir:
        port = free_port()
        environment = {**os.environ, "RENKEI_DATA_DIR": data_dir, **(env or {})}
        environment.pop("RENKEI_PUBLIC_URL", None)
        if bootstrap_file is not None:
            subprocess.run([sys.executable, "-m", "services.cli", "admin", "bootstrap", str(bootstrap_file)],
                           env=environment, check=True, capture_output=True)
        process = subprocess.Popen([sys.executable, "-m", "services.cli", "serve", "--port", str(port)],
                                   env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("server did not start")
                time.sleep(0.2)
            yield base
        finally:
            process.terminate()
            process.wait(timeout=20)


def load_topology() -> ModuleType:
    """scripts/topology.py as a module (scripts/ is no package)."""
    if "renkei_topology" in sys.modules:
        return sys.modules["renkei_topology"]
    path = Path(__file__).resolve().parents[1] / "scripts" / "topology.py"
    spec = importlib.util.spec_from_file_location("renkei_topology", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["renkei_topology"] = module
    spec.loader.exec_module(module)
    return module
