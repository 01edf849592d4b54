"""A consumer-loop process for the crash and shutdown tests: raw.telemetry.v1 -> line.observations.v1.

Run as `python loop_worker.py`; settings come from the environment. LOOP_WORKER_DELAY_S slows each record so a
test can kill it mid-batch.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "support"))

from loop_helpers import to_observation  # noqa: E402

from lineguard.kafka import ConsumerLoop, Output, Record  # noqa: E402
from lineguard.logs import event, get_logger, setup_logging  # noqa: E402
from lineguard.settings import Settings  # noqa: E402

DELAY = float(os.environ.get("LOOP_WORKER_DELAY_S", "0"))


def slow_handler(record: Record) -> list[Output]:
    if DELAY:
        time.sleep(DELAY)
    return to_observation(record)


def main() -> None:
    settings = Settings.from_env()
    setup_logging("loop-worker", settings.log_level)
    loop = ConsumerLoop(settings, os.environ["LOOP_WORKER_GROUP"], ["raw.telemetry.v1"], slow_handler,
                        batch_size=int(os.environ.get("LOOP_WORKER_BATCH", "100")))
    loop.install_signal_handlers()
    stats = loop.run()
    event(get_logger("loop_worker"), "worker_exit", consumed=stats.consumed, produced=stats.produced)


if __name__ == "__main__":
    main()
