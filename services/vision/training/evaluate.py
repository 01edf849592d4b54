"""Evaluate a detector on labelled images it was not trained on: rendered, or a line's own folder.

    python -m services.vision.evaluate --conditions heldout --seed 123 --n 1000 [--model PATH]
    python -m services.vision.evaluate --images DIR --labels DIR/labels.jsonl [--model PATH]
    python -m services.vision.evaluate --unusual --n 60        # out-of-distribution images: must abstain

Prints precision, recall and F1 for each defect class and for "good" (no defect at all), the confusion between
classes, the mean IoU of the predicted boxes with the true ones (rendered sets), how many images the detector
abstained on (counted as misses for every true class they had), and its speed. Conditions: standard, harsh,
varied (what the shipped model trains on, use other seeds), heldout (belts and toppings training never saw,
sizes to 1024 px), cocoa (a chocolate-dough line). Training uses seeds 1 to 3.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from services.vision.classes import DEFECT_CLASSES, LABELS
from services.vision.detector import Detector, make_detector
from services.vision.imaging import decode_image
from services.vision.training.dataset import LabelledImage, folder_set, rendered_set
from simulator.camera import OUT_OF_DISTRIBUTION, render_unusual

__all__ = ["LABELS", "Scores", "budget_met", "evaluate", "iou", "report", "score_images", "score_items"]


@dataclass
class Scores:
    images: int = 0
    abstained: int = 0  # images the detector declined to judge
    abstentions: dict[str, int] = field(default_factory=dict)  # by reason
    true_positive: dict[str, int] = field(default_factory=lambda: dict.fromkeys(LABELS, 0))
    false_positive: dict[str, int] = field(default_factory=lambda: dict.fromkeys(LABELS, 0))
    false_negative: dict[str, int] = field(default_factory=lambda: dict.fromkeys(LABELS, 0))
    # confusion[true][predicted]: images with that true class in which that class was predicted
    confusion: dict[str, dict[str, int]] = field(
        default_factory=lambda: {t: dict.fromkeys(LABELS, 0) for t in LABELS})
    support: dict[str, int] = field(default_factory=lambda: dict.fromkeys(LABELS, 0))
    abstained_by_label: dict[str, int] = field(default_factory=lambda: dict.fromkeys(LABELS, 0))
    iou_sum: dict[str, float] = field(default_factory=lambda: dict.fromkeys(DEFECT_CLASSES, 0.0))
    detect_seconds: float = 0.0

    @property
    def undecided(self) -> int:  # the name older callers use
        return self.abstained

    def add(self, true: frozenset[str], predicted: frozenset[str] | None, truth: list[dict], boxes: dict,
            reason: str | None = None) -> None:
        """One image; `predicted` None when the detector abstained (a miss for every true class)."""
        self.images += 1
        true_labels = set(true) or {"good"}
        if predicted is None:
            self.abstained += 1
            self.abstentions[reason or "?"] = self.abstentions.get(reason or "?", 0) + 1
        predicted_labels = set() if predicted is None else (set(predicted) or {"good"})
        for label in LABELS:
            t, p = label in true_labels, label in predicted_labels
            self.true_positive[label] += t and p
            self.false_positive[label] += p and not t
            self.false_negative[label] += t and not p
        for t in true_labels:
            self.support[t] += 1
            self.abstained_by_label[t] += predicted is None
            for p in predicted_labels:
                # off the diagonal only wrong predictions: a class predicted that the image does not have
                if p == t or p not in true_labels:
                    self.confusion[t][p] += 1
        for item in truth:
            name = item["class"]
            if predicted is not None and name in predicted and name in boxes:
                self.iou_sum[name] += iou(item["box"], boxes[name])

    def merge(self, other: Scores) -> None:
        self.images += other.images
        self.abstained += other.abstained
        for reason, count in other.abstentions.items():
            self.abstentions[reason] = self.abstentions.get(reason, 0) + count
        self.detect_seconds += other.detect_seconds
        for label in LABELS:
            self.true_positive[label] += other.true_positive[label]
            self.false_positive[label] += other.false_positive[label]
            self.false_negative[label] += other.false_negative[label]
            self.support[label] += other.support[label]
            self.abstained_by_label[label] += other.abstained_by_label[label]
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


def _detector(name: str, model_path: str | None) -> Detector:
    return make_detector(name, model_path=model_path) if name == "local" else make_detector(name)


def score_items(detector: Detector, items: Iterable[LabelledImage], working_side: int = 512) -> Scores:
    scores = Scores()
    for item in items:
        t0 = time.perf_counter()
        detection = detector.detect(decode_image(item.png, working_side=working_side))
        scores.detect_seconds += time.perf_counter() - t0
        if detection.abstained:
            scores.add(item.defects, None, item.truth, {}, detection.abstention)
            continue
        boxes = {d.defect_class: d.box for d in detection.defects}
        scores.add(item.defects, detection.classes, item.truth, boxes)
    return scores


def score_images(detector: Detector, seed: int, n: int, conditions: str, start: int = 0) -> Scores:
    items = rendered_set(seed, n, conditions, start=start)
    return score_items(detector, items)


def _score_chunk(args: tuple[str, str | None, int, int, str, int]) -> Scores:
    detector_name, model_path, seed, n, conditions, start = args
    return score_images(_detector(detector_name, model_path), seed, n, conditions, start)


def evaluate(detector_name: str, seed: int, n: int, conditions: str, workers: int = 1,
             model_path: str | None = None) -> Scores:
    if workers <= 1:
        return score_images(_detector(detector_name, model_path), seed, n, conditions)
    chunk = -(-n // (workers * 2))
    jobs = [(detector_name, model_path, seed, min(chunk, n - s), conditions, s) for s in range(0, n, chunk)]
    total = Scores()
    with ProcessPoolExecutor(workers) as pool:
        for part in pool.map(_score_chunk, jobs):
            total.merge(part)
    return total


def report(scores: Scores, title: str) -> str:
    lines = [title, "", "| class | support | precision | recall | F1 | mean box IoU | abstained |",
             "|---|---|---|---|---|---|---|"]
    for label in LABELS:
        precision, recall, f1 = scores.metrics(label)
        box = (f"{scores.iou_sum[label] / max(scores.true_positive[label], 1):.2f}"
               if label in DEFECT_CLASSES and scores.iou_sum[label] > 0 else "")  # a folder set has no boxes
        lines.append(f"| {label} | {scores.support[label]} | {precision:.3f} | {recall:.3f} | {f1:.3f} | {box} "
                     f"| {scores.abstained_by_label[label]} |")
    lines += ["", "Confusion: rows are true classes, columns predicted ones. The diagonal counts correct detections; "
              "off it, a class predicted that the image does not have (an image can have several classes). "
              "'missed' counts images whose true class was not predicted (abstentions included).", "",
              "| true \\ predicted | " + " | ".join(LABELS) + " | missed |", "|---" * (len(LABELS) + 2) + "|"]
    for t in LABELS:
        missed = scores.support[t] - scores.confusion[t][t]
        lines.append(f"| {t} | " + " | ".join(str(scores.confusion[t][p]) for p in LABELS) + f" | {missed} |")
    per_image_ms = 1000.0 * scores.detect_seconds / max(scores.images, 1)
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(scores.abstentions.items())) or "none"
    lines += ["", f"images: {scores.images}, abstained: {scores.abstained} ({reasons}), "
              f"detector time: {per_image_ms:.2f} ms/image (decode included; not a speed figure)"]
    return "\n".join(lines)


def lowest(scores: Scores) -> float:
    return min(min(scores.metrics(label)[:2]) for label in LABELS)


def budget_met(scores: Scores, floor: float = 0.95) -> bool:
    return lowest(scores) >= floor


def unusual(detector: Detector, seed: int, n: int) -> dict[str, tuple[int, int]]:
    """For each kind of out-of-distribution image: (abstained, judged)."""
    rng = np.random.default_rng(seed)
    counts = {kind: [0, 0] for kind in OUT_OF_DISTRIBUTION}
    for index in range(n):
        kind = OUT_OF_DISTRIBUTION[index % len(OUT_OF_DISTRIBUTION)]
        detection = detector.detect(decode_image(render_unusual(kind, rng), working_side=512))
        counts[kind][0 if detection.abstained else 1] += 1
    return {kind: (a, j) for kind, (a, j) in counts.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=123)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--conditions", default="standard",
                        choices=["standard", "harsh", "varied", "heldout", "cocoa"])
    parser.add_argument("--images", type=Path, help="a folder of labelled images (with --labels)")
    parser.add_argument("--labels", type=Path)
    parser.add_argument("--unusual", action="store_true", help="out-of-distribution images: count abstentions")
    parser.add_argument("--detector", default="local", choices=["local", "bedrock"])
    parser.add_argument("--model", default=None, help="local model artifact (default: the shipped one)")
    parser.add_argument("--floor", type=float, default=0.95, help="the budget for every precision and recall")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    if args.unusual:
        counts = unusual(_detector(args.detector, args.model), args.seed, args.n)
        print("| out-of-distribution image | abstained | judged |\n|---|---|---|")
        for kind, (abstained, judged) in counts.items():
            print(f"| {kind} | {abstained} | {judged} |")
        return 0 if all(judged == 0 for _, judged in counts.values()) else 1
    if args.images is not None:
        if args.labels is None:
            parser.error("--images needs --labels")
        scores = score_items(_detector(args.detector, args.model), folder_set(args.images, args.labels))
        title = f"## {args.detector} detector, {args.images}, {scores.images} images"
    else:
        scores = evaluate(args.detector, args.seed, args.n, args.conditions, args.workers, args.model)
        title = f"## {args.detector} detector, {args.conditions} camera, seed {args.seed}, {args.n} images"
    print(report(scores, title))
    verdict = "met" if budget_met(scores, args.floor) else "NOT met"
    print(f"budget (precision and recall >= {args.floor} for every class and good): {verdict}; lowest "
          f"{lowest(scores):.3f}; wall time {time.perf_counter() - started:.0f} s")
    return 0 if budget_met(scores, args.floor) else 1


if __name__ == "__main__":
    raise SystemExit(main())
