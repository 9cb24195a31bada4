"""Servers the store benchmark measures, each started in its own process:

    python bench/servers.py renkei  PORT WORKERS    the real application (encrypted store)
    python bench/servers.py plain   PORT WORKERS    the same application storing plain JSON (the baseline)
    python bench/servers.py bare    PORT WORKERS    a bare FastAPI endpoint inserting the JSON bytes, nothing else

All read their configuration from RENKEI_* variables like `renkei serve` (the bare endpoint only its database
URL), and all are served alike, as `renkei serve --workers N` serves: worker processes (services/serving.py).
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import anyio
import anyio.to_thread
from fastapi import FastAPI, Request, Response
from sqlalchemy import Column, LargeBinary, MetaData, String, Table, select

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.app import create_app
from services.cli import create_keys
from services.kit.db import Database
from services.kit.settings import Settings
from services.serving import serve_workers

BARE_METADATA = MetaData()
BARE_TABLE = Table("bare", BARE_METADATA, Column("id", String(32), primary_key=True), Column("body", LargeBinary))


def bare_app(url: str, db_threads: int) -> FastAPI:
    """The floor: same framework, same driver and pool, same number of database threads as the application
    (RENKEI_DB_THREADS) — no validation, no crypto, no index."""
    table = BARE_TABLE
    database = Database(url)
    app = FastAPI()
    limiters: list[anyio.CapacityLimiter] = []

    @app.post("/fhir/QuestionnaireResponse")
    async def insert(request: Request) -> Response:
        raw = await request.body()
        identifier = uuid.uuid4().hex

        def write() -> None:
            with database.transaction() as session:
                session.execute(table.insert().values(id=identifier, body=raw))

        if not limiters:  # made from the event loop, as the application makes its own
            limiters.append(anyio.CapacityLimiter(db_threads))
        await anyio.to_thread.run_sync(write, limiter=limiters[0])
        return Response(status_code=201, headers={"Location": f"/fhir/QuestionnaireResponse/{identifier}"})

    @app.get("/fhir/QuestionnaireResponse/{identifier}")
    def read(identifier: str) -> Response:
        with database.transaction() as session:
            body = session.scalar(select(table.c.body).where(table.c.id == identifier))
        return Response(body or b"", media_type="application/fhir+json")

    return app


def renkei() -> FastAPI:
    return create_app(Settings())


def plain() -> FastAPI:
    return create_app(Settings(), plaintext_baseline=True)


def bare() -> FastAPI:
    settings = Settings()
    return bare_app(settings.resolved_share_database_url, settings.db_threads)


def main() -> None:
    mode, port, workers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    # What every worker would otherwise race to create: the bare table, or the signing key and key files.
    if mode == "bare":
        database = Database(Settings().resolved_share_database_url)
        BARE_METADATA.create_all(database.engine)
        database.dispose()
    else:
        create_keys(Settings())
    serve_workers(f"bench.servers:{mode}", "127.0.0.1", port, workers, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
