"""Evaluate a detector on a fresh labelled set rendered by the simulator.

    python -m services.vision.evaluate --seed 123 --n 2000 [--conditions standard|harsh] [--detector local]

Prints precision, recall and F1 for each defect class and for "good" (no defect at all), the confusion between
classes (for each true class, how often each class was predicted), the mean IoU of the predicted boxes with the
true ones, and the detector's speed. Use seeds the detector was not trained on (training uses 1 and 2).
"""

from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

from services.vision.dataset import rendered_set
from services.vision.detector import DEFECT_CLASSES, DetectionError, Detector, make_detector
from services.vision.imaging import decode_image

LABELS: tuple[str, ...] = (*DEFECT_CLASSES, "good")


@dataclass
class Scores:
    images: int = 0
    undecided: int = 0  # images the detector refused (no cookie found)
    true_positive: dict[str, int] = field(default_factory=lambda: dict.fromkeys(LABELS, 0))
    false_positive: dict[str, int] = field(default_factory=lambda: dict.fromkeys(LABELS, 0))
    false_negative: dict[str, int] = field(default_factory=lambda: dict.fromkeys(LABELS, 0))
    # confusion[true][predicted]: images with that true class in which that class was predicted
    confusion: dict[str, dict[str, int]] = field(
        default_factory=lambda: {t: dict.fromkeys(LABELS, 0) for t in LABELS})
    support: dict[str, int] = field(default_factory=lambda: dict.fromkeys(LABELS, 0))
    iou_sum: dict[str, float] = field(default_factory=lambda: dict.fromkeys(DEFECT_CLASSES, 0.0))
    detect_seconds: float = 0.0

    def add(self, true: frozenset[str], predicted: frozenset[str], truth: list[dict], boxes: dict) -> None:
        self.images += 1
        true_labels = set(true) or {"good"}
        # an undecided image (the detector refused it) counts as a miss for every true class
        predicted_labels = set() if "undecided" in predicted else (set(predicted) or {"good"})
        for label in LABELS:
            t, p = label in true_labels, label in predicted_labels
            self.true_positive[label] += t and p
            self.false_positive[label] += p and not t
            self.false_negative[label] += t and not p
        for t in true_labels:
            self.support[t] += 1
            for p in predicted_labels:
                # off the diagonal only wrong predictions: a class predicted that the image does not have
                if p == t or p not in true_labels:
                    self.confusion[t][p] += 1
        for item in truth:
            name = item["class"]
            if name in predicted and name in boxes:
                self.iou_sum[name] += iou(item["box"], boxes[name])

    def merge(self, other: Scores) -> None:
        self.images += other.images
        self.undecided += other.undecided
        self.detect_seconds += other.detect_seconds
        for label in LABELS:
            self.true_positive[label] += other.true_positive[label]
            self.false_positive[label] += other.false_positive[label]
            self.false_negative[label] += other.false_negative[label]
            self.support[label] += other.support[label]
            for p in LABELS:
                self.confusion[label][p] += other.confusion[label][p]
        for name in DEFECT_CLASSES:
            self.iou_sum[name] += other.iou_sum[name]

    def metrics(self, label: str) -> tuple[float, float, float]:
        tp, fp, fn = self.true_positive[label], self.false_positive[label], self.false_negative[label]
        precision = tp / (tp + fp) if tp + fp else 1.0
        recall = tp / (tp + fn) if tp + fn else 1.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return precision, recall, f1


def iou(a: list[int], b: list[int]) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def score_images(detector: Detector, seed: int, n: int, conditions: str, start: int = 0) -> Scores:
    scores = Scores()
    for index, item in enumerate(rendered_set(seed, start + n, conditions)):
        if index < start:
            continue
        t0 = time.perf_counter()
        try:
            detection = detector.detect(decode_image(item.png))
        except DetectionError:
            scores.undecided += 1
            scores.add(item.defects, frozenset({"undecided"}), item.truth, {})
            continue
        finally:
            scores.detect_seconds += time.perf_counter() - t0
        boxes = {d.defect_class: d.box for d in detection.defects}
        scores.add(item.defects, detection.classes, item.truth, boxes)
    return scores


def _score_chunk(args: tuple[str, int, int, str, int]) -> Scores:
    detector_name, seed, n, conditions, start = args
    return score_images(make_detector(detector_name), seed, n, conditions, start)


def evaluate(detector_name: str, seed: int, n: int, conditions: str, workers: int = 1) -> Scores:
    if workers <= 1:
        return score_images(make_detector(detector_name), seed, n, conditions)
    chunk = -(-n // workers)
    jobs = [(detector_name, seed, min(chunk, n - s), conditions, s) for s in range(0, n, chunk)]
    total = Scores()
    with ProcessPoolExecutor(workers) as pool:
        for part in pool.map(_score_chunk, jobs):
            total.merge(part)
    return total


def report(scores: Scores, title: str) -> str:
    lines = [title, "", "| class | support | precision | recall | F1 | mean box IoU |", "|---|---|---|---|---|---|"]
    for label in LABELS:
        precision, recall, f1 = scores.metrics(label)
        box = (f"{scores.iou_sum[label] / max(scores.true_positive[label], 1):.2f}"
               if label in DEFECT_CLASSES else "")
        lines.append(f"| {label} | {scores.support[label]} | {precision:.3f} | {recall:.3f} | {f1:.3f} | {box} |")
    lines += ["", "Confusion: rows are true classes, columns predicted ones. The diagonal counts correct detections; "
              "off it, a class predicted that the image does not have (an image can have several classes). "
              "'missed' counts images whose true class was not predicted.", "",
              "| true \\ predicted | " + " | ".join(LABELS) + " | missed |", "|---" * (len(LABELS) + 2) + "|"]
    for t in LABELS:
        missed = scores.support[t] - scores.confusion[t][t]
        lines.append(f"| {t} | " + " | ".join(str(scores.confusion[t][p]) for p in LABELS) + f" | {missed} |")
    per_image_ms = 1000.0 * scores.detect_seconds / max(scores.images, 1)
    lines += ["", f"images: {scores.images}, undecided (no cookie found): {scores.undecided}, "
              f"detector time: {per_image_ms:.2f} ms/image (decode included)"]
    return "\n".join(lines)


def budget_met(scores: Scores, floor: float = 0.95) -> bool:
    return all(min(scores.metrics(label)[:2]) >= floor for label in LABELS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=123)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--conditions", default="standard", choices=["standard", "harsh"])
    parser.add_argument("--detector", default="local", choices=["local", "bedrock"])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    scores = evaluate(args.detector, args.seed, args.n, args.conditions, args.workers)
    print(report(scores, f"## {args.detector} detector, {args.conditions} camera, seed {args.seed}, "
                         f"{args.n} images"))
    verdict = "met" if budget_met(scores) else "NOT met"
    print(f"budget (precision and recall >= 0.95 for every class and good): {verdict}; "
          f"wall time {time.perf_counter() - started:.0f} s")
    return 0 if budget_met(scores) else 1


if __name__ == "__main__":
    raise SystemExit(main())
