"""Fixtures of the ingest integration tests: a private Tansu broker that a test may pause (SIGSTOP) and resume,
and ingest settings on the shared broker with a unique topic prefix."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from lineguard.catalog import admin_client, bootstrap_topics, load_catalog, wait_for_broker
from lineguard.embedded import free_port, start_listening, tansu_command
from services.ingest.settings import IngestSettings


@dataclass
class PausableBroker:
    bootstrap: str
    proc: subprocess.Popen

    def pause(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)


@pytest.fixture
def pausable_kafka() -> Iterator[PausableBroker]:
    port = free_port()
    log = tempfile.NamedTemporaryFile(prefix="tansu-ingest-", suffix=".log", delete=False).name  # noqa: SIM115
    proc = start_listening(tansu_command(port), port, "tansu", log_path=log)
    bootstrap = f"127.0.0.1:{port}"
    wait_for_broker(bootstrap, timeout=20)
    broker = PausableBroker(bootstrap, proc)
    yield broker
    broker.resume()
    proc.kill()  # memory storage: nothing to shut down cleanly
    proc.wait()


@pytest.fixture
def ingest_settings(kafka_bootstrap: str, tmp_path_factory) -> Callable[..., IngestSettings]:
    """IngestSettings on the shared broker (or `kafka_bootstrap=` another), topics created under a fresh prefix,
    the webhook spool in a fresh directory."""

    def make(**overrides: object) -> IngestSettings:
        values = {"kafka_bootstrap": kafka_bootstrap, "topic_prefix": f"t{uuid.uuid4().hex[:8]}.",
                  "kafka_session_timeout_ms": 6000, "http_port": 0, "instance_id": "ingest-test",
                  "sparkplug_enabled": False, "webhook_spool_dir": tmp_path_factory.mktemp("spool"), **overrides}
        settings = IngestSettings.from_env(environ={}, **values)
        bootstrap_topics(admin_client(settings.kafka_bootstrap), load_catalog(settings.schemas_dir),
                         settings.topic_prefix)
        return settings

    return make
