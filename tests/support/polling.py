"""Waiting for a condition in integration tests."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_for(predicate: Callable[[], object], timeout: float = 20.0, interval: float = 0.05) -> bool:
    """Poll `predicate` until it is true or `timeout` seconds pass; return its last answer as a bool."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def false_while_raising(check: Callable[[], object],
                        errors: tuple[type[BaseException], ...] = (OSError,)) -> Callable[[], object]:
    """`check` for wait_for, answering False while it raises one of `errors` (a worker's port not open yet, or a
    worker gone in a rebalance) instead of ending the wait."""
    def run() -> object:
        try:
            return check()
        except errors:
            return False
    return run
