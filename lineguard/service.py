"""What every service's `__main__` does first: read its settings, then set up logs and tracing."""

from __future__ import annotations

import gc
import sys
from typing import TypeVar

from lineguard.logs import event, get_logger, setup_logging
from lineguard.settings import Settings, SettingsError
from lineguard.telemetry import setup_tracing

S = TypeVar("S", bound=Settings)


def start_service(settings_cls: type[S]) -> S:
    """Read `settings_cls` from the environment; on an invalid value print which variable and why, and exit 2.

    Then route logs to JSON lines, install the tracer, and log the (redacted) settings the service runs with.
    """
    try:
        settings = settings_cls.from_env()
    except SettingsError as exc:
        name = getattr(settings_cls, "__name__", "service").removesuffix("Settings").lower() or "service"
        print(f"{name}: invalid settings: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    setup_logging(settings.service_name, settings.log_level)
    setup_tracing(settings.service_name)
    event(get_logger("lineguard.service"), "service_starting", service=settings.service_name,
          settings=settings.redacted())
    return settings


def tune_gc() -> None:
    """Call once start-up is done (plant model, schemas, models loaded). A streaming hot path allocates many
    short-lived dicts while batches in flight keep thousands alive: collect the young generation less often,
    and move what start-up built out of the collector's way for good."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
