"""Structured logs: the throttle that keeps a flood of dead letters from burying the log."""

from __future__ import annotations

import json
import logging

from lineguard.logs import JsonFormatter, Throttle, throttled_event


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_throttle_admits_the_limit_per_window_then_reports_what_it_held_back():
    clock = FakeClock()
    throttle = Throttle(limit=3, window_s=60, clock=clock)
    assert [throttle.admit("bad json") for _ in range(5)] == [0, 0, 0, None, None]
    assert throttle.admit("other error") == 0  # keys are counted apart
    clock.now += 59
    assert throttle.admit("bad json") is None
    clock.now += 1  # a new window
    assert throttle.admit("bad json") == 3  # the three held back
    assert throttle.admit("bad json") == 0


def test_throttled_event_writes_suppressed_on_the_line_after_a_held_back_stretch(caplog):
    clock = FakeClock()
    throttle = Throttle(limit=1, window_s=10, clock=clock)
    logger = logging.getLogger("test.throttle")
    with caplog.at_level(logging.WARNING, logger="test.throttle"):
        for offset in range(4):
            throttled_event(logger, throttle, "CorruptPayloadError", "dead_lettered", logging.WARNING, offset=offset)
        clock.now += 10
        throttled_event(logger, throttle, "CorruptPayloadError", "dead_lettered", logging.WARNING, offset=4)
    lines = [json.loads(JsonFormatter().format(record)) for record in caplog.records]
    assert [(line["offset"], line.get("suppressed")) for line in lines] == [(0, None), (4, 3)]
