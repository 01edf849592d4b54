"""Prometheus text exposition as the tests and benchmarks read it: a service's /metrics as plain numbers."""

from __future__ import annotations

import re
import urllib.request

SAMPLE = re.compile(r'^(?P<name>[a-z_]+)(?:\{(?P<labels>[^}]*)\})? (?P<value>\S+)$')
Samples = dict[str, dict[str, float]]  # metric name -> {label text ('' when none): value}


def parse(body: str) -> Samples:
    """name -> {labels: value} from a /metrics body (comments and unmatched lines skipped)."""
    out: Samples = {}
    for line in body.splitlines():
        match = SAMPLE.match(line)
        if match:
            out.setdefault(match["name"], {})[match["labels"] or ""] = float(match["value"])
    return out


def scrape(port: int, timeout: float = 5.0, missing_ok: bool = False) -> Samples:
    """A worker's /metrics at 127.0.0.1:`port`; with `missing_ok` an unreachable one gives {} (not started yet,
    or gone) instead of raising OSError."""
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout).read().decode()
    except OSError:
        if missing_ok:
            return {}
        raise
    return parse(body)


def by_partition(samples: dict[str, float]) -> dict[int, float]:
    """{partition: value} of a metric labelled `partition`."""
    return {int(re.search(r'partition="(\d+)"', k)[1]): v for k, v in samples.items() if 'partition="' in k}


def total(samples: Samples, name: str) -> float:
    """The sum of a metric over all its labels (0 when absent)."""
    return sum(samples.get(name, {}).values())
