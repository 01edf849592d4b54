"""Detectors behind one interface: given an image, a verdict and the defects seen (class, confidence, box).

- `LocalDetector`: the embedded default, CPU only (numpy, Pillow, OpenCV): the pipeline of
  services/vision/features.py (segmentation against a belt model estimated per image, a canonical crop, colour
  relative to the dough, ring detectors for cracks, inclusions and blisters), then a small neural network (one
  hidden layer, a sigmoid per class) trained by `python -m services.vision.train` into a small JSON artifact
  (services/vision/model/).
  It abstains (verdict `abstained`) on images unlike anything it was trained on: no cookie, a cookie cut by the
  frame or seen too close, an object that is not dough-coloured or not round, or features far from the
  training distribution (Mahalanobis distance).
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

from services.vision.classes import DEFECT_CLASSES
from services.vision.features import FEATURE_NAMES, AbstainError, analyse
from services.vision.imaging import DecodedImage, ImageError, decode_image

DEFAULT_MODEL_PATH = Path(__file__).with_name("model") / "local-detector.json"
RANGE_MARGIN = 0.1  # a feature's training range, widened by this share of its central 99 % on each side
ABSTAINED = "abstained"


class DetectionError(ValueError):
    """The detector could not judge the image (a provider answer that makes no sense, or a refusal)."""


class PermanentDetectionError(DetectionError):
    """The provider refused the request for good (invalid image or request, no access): retrying cannot help.

    `status` is the HTTP answer the intake gives: 422 when the image was refused, 500 when the service itself is
    misconfigured (no access to the model)."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


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
    verdict: str  # "ok", "defective", or "abstained" (the detector declines to judge this image)
    defects: tuple[Defect, ...]
    model: ModelRef
    latency_ms: float
    scores: dict[str, float] = field(default_factory=dict)  # every class's probability, also those below threshold
    abstention: str | None = None  # why it abstained: a short reason label
    message: str | None = None  # and in words

    @property
    def classes(self) -> frozenset[str]:
        return frozenset(d.defect_class for d in self.defects)

    @property
    def abstained(self) -> bool:
        return self.verdict == ABSTAINED


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


def abstention(model: ModelRef, started: float, reason: str, message: str) -> Detection:
    return Detection(ABSTAINED, (), model, (time.perf_counter() - started) * 1000.0, {}, reason, message)


class Network:
    """The classifier: standardised features -> ReLU hidden layer -> one sigmoid per class (multi-label)."""

    def __init__(self, mean: np.ndarray, std: np.ndarray, w1: np.ndarray, b1: np.ndarray, w2: np.ndarray,
                 b2: np.ndarray) -> None:
        self.mean, self.std, self.w1, self.b1, self.w2, self.b2 = mean, std, w1, b1, w2, b2

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """(n_classes,) for one feature vector, (n, n_classes) for many."""
        z = (features.astype(np.float64) - self.mean) / self.std
        hidden = np.maximum(z @ self.w1 + self.b1, 0.0)
        return 1.0 / (1.0 + np.exp(-np.clip(hidden @ self.w2 + self.b2, -40, 40)))

    def to_dict(self) -> dict[str, Any]:
        return {name: np.asarray(getattr(self, name)).round(6).tolist()
                for name in ("mean", "std", "w1", "b1", "w2", "b2")}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Network:
        return cls(*(np.array(data[name], dtype=np.float64) for name in ("mean", "std", "w1", "b1", "w2", "b2")))


class Familiarity:
    """How far a feature vector lies from the training set: squared Mahalanobis distance, with a limit; and each
    feature's range in training, widened by a margin (a single feature far outside what training ever showed,
    say a belt's texture or a dough's hue, is unfamiliar even when the distance as a whole is not)."""

    def __init__(self, mean: np.ndarray, precision: np.ndarray, limit: float, low: np.ndarray | None = None,
                 high: np.ndarray | None = None) -> None:
        self.mean, self.precision, self.limit = mean, precision, limit
        self.low = np.full(len(mean), -np.inf) if low is None else low
        self.high = np.full(len(mean), np.inf) if high is None else high

    def distance(self, features: np.ndarray) -> np.ndarray:
        d = features.astype(np.float64) - self.mean
        return np.einsum("...i,ij,...j->...", d, self.precision, d)

    def outside(self, features: np.ndarray) -> np.ndarray:
        """Indices of the features outside their training range (one vector)."""
        return np.flatnonzero((features < self.low) | (features > self.high))

    @classmethod
    def fit(cls, x: np.ndarray, quantile: float = 0.999, margin: float = 2.0, shrink: float = 0.05,
            range_margin: float = RANGE_MARGIN) -> Familiarity:
        mean = x.mean(axis=0)
        scale = x.std(axis=0) + 1e-6
        corr = np.cov(((x - mean) / scale).T)
        corr = (1 - shrink) * corr + shrink * np.eye(len(mean))
        precision = np.linalg.inv(corr) / np.outer(scale, scale)
        span = np.quantile(x, 0.995, axis=0) - np.quantile(x, 0.005, axis=0) + 1e-3
        model = cls(mean, precision, 0.0, x.min(axis=0) - range_margin * span, x.max(axis=0) + range_margin * span)
        model.limit = float(np.quantile(model.distance(x), quantile) * margin)
        return model

    def to_dict(self) -> dict[str, Any]:
        return {"mean": self.mean.round(6).tolist(), "precision": self.precision.round(6).tolist(),
                "limit": round(self.limit, 3), "low": self.low.round(6).tolist(), "high": self.high.round(6).tolist()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Familiarity:
        low, high = data.get("low"), data.get("high")  # an older artifact has no ranges: distance only
        return cls(np.array(data["mean"]), np.array(data["precision"]), float(data["limit"]),
                   None if low is None else np.array(low), None if high is None else np.array(high))


class LocalDetector:
    """Features + a small network; about 136 images/s per core at 256 x 256 (bench/bench_vision.py on a quiet core,
    about 100 per CPU-second on the loaded shared development machine)."""

    def __init__(self, model_path: str | Path | None = None) -> None:
        path = Path(model_path) if model_path else DEFAULT_MODEL_PATH
        try:
            artifact = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(
                f"local detector model {path} is missing; rebuild it with `python -m services.vision.train`"
            ) from None
        if tuple(artifact.get("features", ())) != FEATURE_NAMES or "network" not in artifact:
            raise ValueError(f"{path} was trained on other features; retrain with `python -m services.vision.train`")
        self.path = path
        self.artifact = artifact
        self.classes: list[str] = list(artifact["classes"])
        self.network = Network.from_dict(artifact["network"])
        self.familiarity = Familiarity.from_dict(artifact["familiarity"])
        self.thresholds = np.array([artifact["thresholds"][c] for c in self.classes], dtype=np.float64)
        self.model = ModelRef("local", artifact.get("model_id", "lineguard-cookie-local"), artifact.get("version"))

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        return self.network.probabilities(features)

    def detect(self, image: DecodedImage) -> Detection:
        started = time.perf_counter()
        try:
            analysis = analyse(image.pixels)
        except AbstainError as error:
            return abstention(self.model, started, error.reason, str(error))
        distance = float(self.familiarity.distance(analysis.features))
        if distance > self.familiarity.limit:
            return abstention(self.model, started, "unfamiliar",
                              f"the image is unlike the training images (distance {distance:.0f}, "
                              f"limit {self.familiarity.limit:.0f})")
        outside = self.familiarity.outside(analysis.features)
        if outside.size:
            i = int(outside[0])
            return abstention(self.model, started, "unfamiliar",
                              f"the image is unlike the training images ({FEATURE_NAMES[i]} "
                              f"{float(analysis.features[i]):.3g} outside its training range "
                              f"{self.familiarity.low[i]:.3g} to {self.familiarity.high[i]:.3g})")
        probabilities = self.probabilities(analysis.features)
        scale = image.scale  # the pixels may be a reduced copy of the image: boxes go back to its own pixels
        boxes = {
            "cracked": analysis.crack_box or analysis.cookie_box,
            "bubbled": analysis.bubble_box or analysis.cookie_box,
            "deformed": analysis.cookie_box,
            "burnt": analysis.cookie_box,
        }
        found = [
            Defect(name, round(float(p), 4), _scaled(boxes[name], scale, image.width, image.height))
            for name, p, threshold in zip(self.classes, probabilities, self.thresholds, strict=True)
            if p >= threshold
        ]
        scores = {name: round(float(p), 4) for name, p in zip(self.classes, probabilities, strict=True)}
        return detection_from_classes(found, self.model, started, scores)

    def detect_bytes(self, data: bytes) -> Detection:
        return self.detect(decode_image(data))


def _scaled(box: list[int], scale: float, width: int, height: int) -> list[int]:
    if scale == 1.0:
        return list(box)
    return [max(0, int(box[0] * scale)), max(0, int(box[1] * scale)),
            min(width, int(np.ceil(box[2] * scale))), min(height, int(np.ceil(box[3] * scale)))]


def make_detector(name: str, **options: Any) -> Detector:
    """The detector named by configuration: `local` (default) or `bedrock`."""
    if name == "local":
        return LocalDetector(options.get("model_path"))
    if name == "bedrock":
        from services.vision.bedrock import BedrockDetector

        return BedrockDetector(**options)
    raise ValueError(f"unknown detector {name!r}; expected 'local' or 'bedrock'")


__all__ = [
    "ABSTAINED",
    "DEFECT_CLASSES",
    "Defect",
    "Detection",
    "DetectionError",
    "Detector",
    "ImageError",
    "LocalDetector",
    "ModelRef",
    "PermanentDetectionError",
    "make_detector",
]
