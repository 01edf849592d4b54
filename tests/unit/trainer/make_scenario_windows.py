"""Record the scenario suite's closed windows for `lineguard-train prepare/evaluate --windows`:

    .venv/bin/python tests/unit/trainer/make_scenario_windows.py [OUT]     (default var/trainer/windows)

Each file `<scenario>_<start s>.json` is one scheduled window as the advisor's engine closes it (the scenario run
through the simulator's physics and the normalizer's mapping, as in the e2e suite), with the line history
before it. The group of a window is its scenario, so an evaluation can leave a scenario's own exemplars out.
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
from services.advisor.engine import LineState, WindowEngine  # noqa: E402

SCENARIOS = ["normal_run", "oven_zone_overheat", "thermocouple_failure", "mixer_torque_loss", "humidity_rise",
             "conveyor_stop", "cooling_fault", "two_faults_overlap", "oven_zone_drift", "torque_sensor_fault",
             "oven_zone_cold", "humidity_and_cooling", "mixer_speed_sensor_fault", "thermocouple_drift"]


def main(out: Path) -> None:
    plant = load_plant(default_plant_path())
    out.mkdir(parents=True, exist_ok=True)
    for name in SCENARIOS:
        _, records = run_scenario(plant, name)
        engine, state = WindowEngine(), LineState("line1")
        for record in records:
            for due in engine.add_and_advance(state, record.kind, record.value):
                if due.trigger != "scheduled":
                    continue
                start_s = (due.window_start - RUN_START_MS) // 1000
                path = out / f"{name}_{start_s}.json"
                path.write_text(json.dumps({"group": name, "start_s": start_s, "window": due.window,
                                            "history": due.history}, sort_keys=True))
        print(name, len(list(out.glob(f"{name}_*.json"))))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "var" / "trainer" / "windows")
