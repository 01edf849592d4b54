"""Train the local detector on images the simulator renders; writes services/vision/model/local-detector.json.

    python -m services.vision.train [--seed 1] [--n 2000] [--out services/vision/model/local-detector.json]

It renders n images under the standard camera and n under the harsh one (seeds `seed` and `seed + 1`), extracts
the classical features (services/vision/features.py), fits one L2-regularised logistic regression per defect
class by Newton's method, and picks each class's decision threshold on a held-out fifth of the images (the one
that maximises the smaller of precision and recall). Everything is seeded, so a rerun rebuilds the same artifact.
Evaluate the result on fresh seeds with `python -m services.vision.evaluate`.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from services.vision.dataset import rendered_set
from services.vision.detector import DEFAULT_MODEL_PATH, DEFECT_CLASSES
from services.vision.features import FEATURE_NAMES, NoCookieError, analyse
from services.vision.imaging import decode_image

MODEL_VERSION = "1"


def _features_chunk(args: tuple[int, int, int, str]) -> tuple[np.ndarray, np.ndarray]:
    seed, start, count, conditions = args
    rows, labels = [], []
    for index, item in enumerate(rendered_set(seed, start + count, conditions)):
        if index < start:
            continue
        try:
            rows.append(analyse(decode_image(item.png).pixels).features)
        except NoCookieError:
            continue
        labels.append([name in item.defects for name in DEFECT_CLASSES])
    return np.array(rows, dtype=np.float64), np.array(labels, dtype=bool)


def labelled_features(seed: int, n: int, conditions: str, workers: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Features and labels for the n images `rendered_set(seed, n, conditions)` yields, in parallel chunks."""
    workers = workers or max(1, os.cpu_count() or 1)
    chunk = max(1, -(-n // workers))
    jobs = [(seed, start, min(chunk, n - start), conditions) for start in range(0, n, chunk)]
    if workers == 1 or len(jobs) == 1:
        parts = [_features_chunk(job) for job in jobs]
    else:
        with ProcessPoolExecutor(workers) as pool:
            parts = list(pool.map(_features_chunk, jobs))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-2, iterations: int = 50) -> tuple[np.ndarray, float]:
    """L2-regularised logistic regression by Newton's method; returns (weights, bias)."""
    n, d = x.shape
    design = np.hstack([x, np.ones((n, 1))])
    theta = np.zeros(d + 1)
    penalty = np.full(d + 1, l2 * n)
    penalty[-1] = 0.0  # the bias is not shrunk
    target = y.astype(np.float64)
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-np.clip(design @ theta, -40, 40)))
        gradient = design.T @ (p - target) + penalty * theta
        hessian = (design * (p * (1 - p))[:, None]).T @ design + np.diag(penalty) + 1e-9 * np.eye(d + 1)
        step = np.linalg.solve(hessian, gradient)
        theta -= step
        if np.abs(step).max() < 1e-8:
            break
    return theta[:-1], float(theta[-1])


def best_threshold(probabilities: np.ndarray, truth: np.ndarray) -> float:
    """The threshold that maximises min(precision, recall) on held-out images."""
    best, best_score = 0.5, -1.0
    for threshold in np.linspace(0.1, 0.9, 81):
        predicted = probabilities >= threshold
        tp = float((predicted & truth).sum())
        precision = tp / max(float(predicted.sum()), 1.0)
        recall = tp / max(float(truth.sum()), 1.0)
        score = min(precision, recall) - 0.01 * abs(threshold - 0.5)  # near-ties go to the middle
        if score > best_score:
            best, best_score = float(threshold), score
    return round(best, 3)


def train(seed: int, n: int, workers: int = 0) -> dict:
    x_parts, y_parts = [], []
    for offset, conditions in enumerate(("standard", "harsh")):
        x, y = labelled_features(seed + offset, n, conditions, workers)
        x_parts.append(x)
        y_parts.append(y)
    x, y = np.concatenate(x_parts), np.concatenate(y_parts)
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    held_out = len(x) // 5
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-9
    z = (x - mean) / std
    artifact: dict = {
        "model_id": "lineguard-cookie-classical",
        "version": MODEL_VERSION,
        "features": list(FEATURE_NAMES),
        "classes": list(DEFECT_CLASSES),
        "mean": mean.round(6).tolist(),
        "std": std.round(6).tolist(),
        "weights": {},
        "bias": {},
        "thresholds": {},
        "trained_on": {"seed": seed, "images_per_condition": n, "conditions": ["standard", "harsh"]},
    }
    for column, name in enumerate(DEFECT_CLASSES):
        weights, bias = fit_logistic(z[held_out:], y[held_out:, column])
        p = 1.0 / (1.0 + np.exp(-(z[:held_out] @ weights + bias)))
        artifact["thresholds"][name] = best_threshold(p, y[:held_out, column])
        # refit on everything for the shipped weights; the threshold stays the held-out one
        weights, bias = fit_logistic(z, y[:, column])
        artifact["weights"][name] = weights.round(6).tolist()
        artifact["bias"][name] = round(bias, 6)
    return artifact


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--n", type=int, default=2000, help="images per camera condition")
    parser.add_argument("--workers", type=int, default=0, help="processes (default: one per core)")
    parser.add_argument("--out", type=Path, default=DEFAULT_MODEL_PATH)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    artifact = train(args.seed, args.n, args.workers)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(artifact, indent=1) + "\n")
    print(f"wrote {args.out} from {2 * args.n} images in {time.perf_counter() - started:.0f} s; "
          f"thresholds {artifact['thresholds']}")


if __name__ == "__main__":
    main()
