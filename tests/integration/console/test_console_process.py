"""The console as a process: it serves while Kafka and every backend are down, and SIGTERM stops it promptly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
from polling import wait_for

from lineguard.embedded import free_port

pytestmark = pytest.mark.integration


def test_sigterm_stops_the_console_even_with_kafka_down() -> None:
    port = free_port()
    dead = f"http://127.0.0.1:{free_port()}"
    env = {**os.environ, "LINEGUARD_HTTP_PORT": str(port), "LINEGUARD_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
           "LINEGUARD_NORMALIZER_URL": dead, "LINEGUARD_ADVISOR_URL": dead, "LINEGUARD_ACTUATOR_URL": dead,
           "LINEGUARD_NOTIFIER_URL": dead, "LINEGUARD_VOICE_STT": "off", "LINEGUARD_ENV_FILE": ""}
    proc = subprocess.Popen([sys.executable, "-m", "services.console"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        def readyz() -> dict | None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as exc:  # 503 while not ready: still an answer
                return json.loads(exc.read())
            except OSError:
                return None

        assert wait_for(readyz, timeout=30), "the console did not serve"
        # not ready, and it says why
        assert wait_for(lambda: "Kafka unreachable" in (readyz() or {}).get("why_not_ready", ""), timeout=20), readyz()
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        out, _ = proc.communicate(timeout=20)
        assert proc.returncode == 0, out[-2000:]
        assert time.monotonic() - started < 15
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
