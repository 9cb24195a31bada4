"""Servers the store benchmark measures, each started in its own process:

    python bench/servers.py renkei  PORT WORKERS    the real application (encrypted store)
    python bench/servers.py plain   PORT WORKERS    the same application storing plain JSON (the baseline)
    python bench/servers.py bare    PORT WORKERS    a bare FastAPI endpoint inserting the JSON bytes, nothing else
    python bench/servers.py unchecked PORT WORKERS  the real application with access checks and audit off
    python bench/servers.py pushbare PORT 1         bench/push.py's floor: insert and fan out in-process

All read their configuration from RENKEI_* variables like `renkei serve` (the bare endpoint only its database
URL), and all are served alike, as `renkei serve --workers N` serves: worker processes (services/serving.py)
under a supervisor that imports nothing heavy (its memory counts in the figures too).
"""

# No `from __future__ import annotations`: FastAPI must see the real Request and Response classes of the
# endpoints below, which are imported inside the functions (the supervisor process never imports them).
import functools
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.serving import serve_workers

if TYPE_CHECKING:
    from fastapi import FastAPI
    from sqlalchemy import Table


def bare_app(url: str, db_threads: int) -> "FastAPI":
    """The floor: same framework, same driver and pool, same number of database threads as the application
    (RENKEI_DB_THREADS) — no validation, no crypto, no index."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from fastapi import FastAPI, Request, Response
    from sqlalchemy import select

    from services.kit.db import Database

    table = _bare_table()
    database = Database(url)
    app = FastAPI()
    db_threads_pool = ThreadPoolExecutor(db_threads)  # as services/share/context.py runs database work

    @app.post("/fhir/QuestionnaireResponse")
    async def insert(request: Request) -> Response:
        raw = await request.body()
        identifier = uuid.uuid4().hex

        def write() -> None:
            with database.transaction() as session:
                session.execute(table.insert().values(id=identifier, body=raw))

        await asyncio.get_running_loop().run_in_executor(db_threads_pool, write)
        return Response(status_code=201, headers={"Location": f"/fhir/QuestionnaireResponse/{identifier}"})

    @app.get("/fhir/QuestionnaireResponse/{identifier}")
    def read(identifier: str) -> Response:
        with database.transaction() as session:
            body = session.scalar(select(table.c.body).where(table.c.id == identifier))
        return Response(body or b"", media_type="application/fhir+json")

    return app


@functools.cache
def _bare_table() -> "Table":
    from sqlalchemy import Column, LargeBinary, MetaData, String, Table

    return Table("bare", MetaData(), Column("id", String(32), primary_key=True), Column("body", LargeBinary))


def renkei() -> "FastAPI":
    from services.app import create_app
    from services.kit.settings import Settings

    return create_app(Settings())


def plain() -> "FastAPI":
    from services.app import create_app
    from services.kit.settings import Settings

    return create_app(Settings(), plaintext_baseline=True)


def unchecked() -> "FastAPI":
    from services.app import create_app
    from services.kit.settings import Settings

    return create_app(Settings(), enforce_access=False)


def ruleless() -> "FastAPI":
    """The share service storing sheets as any other resource: no template check, no lifecycle, no scene rules
    (bench/sheets.py's baseline: the bare store create of the same JSON)."""
    from services.app import create_app
    from services.kit.settings import Settings

    return create_app(Settings(), sheet_rules=False)


def bare() -> "FastAPI":
    from services.kit.settings import Settings

    settings = Settings()
    return bare_app(settings.resolved_share_database_url, settings.db_threads)


def pushbare() -> "FastAPI":
    """bench/push.py's floor: the same framework, driver and pool; a POST inserts the JSON and fans a frame out
    in-process to the sockets subscribed to its patient — no token check, no log, no access decision."""
    import asyncio
    import itertools
    from concurrent.futures import ThreadPoolExecutor

    import orjson
    from fastapi import FastAPI, Request, Response, WebSocket
    from starlette.websockets import WebSocketDisconnect

    from services.kit.db import Database
    from services.kit.settings import Settings

    settings = Settings()
    table = _bare_table()
    database = Database(settings.resolved_share_database_url)
    threads = ThreadPoolExecutor(settings.db_threads)
    sockets: dict[str, set[WebSocket]] = {}
    numbers = itertools.count(1)
    app = FastAPI()

    @app.post("/fhir/Communication")
    async def post(request: Request) -> Response:
        raw = await request.body()
        patient = orjson.loads(raw)["subject"]["reference"].removeprefix("Patient/")
        identifier = uuid.uuid4().hex

        def write() -> None:
            with database.transaction() as session:
                session.execute(table.insert().values(id=identifier, body=raw))

        await asyncio.get_running_loop().run_in_executor(threads, write)
        frame = orjson.dumps({"type": "event", "seq": next(numbers), "kind": "created", "patient": patient,
                              "resource": {"type": "Communication", "id": identifier, "version": "1"}}).decode()
        for socket in tuple(sockets.get(patient, ())):
            await socket.send_text(frame)
        return Response(orjson.dumps({"id": identifier}), status_code=201, media_type="application/fhir+json")

    @app.websocket("/ws")
    async def ws(socket: WebSocket) -> None:
        await socket.accept()
        patient = ""
        try:
            while True:
                frame = orjson.loads(await socket.receive_text())
                if frame.get("type") == "auth":
                    await socket.send_text('{"type":"authenticated"}')
                elif frame.get("type") == "subscribe":
                    patient = frame["patient"]
                    sockets.setdefault(patient, set()).add(socket)
                    await socket.send_text('{"type":"subscribed"}')
        except WebSocketDisconnect:
            pass
        finally:
            sockets.get(patient, set()).discard(socket)

    return app


def prepare(mode: str) -> None:
    """What every worker would otherwise race to create: the bare table, or the signing key and key files."""
    from services.kit.settings import Settings

    if mode in ("bare", "pushbare"):
        from services.kit.db import Database

        database = Database(Settings().resolved_share_database_url)
        _bare_table().metadata.create_all(database.engine)
        database.dispose()
    else:
        from services.cli import create_keys

        create_keys(Settings())


def main() -> None:
    mode, port, workers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    serve_workers(f"bench.servers:{mode}", "127.0.0.1", port, workers, prepare=functools.partial(prepare, mode),
                  log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
