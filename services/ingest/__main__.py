"""`python -m services.ingest`: the ingest service, configured from LINEGUARD_* environment variables."""

from __future__ import annotations

import sys

from lineguard.service import Runtime, Service, StartupError, run_service
from services.ingest.service import IngestService
from services.ingest.settings import IngestSettings


def build(rt: Runtime[IngestSettings]) -> Service:
    sys.setswitchinterval(0.001)  # delivery callbacks wait less for the GIL behind the MQTT thread
    try:
        service = IngestService(rt.settings, runtime=rt)
    except (OSError, ValueError) as exc:  # e.g. an unreadable rules or sources file
        raise StartupError(str(exc)) from exc
    return service.as_service()


def main() -> None:
    run_service(IngestSettings, build)


if __name__ == "__main__":
    main()
