"""Servers the store benchmark measures, each started in its own process:

    python bench/servers.py renkei  PORT            the real application (encrypted store)
    python bench/servers.py plain   PORT            the same application storing plain JSON (the baseline)
    python bench/servers.py bare    PORT DB_URL     a bare FastAPI endpoint inserting the JSON bytes, nothing else

The first two read their configuration from RENKEI_* variables like `renkei serve`.
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import uvicorn
from fastapi import FastAPI, Request, Response
from sqlalchemy import Column, LargeBinary, MetaData, String, Table, select
from starlette.concurrency import run_in_threadpool

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.app import create_app
from services.kit.db import Database
from services.kit.settings import Settings


def bare_app(url: str) -> FastAPI:
    """The floor: same framework, same driver and pool, same thread pool — no validation, no crypto, no index."""
    metadata = MetaData()
    table = Table("bare", metadata, Column("id", String(32), primary_key=True), Column("body", LargeBinary))
    database = Database(url)
    metadata.create_all(database.engine)
    app = FastAPI()

    @app.post("/fhir/QuestionnaireResponse")
    async def insert(request: Request) -> Response:
        raw = await request.body()
        identifier = uuid.uuid4().hex

        def write() -> None:
            with database.transaction() as session:
                session.execute(table.insert().values(id=identifier, body=raw))

        await run_in_threadpool(write)
        return Response(status_code=201, headers={"Location": f"/fhir/QuestionnaireResponse/{identifier}"})

    @app.get("/fhir/QuestionnaireResponse/{identifier}")
    def read(identifier: str) -> Response:
        with database.transaction() as session:
            body = session.scalar(select(table.c.body).where(table.c.id == identifier))
        return Response(body or b"", media_type="application/fhir+json")

    return app


def main() -> None:
    mode, port = sys.argv[1], int(sys.argv[2])
    if mode == "bare":
        app = bare_app(sys.argv[3])
    else:
        app = create_app(Settings(public_url=f"http://127.0.0.1:{port}"), plaintext_baseline=mode == "plain")
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
