"""Labelled image sets rendered by the simulator's camera, for training, evaluation and tests."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from simulator.camera import CameraConditions, random_defects, render_cookie


@dataclass(frozen=True)
class LabelledImage:
    png: bytes
    defects: frozenset[str]
    truth: list[dict]


def rendered_set(
    seed: int, n: int, conditions: CameraConditions | str = "standard", defect_rate: float = 0.6, size: int = 256
) -> Iterator[LabelledImage]:
    """n images from one seed: the same seed always gives the same images and labels."""
    if isinstance(conditions, str):
        conditions = CameraConditions.preset(conditions)
    rng = np.random.default_rng(seed)
    for _ in range(n):
        defects = random_defects(rng, defect_rate)
        png, truth = render_cookie(defects, rng, size=size, conditions=conditions)
        yield LabelledImage(png, defects, truth)
