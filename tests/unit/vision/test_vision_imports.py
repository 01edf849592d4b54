"""The running vision service never imports the simulator or the offline training tools (its container has neither)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]

RUNNING = ["services.vision.__main__", "services.vision.service", "services.vision.detector",
           "services.vision.features", "services.vision.bedrock", "services.vision.imaging",
           "services.vision.inspections", "services.vision.store", "services.vision.settings"]


def test_the_running_service_imports_no_simulator_and_no_training_tools():
    probe = (
        "import importlib, sys\n"
        f"for name in {RUNNING!r}:\n"
        "    importlib.import_module(name)\n"
        "from services.vision.detector import LocalDetector\n"
        "LocalDetector()\n"
        "bad = sorted(m for m in sys.modules if m == 'simulator' or m.startswith(('simulator.', "
        "'services.vision.training')))\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"the running service imports {result.stdout.strip()} {result.stderr[-2000:]}"


def test_no_module_of_the_service_names_the_simulator():
    # a lazy import inside a function would slip past the probe above: the source must not name it at all
    for path in (ROOT / "services" / "vision").glob("*.py"):
        if path.name in ("train.py", "evaluate.py"):  # command shims that hand over to training/
            continue
        text = path.read_text()
        assert "from simulator" not in text and "import simulator" not in text, path
        assert "services.vision.training" not in text, path
