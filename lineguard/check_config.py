"""Check mode: `python -m services.<name> --check-config` (or `LINEGUARD_CHECK_CONFIG=1`).

The service starts as it would in its pod, to the point where its settings are parsed and everything is built:
its Kafka clients (through `lineguard.kafka.clients`, so with the security settings and the MSK IAM signer),
the Avro serde (with its schema-registry client), boto3 clients, model providers, the HTTP app and its routes.
Then it prints one JSON line, `config_checked`, saying what was built (security protocol, SASL mechanism,
CA file, registry or not, ...), closes what it built and exits 0. It binds no port, starts no loop or task,
runs no restore, and waits on nothing remote: librdkafka clients connect in the background and are closed at
once; an MSK IAM token is not signed (the signer must be importable); a registry client fetches nothing.
A settings error, a missing file or a missing package exits 2 with the error.

An SRE pre-flight: run it as an initContainer with the pod's own env, or in CI against a rendered overlay
(tests/integration/deploy/test_overlay_start.py does that for every shipped overlay).
"""

from __future__ import annotations

import gc
import inspect
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from logging import CRITICAL
from typing import TYPE_CHECKING, Any

from lineguard.logs import event, get_logger
from lineguard.settings import SettingsError

if TYPE_CHECKING:
    from lineguard.service import Runtime, Service

CHECK_FLAG = "--check-config"
CHECK_ENV = "LINEGUARD_CHECK_CONFIG"

log = get_logger("lineguard.check_config")


def check_requested(argv: Sequence[str] | None = None) -> bool:
    args = sys.argv[1:] if argv is None else argv
    return CHECK_FLAG in args or os.environ.get(CHECK_ENV, "").strip().lower() in ("1", "true", "yes")


def enable() -> None:
    """Before anything is built: Kafka clients are recorded and MSK IAM tokens are not signed."""
    from lineguard.kafka import clients

    clients.check_mode_clients = []


async def check(rt: Runtime[Any], build: Callable[[Runtime[Any]], Service | Awaitable[Service]]) -> int:
    """Build the service, log what was built, close it; the exit code (0, or 2 with the error)."""
    from lineguard.avro import AvroSerde
    from lineguard.health import create_app
    from lineguard.kafka import clients
    from lineguard.service import EXIT_CONFIG, EXIT_OK, StartupError, _close_producers

    existing = [o for o in gc.get_objects() if isinstance(o, AvroSerde)]  # kept alive: their ids stay theirs
    service = None
    try:
        service = build(rt)
        if inspect.isawaitable(service):
            service = await service
        app = create_app(rt.health, client_max_size=service.client_max_size)
        if service.routes is not None:
            service.routes(app)
        # Every serde the build made, wherever it keeps it (a loop, a producer, a service's own encoder): a
        # one-off look through the collector's objects, cheap enough for a process that exits next.
        known = {id(o) for o in existing}
        serdes = [o for o in gc.get_objects() if isinstance(o, AvroSerde) and id(o) not in known]
        summary = describe(rt, service, app, clients.check_mode_clients or [], serdes)
        extra = getattr(service, "describe", None)
        if extra is not None:
            summary.update(extra())
    except (StartupError, SettingsError) as exc:
        event(log, "config_check_failed", level=CRITICAL, service=rt.settings.service_name, error=str(exc))
        return EXIT_CONFIG
    except Exception as exc:  # noqa: BLE001 - a missing package, an unreadable file: the check's answer
        event(log, "config_check_failed", level=CRITICAL, service=rt.settings.service_name,
              error=f"{type(exc).__name__}: {exc}")
        return EXIT_CONFIG
    finally:
        loop = getattr(service, "loop", None)
        if loop is not None:
            loop.consumer.close()  # never subscribed: closes without a group to leave
            if getattr(loop, "producer", None) is not None and loop.producer not in rt._producers:
                loop.producer.close(1.0)  # nothing was produced: nothing to flush
        await _close_producers(rt)
    event(log, "config_checked", **summary)
    return EXIT_OK


def describe(rt: Runtime[Any], service: Service, app: Any, built: list[dict[str, Any]],
             serdes: list[Any]) -> dict[str, Any]:
    settings = rt.settings
    loop = service.loop
    kafka: dict[str, Any] = {"bootstrap": settings.kafka_bootstrap, "clients": {}}
    for client in built:
        kafka["clients"][client["kind"]] = kafka["clients"].get(client["kind"], 0) + 1
    for key in ("security_protocol", "sasl_mechanism", "ssl_ca_location", "msk_iam"):
        values = sorted({c[key] for c in built if c[key] is not None}, key=str)
        if values:  # every client of a service is built alike; several values would be a bug worth seeing
            kafka[key] = values[0] if len(values) == 1 else values
    return {
        "service": settings.service_name,
        "kafka": kafka,
        "wire_format": sorted({s.wire_format for s in serdes}),
        "schema_registry": any(s.wire_format == "confluent" for s in serdes),
        "consumer_group": getattr(loop, "group_id", None),
        "topics": sorted(getattr(loop, "topics", None) or []),
        "tasks": [getattr(t, "__name__", "task") for t in service.tasks],
        "routes": len(app.router.routes()),
        "restore": service.restore is not None,
    }
