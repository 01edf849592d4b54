"""`python -m services.advisor` refuses bad settings with exit status 2 and names the variable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("env, message", [
    ({"LINEGUARD_MODEL_ALIAS": "nope"}, "LINEGUARD_MODEL_ALIAS='nope' is not a known alias"),
    ({"LINEGUARD_MODEL_ALIASES": "{broken"}, "not valid JSON"),
    ({"LINEGUARD_WINDOW_S": "-5"}, "LINEGUARD_WINDOW_S"),
])
def test_advisor_main_refuses_bad_settings(env: dict, message: str) -> None:
    result = subprocess.run([sys.executable, "-m", "services.advisor"], cwd=ROOT, capture_output=True, text=True,
                            timeout=60, env={**os.environ, "LINEGUARD_KAFKA_BOOTSTRAP": "127.0.0.1:1", **env})
    assert result.returncode == 2
    assert message in result.stderr + result.stdout  # settings: stderr; a startup error: the JSON log
