"""`python -m services.normalizer` as a child process, for the normalizer's integration tests."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from lineguard.embedded import free_port
from lineguard.settings import Settings

ROOT = Path(__file__).resolve().parents[3]
API_TOKEN = "integration-test-token"


class NormalizerProcess:
    """The service as a child process, with its HTTP API at 127.0.0.1:<port> (bearer token API_TOKEN)."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.port = int(env["LINEGUARD_HTTP_PORT"])
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        log = open(self.log_path, "a")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen([sys.executable, "-m", "services.normalizer"], cwd=ROOT, env=self.env,
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()

    def request(self, path: str, headers: dict[str, str] | None = None, method: str = "GET",
                token: str | None = API_TOKEN) -> tuple[int, dict[str, str], bytes]:
        """(status, headers, body); status 0 when the server cannot be reached."""
        sent = dict(headers or {})
        if token is not None and path.startswith("/ngsi-ld/"):
            sent.setdefault("Authorization", f"Bearer {token}")
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", headers=sent, method=method)
        try:
            with urllib.request.urlopen(req, timeout=10) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()
        except OSError:
            return 0, {}, b""

    def get(self, path: str) -> tuple[int, str]:
        status, _, body = self.request(path)
        return status, body.decode()

    def get_json(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
        status, got, body = self.request(path, headers)
        return status, got, json.loads(body) if body else None

    def wait_ready(self, timeout: float = 40.0) -> None:
        deadline = time.monotonic() + timeout
        while self.get("/readyz")[0] != 200:
            assert self.proc is not None and self.proc.poll() is None, f"normalizer exited:\n{self.tail()}"
            assert time.monotonic() < deadline, f"normalizer not ready within {timeout}s:\n{self.tail()}"
            time.sleep(0.1)

    def records_in(self) -> float:
        _, body = self.get("/metrics")
        return sum(float(v) for v in re.findall(r'^lineguard_normalizer_records_in_total\{[^}]*\} (\S+)$', body,
                                                re.MULTILINE))

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)

    def ensure_stopped(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def tail(self) -> str:
        return self.log_path.read_text()[-3000:] if self.log_path.exists() else ""


def normalizer_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LINEGUARD_")}
    env.update({
        "LINEGUARD_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "LINEGUARD_TOPIC_PREFIX": settings.topic_prefix,
        "LINEGUARD_HTTP_PORT": str(free_port()),
        "LINEGUARD_HTTP_HOST": "127.0.0.1",
        "LINEGUARD_KAFKA_SESSION_TIMEOUT_MS": "3000",
        "LINEGUARD_BATCH_SIZE": "200",
        "LINEGUARD_LAKE_MAX_ROWS": "150",
        "LINEGUARD_LAKE_ROTATE_INTERVAL_S": "120",
        "LINEGUARD_LOG_LEVEL": "INFO",
        "LINEGUARD_NORMALIZER_API_TOKEN": API_TOKEN,
        **extra,
    })
    return env
