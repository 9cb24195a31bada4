"""Filling a store to benchmark size through the store's own write path (encryption and index included).

Validation is skipped here — the fixtures are valid by construction and validation is the HTTP edge's job —
so a million resources load in minutes, not hours.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from bench.fixtures import patient, sheet
from services.kit.settings import Settings
from services.share.context import ShareContext
from services.share.store.service import Caller


def seed(settings: Settings, network_id: str, patients: int, heavy: int, sheets_heavy: int, sheets_light: int,
         progress: Callable[[int], None] | None = None, batch: int = 400,
         plaintext: bool = False) -> tuple[list[str], list[str], list[str]]:
    """Create ``patients`` patients; the first ``heavy`` get ``sheets_heavy`` sheets each, the rest
    ``sheets_light``. Returns (patient ids, heavy patient ids, a sample of sheet ids)."""
    ctx = ShareContext.build(settings, plaintext_baseline=plaintext)
    caller = Caller(network_id, "user:bench-seed")
    patient_ids: list[str] = []
    sample: list[str] = []
    written = 0
    session = ctx.db.sessions()
    try:
        for index in range(patients):
            stored = ctx.store.create(session, caller, "Patient", patient(index))
            patient_ids.append(stored.resource_id)
            for day in range(sheets_heavy if index < heavy else sheets_light):
                created = ctx.store.create(session, caller, "QuestionnaireResponse",
                                           sheet(stored.resource_id, "bench-author", day))
                if len(sample) < 20000 and written % 7 == 0:
                    sample.append(created.resource_id)
                written += 1
            written += 1
            if index % batch == batch - 1:
                session.commit()
                if progress:
                    progress(written)
        session.commit()
    finally:
        session.close()
        ctx.db.dispose()
    return patient_ids, patient_ids[:heavy], sample


if __name__ == "__main__":  # a quick speed check: python -m bench.seed
    import os
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        url = os.environ.get("RENKEI_SHARE_DATABASE_URL")
        settings = Settings(data_dir=scratch, **({"share_database_url": url} if url else {}))
        from services.kit.db import make_engine
        from services.kit.migrate import upgrade

        engine = make_engine(settings.resolved_share_database_url)
        upgrade("share", engine)
        engine.dispose()
        start = time.perf_counter()
        seed(settings, "speed", 200, 20, 20, 5)
        print(f"{(200 + 20 * 20 + 180 * 5) / (time.perf_counter() - start):.0f} resources/s")
