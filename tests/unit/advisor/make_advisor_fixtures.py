"""Regenerate the window fixtures from the simulator: `python tests/unit/advisor/make_advisor_fixtures.py`.

Each fixture is one closed five-minute window of a scenario (as the advisor's changelog stores it, without the
dedup ids) plus the line history before it, produced by the in-process scenario driver of the e2e suite.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "support"))

from scenario_driver import RUN_START_MS, run_scenario  # noqa: E402

from lineguard.plant import default_plant_path, load_plant  # noqa: E402
from services.advisor.window import LineHistory, LineWindow, window_bounds  # noqa: E402

# scenario -> window starts (seconds into the run) to keep
WANTED = {
    "normal_run": [900],
    "oven_zone_overheat": [300, 900],
    "thermocouple_failure": [300, 900],
    "mixer_torque_loss": [300, 900],
    "humidity_rise": [900],
    "conveyor_stop": [600],
    "cooling_fault": [900],
    "two_faults_overlap": [1200],
    "torque_sensor_fault": [900],
    "oven_zone_drift": [600],
}


def main() -> None:
    plant = load_plant(default_plant_path())
    out_dir = Path(__file__).parent / "fixtures"
    for name, starts in WANTED.items():
        _, records = run_scenario(plant, name, duration_s=max(starts) + 300)
        windows: dict[int, LineWindow] = {}
        for record in records:
            start, end = window_bounds(record.at_ms, 300_000)
            window = windows.get(start) or windows.setdefault(start, LineWindow("line1", start, end))
            window.add(record.kind, record.value)
        history = LineHistory()
        for start in sorted(windows):
            offset_s = (start - RUN_START_MS) // 1000
            if offset_s in starts:
                doc = windows[start].to_dict()
                doc["seen_ids"] = []
                path = out_dir / f"{name}_{offset_s}.json"
                path.write_text(json.dumps({"window": doc, "history": history.to_dict()}, indent=None,
                                           sort_keys=True))
                print(path, path.stat().st_size)
            history.update(windows[start])


if __name__ == "__main__":
    main()
