"""No patient data, token or key in any log line: the whole suite writes distinctive planted strings, every log
line of the run is kept, and at the end every line is searched for them (ASVS 5.0 V16.2.5, V14.2.4).

- ``MARKER`` is made once per run (``PLANTEDx7Q`` and random hex). The shared factories put it in the data the
  suite writes: a patient's family name (``FAMILY``), identifier (``identifier()``) and a sheet's free text
  (``NOTE``). Tests that check a name compare with these constants.
- Every log line is kept in one directory per run: in the processes that run tests, structlog's output (teed as it
  goes to stdout, where tests may still read it) and the stdlib ``logging`` records (the root logger and uvicorn's
  own loggers, which do not propagate); the servers tests start as processes of their own write their output to
  ``log_path(name)`` in that directory, or register the file they write with ``register_log(path)``.
- ``register_secret(kind, value)``: tokens, refresh tokens, passwords and keys the helpers obtain or use; each is
  searched for whole and by its last 24 characters.
- At the end, the process that made the directory (the xdist controller, or the only process without xdist) scans
  every file once every worker has finished; a hit fails the run (exit status 1) naming the file, the line and what
  was found, never the secret itself.

``RENKEI_TEST_LOG_SCAN=0`` turns the capture and the check off (a quick local loop); they are on otherwise.

PYTEST_DONT_REWRITE: tests/infra.py imports this module before pytest loads it as a plugin; it holds no test
assertions, so pytest need not rewrite it (and would warn that it cannot).
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
import tempfile
import threading
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import pytest

# Made by the first process that imports this module (pytest itself, or the xdist controller before it starts
# its workers); workers and their children inherit both through the environment.
_MARKER_VAR, _DIR_VAR, _OWNER_VAR = "RENKEI_TEST_PLANTED", "RENKEI_TEST_LOG_DIR", "RENKEI_TEST_LOG_OWNER"
if _MARKER_VAR not in os.environ or _DIR_VAR not in os.environ:
    os.environ[_MARKER_VAR] = "PLANTEDx7Q" + secrets.token_hex(5).upper()
    os.environ[_DIR_VAR] = tempfile.mkdtemp(prefix="renkei-test-logs-")
    os.environ[_OWNER_VAR] = str(os.getpid())

MARKER = os.environ[_MARKER_VAR]
LOG_DIR = Path(os.environ[_DIR_VAR])
ENABLED = os.environ.get("RENKEI_TEST_LOG_SCAN", "1").lower() not in ("0", "false", "no", "off")
FAMILY = f"山田{MARKER}"  # a patient's family name as the factories write it
NOTE = f"退院後の療養について（{MARKER}）"  # a sheet's free text as the factories write it
TAIL = 24  # a secret is also searched for by its last characters (a log could cut the start of a token)
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "main")
_lock = threading.Lock()
_registered: set[str] = set()


def identifier() -> str:
    """A patient identifier value (a card number, say) carrying the marker."""
    return f"{MARKER}-{uuid.uuid4().hex[:10]}"


def register_secret(kind: str, value: str | None) -> None:
    """Search the logs for ``value`` (labelled ``kind`` in a report; the value itself is never printed)."""
    if not ENABLED or not value or value in _registered:
        return
    with _lock:
        _registered.add(value)
        with (LOG_DIR / f"secrets-{_WORKER}-{os.getpid()}.tsv").open("a", encoding="utf-8") as file:
            file.write(f"{kind}\t{value}\n")


def log_path(name: str) -> Path:
    """A fresh file in the run's log directory for a process's output (scanned at the end)."""
    return LOG_DIR / f"{_WORKER}-{name}-{uuid.uuid4().hex[:8]}.log"


def register_log(path: Path) -> None:
    """Scan ``path`` too at the end (a log a process writes elsewhere; it must still exist then)."""
    if not ENABLED:
        return
    with _lock, (LOG_DIR / f"files-{_WORKER}-{os.getpid()}.txt").open("a", encoding="utf-8") as file:
        file.write(f"{path}\n")


def keep_logs(directory: Path, name: str) -> int:
    """Copy the ``*.log`` files of a directory about to be removed into the run's log directory; how many."""
    if not ENABLED:
        return 0
    kept = 0
    for path in sorted(directory.glob("*.log")):
        shutil.copyfile(path, log_path(f"{name}-{path.stem}"))
        kept += 1
    return kept


# --- the scan -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hit:
    path: Path
    line: int
    what: str  # the label: never the secret
    excerpt: str  # the line, the secret replaced by its label


@dataclass
class Scanned:
    files: int = 0
    lines: int = 0
    bytes: int = 0


_RUN = re.compile(rb"[A-Za-z0-9_-]{%d,}" % TAIL)  # where a token's tail can be: base64url (JWT, token_urlsafe)
_TOKEN_CHARS = re.compile(r"[A-Za-z0-9_-]+")


def scan(paths: Iterable[Path], needles: dict[str, str], scanned: Scanned | None = None) -> list[Hit]:
    """Every line of ``paths`` holding a needle (value → label), or a needle's last 24 characters.

    Plain needles are searched with ``bytes.find``; the tails of token-like needles are looked up window by window
    in runs of base64url characters, so thousands of registered tokens cost one pass over the logs."""
    plain: dict[bytes, str] = {}
    tails: dict[bytes, str] = {}
    for value, label in needles.items():
        if len(value) > TAIL and _TOKEN_CHARS.fullmatch(value):
            tails[value[-TAIL:].encode()] = label  # the whole token contains its tail
        else:
            plain[value.encode()] = label
            if len(value) > TAIL:
                plain[value[-TAIL:].encode()] = label
    scanned = scanned if scanned is not None else Scanned()
    hits: list[Hit] = []
    for path in paths:
        try:
            content = path.read_bytes()
        except OSError:
            continue
        scanned.files += 1
        scanned.bytes += len(content)
        scanned.lines += content.count(b"\n") + (1 if content and not content.endswith(b"\n") else 0)
        found: dict[int, tuple[str, bytes]] = {}  # offset → (label, needle)
        for needle, label in plain.items():
            start = content.find(needle)
            while start != -1:
                found.setdefault(start, (label, needle))
                start = content.find(needle, start + 1)
        if tails:
            for run in _RUN.finditer(content):
                text = run.group(0)
                for offset in range(len(text) - TAIL + 1):
                    window = text[offset : offset + TAIL]
                    if window in tails:
                        found.setdefault(run.start() + offset, (tails[window], window))
        for offset, (label, needle) in sorted(found.items()):
            line_start = content.rfind(b"\n", 0, offset) + 1
            line_end = content.find(b"\n", offset)
            line = content[line_start : line_end if line_end != -1 else len(content)]
            excerpt = line.replace(needle, f"<{label}>".encode()).decode("utf-8", "replace")
            hits.append(Hit(path, content.count(b"\n", 0, offset) + 1, label, excerpt[:300]))
    return hits


def needles(log_dir: Path = LOG_DIR, marker: str = MARKER) -> dict[str, str]:
    """The planted marker and every secret the run's processes registered, value → label."""
    found = {marker: "planted patient marker"}
    for registry in sorted(log_dir.glob("secrets-*.tsv")):
        for row in registry.read_text(encoding="utf-8").splitlines():
            kind, _, value = row.partition("\t")
            if value:
                found.setdefault(value, kind)
    return found


def log_files(log_dir: Path = LOG_DIR) -> list[Path]:
    """Every log of the run: the files in its directory and those registered elsewhere."""
    files = sorted(log_dir.glob("*.log"))
    for registry in sorted(log_dir.glob("files-*.txt")):
        files += [Path(line) for line in registry.read_text(encoding="utf-8").splitlines() if line]
    return list(dict.fromkeys(files))


# --- the capture in a process that runs tests ----------------------------------------------------------------------


class _Sink:
    """One file every captured line is appended to, unbuffered (a line is on disk once written)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file: BinaryIO = path.open("ab", buffering=0)
        self.lock = threading.Lock()

    def write(self, line: bytes) -> None:
        with self.lock:
            self.file.write(line if line.endswith(b"\n") else line + b"\n")


class _TeeLogger:
    """structlog's logger: the line goes where the service sends it (stdout) and to the run's file."""

    def __init__(self, inner: Any, sink: _Sink) -> None:
        self._inner, self._sink = inner, sink

    def msg(self, message: bytes | str) -> None:
        self._inner.msg(message)
        self._sink.write(message if isinstance(message, bytes) else message.encode())

    log = debug = info = warn = warning = err = error = exception = fatal = critical = msg


class _TeeFactory:
    def __init__(self, inner: Any, sink: _Sink) -> None:
        self.inner, self.sink = inner, sink

    def __call__(self, *args: Any) -> _TeeLogger:
        return _TeeLogger(self.inner(*args), self.sink)


class _Tap(logging.Filter):
    """On uvicorn's loggers (they do not propagate, and uvicorn's dictConfig replaces their handlers at every
    server start but keeps filters): hand each record to the run's handler too, and let it through."""

    def __init__(self, handler: logging.Handler) -> None:
        super().__init__()
        self.handler = handler

    def filter(self, record: logging.LogRecord) -> bool:
        self.handler.handle(record)
        return True


UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")


def _capture() -> None:
    import structlog

    from services.kit.logging import configure_logging

    configure_logging()  # the services' configuration; create_app's later call keeps it
    sink = _Sink(LOG_DIR / f"structlog-{_WORKER}-{os.getpid()}.log")
    factory = structlog.get_config()["logger_factory"]
    if not isinstance(factory, _TeeFactory):
        structlog.configure(logger_factory=_TeeFactory(factory, sink))
    handler = logging.FileHandler(LOG_DIR / f"logging-{_WORKER}-{os.getpid()}.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logging.getLogger().addHandler(handler)
    tap = _Tap(handler)
    for name in UVICORN_LOGGERS:
        logging.getLogger(name).addFilter(tap)


# --- the hooks ------------------------------------------------------------------------------------------------------


def _is_owner() -> bool:
    return os.environ.get(_OWNER_VAR) == str(os.getpid())


@pytest.hookimpl(trylast=True)  # after xdist's, which registers "dsession" in the controller
def pytest_configure(config: pytest.Config) -> None:
    if ENABLED and not config.pluginmanager.hasplugin("dsession"):  # tests run here (not an xdist controller)
        _capture()


_result: dict[str, Any] = {}


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not _is_owner():
        return
    if not ENABLED:
        shutil.rmtree(LOG_DIR, ignore_errors=True)
        return
    scanned = Scanned()
    found = needles()
    hits = scan(log_files(), found, scanned)
    _result.update(hits=hits, scanned=scanned, needles=len(found))
    if hits:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    else:
        shutil.rmtree(LOG_DIR, ignore_errors=True)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _result:
        return
    hits: list[Hit] = _result["hits"]
    scanned: Scanned = _result["scanned"]
    figures = (f"{scanned.files} log files, {scanned.lines:,} lines ({scanned.bytes / 1e6:.1f} MB) searched for "
               f"the planted marker {MARKER} and {_result['needles'] - 1:,} registered secrets")
    if not hits:
        terminalreporter.write_line(f"log scan: {figures}: none found")
        return
    terminalreporter.write_sep("=", f"log scan FAILED: {len(hits)} log lines hold planted patient data or a secret",
                               red=True, bold=True)
    for hit in hits[:50]:
        terminalreporter.write_line(f"{hit.path}:{hit.line}: {hit.what}: {hit.excerpt}")
    if len(hits) > 50:
        terminalreporter.write_line(f"… and {len(hits) - 50} more")
    terminalreporter.write_line(f"{figures}; the logs are kept in {LOG_DIR}", red=True)
