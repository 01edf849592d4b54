"""`python -m services.ingest`: the ingest service, configured from LINEGUARD_* environment variables."""

from __future__ import annotations

import asyncio
import sys

from lineguard.logs import event, get_logger
from lineguard.service import start_service, tune_gc
from services.ingest.service import IngestService
from services.ingest.settings import IngestSettings


def main() -> int:
    settings = start_service(IngestSettings)
    sys.setswitchinterval(0.001)  # delivery callbacks wait less for the GIL behind the MQTT thread
    log = get_logger("services.ingest")
    try:
        service = IngestService(settings)
    except (OSError, ValueError) as exc:  # e.g. an unreadable rules or sources file
        event(log, "ingest_failed_to_start", level=50, error=str(exc))
        return 2
    tune_gc()
    asyncio.run(service.run(install_signals=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
