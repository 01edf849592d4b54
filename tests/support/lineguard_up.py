"""`lineguard up` as the end-to-end tests run it: in a session of its own (so Ctrl-C reaches only it), its output
copied to a log file, and `ready` set once it prints `ready in`."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from polling import wait_for


class LineguardUp:
    def __init__(self, args: list[str], log_path: Path, env: dict[str, str]) -> None:
        self.log_path = log_path
        self._log = open(log_path, "w")  # noqa: SIM115 - closed by stop()
        self.proc = subprocess.Popen([sys.executable, "-m", "lineguard.cli", "up", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True, env={**os.environ, **env})
        self.ready = threading.Event()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            self._log.write(line)
            self._log.flush()
            if line.startswith("lineguard | ready in"):
                self.ready.set()

    def wait_ready(self, timeout: float = 180) -> bool:
        """True once it is ready; False if it exited or `timeout` passed first."""
        return wait_for(lambda: self.ready.is_set() or self.proc.poll() is not None, timeout, 0.2) \
            and self.ready.is_set()

    def tail(self, chars: int = 5000) -> str:
        return self.log_path.read_text()[-chars:]

    def stop(self, timeout: float, kill_also: Callable[[], Iterable[int]] = tuple) -> int | None:
        """Ctrl-C (SIGINT: the supervisor stops every child) and wait; after `timeout`, SIGKILL its session and
        the pids `kill_also()` gives then (children in sessions of their own), and return None. Returns its exit code otherwise."""
        self.proc.send_signal(signal.SIGINT)
        try:
            code: int | None = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            for pid in kill_also():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.proc.wait(10)
            code = None
        time.sleep(0.2)  # the pump's last lines
        self._log.close()
        return code
