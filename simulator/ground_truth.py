"""The ground truth: an append-only JSON-lines log of what really happened on the simulated line.

One JSON object per line, each with `kind`, `sim_s` (simulated seconds since the run started) and `ts` (the
simulated instant, RFC 3339 UTC). Kinds:

- `run_started`    scenario, seed, speed, line, plant file, start instant
- `fault_started`  / `fault_ended`: the fault (type, machine, zone/attribute, magnitude, start_s, duration_s)
- `setpoint_changed`  machine, parameter, previous, value, source (api, scenario, cli), reason
- `machine_command`   machine, action (start, stop, trip), previous_state, state, source, reason
- `cookie`         item_id, deposited_s, exited_oven_s, defects (sorted list; [] = good), fate
                   (conveyed, diverted), bake_dose_c, dough_torque_nm, dough_moisture_pct, cooling_air_c
- `cookie_detected` item_id, sim_s when the cookie passed under the camera (absent while the detector is stopped)
- `batch_report`   the packaging batch row as written to SFTP
- `run_ended`

The file is opened in append mode and flushed after every step, so tests (and people) can read it while the
simulation runs; nothing is ever rewritten.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Any


class GroundTruthLog:
    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path else None
        self._file: IO[str] | None = None
        self.records_written = 0
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a", encoding="utf-8")

    def write(self, kind: str, sim_s: float, ts: str, **fields: Any) -> None:
        if self._file is None:
            return
        record = {"kind": kind, "sim_s": round(sim_s, 3), "ts": ts, **fields}
        self._file.write(json.dumps(record, separators=(",", ":"), default=str) + "\n")
        self.records_written += 1

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.flush()
            self._file.close()
            self._file = None


def read_ground_truth(path: str | Path, kind: str | None = None) -> list[dict[str, Any]]:
    """Every record of the log (optionally only one kind), in order."""
    records = []
    with Path(path).open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                record = json.loads(line)
                if kind is None or record["kind"] == kind:
                    records.append(record)
    return records


def defect_rates(path: str | Path, start_s: float = float("-inf"), end_s: float = float("inf")) -> dict[str, Any]:
    """What really came out of the oven in [start_s, end_s): cookie count, defective share and each defect's rate."""
    cookies = [r for r in read_ground_truth(path, "cookie") if start_s <= r["exited_oven_s"] < end_s]
    total = len(cookies)
    counts: dict[str, int] = {}
    for cookie in cookies:
        for defect in cookie["defects"]:
            counts[defect] = counts.get(defect, 0) + 1
    return {
        "cookies": total,
        "defective": (sum(1 for c in cookies if c["defects"]) / total) if total else 0.0,
        "rates": {d: n / total for d, n in sorted(counts.items())} if total else {},
        "diverted": sum(1 for c in cookies if c["fate"] == "diverted"),
    }
