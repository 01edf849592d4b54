"""Detectors behind one interface: given an image, a verdict and the defects seen (class, confidence, box).

- `LocalDetector`: the embedded default, CPU only (numpy + Pillow): the classical pipeline of
  services/vision/features.py and one logistic regression per defect class, trained on simulator images by
  services/vision/train.py into the small artifact services/vision/model/local-detector.json.
- `BedrockDetector` (services/vision/bedrock.py): a vision-language model through the Converse API.
`make_detector(name)` picks one by configuration.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from services.vision.features import FEATURE_NAMES, NoCookieError, analyse
from services.vision.imaging import DecodedImage, ImageError, decode_image

DEFECT_CLASSES: tuple[str, ...] = ("cracked", "deformed", "bubbled", "burnt")
DEFAULT_MODEL_PATH = Path(__file__).with_name("model") / "local-detector.json"


class DetectionError(ValueError):
    """The detector could not judge the image (no cookie in it, or a provider answer that makes no sense)."""


@dataclass(frozen=True)
class Defect:
    defect_class: str
    confidence: float
    box: list[int]
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"defect_class": self.defect_class, "confidence": self.confidence, "box": list(self.box),
                "reason": self.reason}


@dataclass(frozen=True)
class ModelRef:
    provider: str
    model_id: str
    version: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"provider": self.provider, "model_id": self.model_id, "version": self.version}


@dataclass(frozen=True)
class Detection:
    verdict: str  # "ok" or "defective"
    defects: tuple[Defect, ...]
    model: ModelRef
    latency_ms: float
    scores: dict[str, float] = field(default_factory=dict)  # every class's probability, also those below threshold

    @property
    def classes(self) -> frozenset[str]:
        return frozenset(d.defect_class for d in self.defects)


class Detector(Protocol):
    """Judges one decoded image. Implementations may block (the service runs them off the event loop)."""

    model: ModelRef

    def detect(self, image: DecodedImage) -> Detection: ...


def detection_from_classes(
    found: list[Defect], model: ModelRef, started: float, scores: dict[str, float] | None = None
) -> Detection:
    found.sort(key=lambda d: DEFECT_CLASSES.index(d.defect_class))
    return Detection(
        verdict="defective" if found else "ok",
        defects=tuple(found),
        model=model,
        latency_ms=(time.perf_counter() - started) * 1000.0,
        scores=scores or {},
    )


class LocalDetector:
    """Classical features + one logistic regression per class; about 100+ images/s per core at 256 x 256."""

    def __init__(self, model_path: str | Path | None = None) -> None:
        path = Path(model_path) if model_path else DEFAULT_MODEL_PATH
        try:
            artifact = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(
                f"local detector model {path} is missing; rebuild it with `python -m services.vision.train`"
            ) from None
        if tuple(artifact["features"]) != FEATURE_NAMES:
            raise ValueError(f"{path} was trained on other features; retrain with `python -m services.vision.train`")
        self.mean = np.array(artifact["mean"], dtype=np.float64)
        self.std = np.array(artifact["std"], dtype=np.float64)
        self.classes: list[str] = list(artifact["classes"])
        self.weights = np.array([artifact["weights"][c] for c in self.classes], dtype=np.float64)
        self.bias = np.array([artifact["bias"][c] for c in self.classes], dtype=np.float64)
        self.thresholds = np.array([artifact["thresholds"][c] for c in self.classes], dtype=np.float64)
        self.model = ModelRef("local", artifact.get("model_id", "lineguard-cookie-classical"),
                              artifact.get("version"))

    def expand(self, features: np.ndarray) -> np.ndarray:
        return (features.astype(np.float64) - self.mean) / self.std

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """Per-class probabilities for one (n_features,) or many (n, n_features) feature vectors."""
        logits = self.expand(features) @ self.weights.T + self.bias
        return 1.0 / (1.0 + np.exp(-np.clip(logits, -40, 40)))

    def detect(self, image: DecodedImage) -> Detection:
        started = time.perf_counter()
        try:
            analysis = analyse(image.pixels)
        except NoCookieError as error:
            raise DetectionError(str(error)) from None
        probabilities = self.probabilities(analysis.features)
        boxes = {
            "cracked": analysis.crack_box or analysis.cookie_box,
            "bubbled": analysis.bubble_box or analysis.cookie_box,
            "deformed": analysis.cookie_box,
            "burnt": analysis.cookie_box,
        }
        found = [
            Defect(name, round(float(p), 4), boxes[name])
            for name, p, threshold in zip(self.classes, probabilities, self.thresholds, strict=True)
            if p >= threshold
        ]
        scores = {name: round(float(p), 4) for name, p in zip(self.classes, probabilities, strict=True)}
        return detection_from_classes(found, self.model, started, scores)

    def detect_bytes(self, data: bytes) -> Detection:
        return self.detect(decode_image(data))


def make_detector(name: str, **options: Any) -> Detector:
    """The detector named by configuration: `local` (default) or `bedrock`."""
    if name == "local":
        return LocalDetector(options.get("model_path"))
    if name == "bedrock":
        from services.vision.bedrock import BedrockDetector

        return BedrockDetector(**options)
    raise ValueError(f"unknown detector {name!r}; expected 'local' or 'bedrock'")


__all__ = [
    "DEFECT_CLASSES",
    "Defect",
    "Detection",
    "DetectionError",
    "Detector",
    "ImageError",
    "LocalDetector",
    "ModelRef",
    "make_detector",
]
