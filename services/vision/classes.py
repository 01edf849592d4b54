"""The defect classes a cookie can have, defined once for the service, its tools and the simulator's camera."""

from __future__ import annotations

DEFECT_CLASSES: tuple[str, ...] = ("cracked", "deformed", "bubbled", "burnt")
# what evaluation and training score: every defect class and "good" (no defect at all)
LABELS: tuple[str, ...] = (*DEFECT_CLASSES, "good")
