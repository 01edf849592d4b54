"""Train the local detector: from rendered images (the shipped model) or from a line's own labelled images.

    python -m services.vision.train                                   # rebuild the shipped model
    python -m services.vision.train --images DIR --labels DIR/labels.jsonl --out var/models/line1.json

Shipped model: renders images under the `varied` camera (belts, toppings, lighting, sizes, JPEG, neighbours,
rotation; see simulator/camera.py) plus the standard and harsh cameras, extracts the features
(services/vision/features.py), fits the network (one hidden layer, a sigmoid per class, Adam on the log loss;
`deformed` wired to the outline features only, see OUTLINE_FEATURES),
picks each class's threshold on a held-out fifth (the one that maximises the smaller of precision and recall),
fits the familiarity model (abstention) and keeps a replay sample of the training features next to the model.
Everything is seeded: a rerun rebuilds the same artifact.

A line's own images: a folder and labels.jsonl (`{"file": ..., "defects": [...]}`, empty for a good cookie).
A seeded fifth is held out; the network is fine-tuned from the base model on the rest together with the
replay sample (so it learns the new line without forgetting the others), the familiarity model is refitted
on both, and the command prints per class precision and recall on the held-out images for the base model and
the new one. Point the service at the result with LINEGUARD_VISION_LOCAL_MODEL.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from services.vision.classes import DEFECT_CLASSES, LABELS
from services.vision.detector import DEFAULT_MODEL_PATH, Familiarity, LocalDetector, Network
from services.vision.features import FEATURE_NAMES, AbstainError, analyse
from services.vision.imaging import decode_image
from services.vision.training.dataset import LabelledImage, folder_set, rendered_set

MODEL_ID = "lineguard-cookie-local"
MODEL_VERSION = "2"
# what the shipped model is trained on: (camera conditions, seed offset, images as a share of n)
TRAINING_MIX: tuple[tuple[str, int, float], ...] = (("varied", 0, 1.0), ("standard", 1, 1 / 6), ("harsh", 2, 1 / 6))
REPLAY_SIZE = 3000
# `deformed` is a property of the outline alone: its output sees only OUTLINE_UNITS hidden units, and those see
# only the outline's features. Without this the network also leaned on colour and texture, and on a line whose
# dough is unlike any in training (cocoa) those pulled mildly deformed cookies below the threshold.
OUTLINE_FEATURES = ("harmonics_2_6", "radius_range", "radius_min_max")
OUTLINE_UNITS = 8
HIDDEN_UNITS = 48


def replay_path(model_path: Path) -> Path:
    return model_path.with_name(model_path.stem + "-replay.npz")


def features_of(items: list[LabelledImage]) -> tuple[np.ndarray, np.ndarray, int]:
    """Feature rows and label rows of the images the pipeline can judge, and how many it abstained on."""
    rows, labels, abstained = [], [], 0
    for item in items:
        try:
            image = decode_image(item.png, working_side=512)
            rows.append(analyse(image.pixels).features)
        except AbstainError:
            abstained += 1
            continue
        labels.append([name in item.defects for name in DEFECT_CLASSES])
    x = np.array(rows, dtype=np.float64).reshape(-1, len(FEATURE_NAMES))
    return x, np.array(labels, dtype=bool).reshape(-1, len(DEFECT_CLASSES)), abstained


def _rendered_chunk(args: tuple[int, int, int, str]) -> tuple[np.ndarray, np.ndarray, int]:
    seed, start, count, conditions = args
    items = list(rendered_set(seed, count, conditions, start=start))
    return features_of(items)


def rendered_features(seed: int, n: int, conditions: str, workers: int = 0) -> tuple[np.ndarray, np.ndarray, int]:
    """Features and labels for the n images `rendered_set(seed, n, conditions)` yields, in parallel chunks."""
    workers = workers or max(1, os.cpu_count() or 1)
    chunk = max(1, -(-n // (workers * 4)))
    jobs = [(seed, start, min(chunk, n - start), conditions) for start in range(0, n, chunk)]
    if workers == 1 or len(jobs) == 1:
        parts = [_rendered_chunk(job) for job in jobs]
    else:
        with ProcessPoolExecutor(workers) as pool:
            parts = list(pool.map(_rendered_chunk, jobs))
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
            sum(p[2] for p in parts))


def _sigmoid(v: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(v, -40, 40)))


def connection_masks(hidden: int) -> tuple[np.ndarray, np.ndarray]:
    """Which weights exist (1) in the first and second layer: the outline path for `deformed` (see
    OUTLINE_FEATURES); every other connection is free."""
    outline = np.isin(np.array(FEATURE_NAMES), OUTLINE_FEATURES)
    first = np.ones((len(FEATURE_NAMES), hidden))
    first[~outline, :OUTLINE_UNITS] = 0.0  # outline units see the outline only
    second = np.ones((hidden, len(DEFECT_CLASSES)))
    second[OUTLINE_UNITS:, DEFECT_CLASSES.index("deformed")] = 0.0  # deformed hears the outline units only
    return first, second


def masks_kept_by(network: Network) -> tuple[np.ndarray, np.ndarray] | None:
    """The connection masks if `network` was trained with them (fine-tuning keeps them), else None (an older
    artifact: fine-tuned without, as it was trained)."""
    first, second = connection_masks(network.w1.shape[1])
    if np.all(network.w1[first == 0] == 0) and np.all(network.w2[second == 0] == 0):
        return first, second
    return None


def fit_network(x: np.ndarray, y: np.ndarray, seed: int, *, hidden: int = HIDDEN_UNITS, epochs: int = 150,
                learning_rate: float = 3e-3, l2: float = 1e-4, start: Network | None = None,
                weights: np.ndarray | None = None, masks: tuple[np.ndarray, np.ndarray] | None = None) -> Network:
    """Adam on the mean log loss of one sigmoid per class; from `start` (fine-tuning) or a seeded init. With
    `masks` (first and second layer, 0 where no connection), masked weights start at 0 and get no gradient."""
    rng = np.random.default_rng(seed)
    if start is not None:
        mean, std = start.mean.copy(), start.std.copy()
        params = [start.w1.copy(), start.b1.copy(), start.w2.copy(), start.b2.copy()]
    else:
        mean, std = x.mean(axis=0), x.std(axis=0) + 1e-6
        d, k = x.shape[1], y.shape[1]
        params = [rng.normal(0, np.sqrt(2.0 / d), (d, hidden)), np.zeros(hidden),
                  rng.normal(0, np.sqrt(1.0 / hidden), (hidden, k)), np.zeros(k)]
    if masks is not None:
        params[0] *= masks[0]
        params[2] *= masks[1]
    z = (x - mean) / std
    target = y.astype(np.float64)
    weights = np.ones(len(x)) if weights is None else weights
    moments = [np.zeros_like(p) for p in params]
    squares = [np.zeros_like(p) for p in params]
    step, batch = 0, 128
    for _ in range(epochs):
        order = rng.permutation(len(z))
        for begin in range(0, len(z), batch):
            index = order[begin:begin + batch]
            zb, yb, wb = z[index], target[index], weights[index]
            w1, b1, w2, b2 = params
            pre = zb @ w1 + b1
            hid = np.maximum(pre, 0.0)
            grad_out = (_sigmoid(hid @ w2 + b2) - yb) * (wb / wb.sum())[:, None]
            grad_hid = (grad_out @ w2.T) * (pre > 0)
            grads = [zb.T @ grad_hid + l2 * w1, grad_hid.sum(axis=0), hid.T @ grad_out + l2 * w2,
                     grad_out.sum(axis=0)]
            if masks is not None:
                grads[0] *= masks[0]
                grads[2] *= masks[1]
            step += 1
            for p, g, m, v in zip(params, grads, moments, squares, strict=True):
                m *= 0.9
                m += 0.1 * g
                v *= 0.999
                v += 0.001 * g * g
                p -= learning_rate * (m / (1 - 0.9**step)) / (np.sqrt(v / (1 - 0.999**step)) + 1e-8)
    return Network(mean, std, *params)


def best_threshold(probabilities: np.ndarray, truth: np.ndarray) -> float:
    """The threshold that maximises min(precision, recall) on held-out images."""
    best, best_score = 0.5, -1.0
    for threshold in np.linspace(0.3, 0.7, 41):  # near 0.5: an extreme threshold fits the noise of a small set
        predicted = probabilities >= threshold
        tp = float((predicted & truth).sum())
        precision = tp / max(float(predicted.sum()), 1.0)
        recall = tp / max(float(truth.sum()), 1.0)
        score = min(precision, recall) - 0.02 * abs(threshold - 0.5)  # near-ties go to the middle
        if score > best_score:
            best, best_score = float(threshold), score
    return round(best, 3)


def artifact_of(network: Network, familiarity: Familiarity, thresholds: dict[str, float], version: str,
                trained_on: dict) -> dict:
    return {
        "model_id": MODEL_ID,
        "version": version,
        "features": list(FEATURE_NAMES),
        "classes": list(DEFECT_CLASSES),
        "network": network.to_dict(),
        "thresholds": thresholds,
        "familiarity": familiarity.to_dict(),
        "trained_on": trained_on,
    }


def train(seed: int, n: int, workers: int = 0) -> tuple[dict, np.ndarray, np.ndarray]:
    """The shipped model from rendered images: (artifact, replay features, replay labels)."""
    x_parts, y_parts = [], []
    for conditions, offset, share in TRAINING_MIX:
        x, y, _ = rendered_features(seed + offset, max(1, round(n * share)), conditions, workers)
        x_parts.append(x)
        y_parts.append(y)
    return fit_artifact(np.concatenate(x_parts), np.concatenate(y_parts), seed, n)


def fit_artifact(x: np.ndarray, y: np.ndarray, seed: int, n: int) -> tuple[dict, np.ndarray, np.ndarray]:
    """Network, thresholds and familiarity from the training features (in TRAINING_MIX order)."""
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    held_out = len(x) // 5
    masks = connection_masks(HIDDEN_UNITS)
    network = fit_network(x[held_out:], y[held_out:], seed, masks=masks)
    p = network.probabilities(x[:held_out])
    thresholds = {name: best_threshold(p[:, c], y[:held_out, c]) for c, name in enumerate(DEFECT_CLASSES)}
    network = fit_network(x, y, seed, masks=masks)  # refit on everything; the thresholds stay the held-out ones
    familiarity = Familiarity.fit(x)
    trained_on = {"seed": seed, "n": n, "images": len(x), "mix": [list(m) for m in TRAINING_MIX]}
    keep = min(REPLAY_SIZE, len(x))
    return artifact_of(network, familiarity, thresholds, MODEL_VERSION, trained_on), x[:keep], y[:keep]


def scores_table(title: str, truth: np.ndarray, predicted: np.ndarray) -> tuple[str, float]:
    """A per class precision / recall table (defect classes and good) and the lowest figure in it."""
    lines = [title, "", "| class | support | precision | recall |", "|---|---|---|---|"]
    lowest = 1.0
    good_truth, good_predicted = ~truth.any(axis=1), ~predicted.any(axis=1)
    columns = [(truth[:, c], predicted[:, c]) for c in range(len(DEFECT_CLASSES))] + [(good_truth, good_predicted)]
    for label, (t, p) in zip(LABELS, columns, strict=True):
        tp = int((t & p).sum())
        precision = tp / max(int(p.sum()), 1) if p.any() else 1.0
        recall = tp / max(int(t.sum()), 1) if t.any() else 1.0
        lowest = min(lowest, precision, recall)
        lines.append(f"| {label} | {int(t.sum())} | {precision:.3f} | {recall:.3f} |")
    return "\n".join(lines), lowest


def train_line(images: Path, labels: Path, base_path: Path, seed: int = 1, test_fraction: float = 0.2,
               line_weight: float = 3.0, epochs: int = 150) -> tuple[dict, str]:
    """Fine-tune the base model on a line's labelled images; (artifact, report on the held-out images)."""
    items = list(folder_set(images, labels))
    if len(items) < 20:
        raise SystemExit(f"{labels} names {len(items)} images; label at least a few hundred")
    order = np.random.default_rng(seed).permutation(len(items))
    n_test = max(1, round(len(items) * test_fraction))
    test = [items[i] for i in order[:n_test]]
    fit = [items[i] for i in order[n_test:]]
    x_fit, y_fit, abstained_fit = features_of(fit)
    x_test, y_test, abstained_test = features_of(test)
    base = LocalDetector(base_path)
    replay = np.load(replay_path(base_path))
    x_replay, y_replay = replay["x"].astype(np.float64), replay["y"].astype(bool)
    x = np.concatenate([x_replay, x_fit])
    y = np.concatenate([y_replay, y_fit])
    weights = np.concatenate([np.ones(len(x_replay)), np.full(len(x_fit), line_weight)])
    network = fit_network(x, y, seed, start=base.network, weights=weights, epochs=epochs, learning_rate=1e-3,
                          masks=masks_kept_by(base.network))
    familiarity = Familiarity.fit(x)
    thresholds = {name: float(t) for name, t in zip(DEFECT_CLASSES, base.thresholds, strict=True)}
    digest = hashlib.sha256(labels.read_bytes()).hexdigest()[:8]
    version = f"{base.model.version}+line.{digest}"
    artifact = artifact_of(network, familiarity, thresholds, version, {
        "base": str(base_path), "base_version": base.model.version, "images": str(images),
        "labels": str(labels), "fit_images": len(x_fit), "test_images": len(x_test), "seed": seed})
    before = base.probabilities(x_test) >= base.thresholds
    after = network.probabilities(x_test) >= np.array(list(thresholds.values()))
    report_before, _ = scores_table(f"base model {base.model.version}, held-out images of this line", y_test,
                                    before)
    report_after, lowest = scores_table(f"new model {version}, the same held-out images", y_test, after)
    report = (f"{len(items)} labelled images: {len(fit)} to learn from, {len(test)} held out "
              f"(the detector abstained on {abstained_fit} and {abstained_test} of them)\n\n"
              f"{report_before}\n\n{report_after}\n\nlowest precision or recall on held-out images: {lowest:.3f}")
    return artifact, report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, help="a line's image folder (with --labels): fine-tune on it")
    parser.add_argument("--labels", type=Path, help="labels.jsonl: {\"file\": ..., \"defects\": [...]} per line")
    parser.add_argument("--base", type=Path, default=DEFAULT_MODEL_PATH, help="model to start from (--images)")
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--n", type=int, default=1200, help="rendered images (varied camera) for the shipped model")
    parser.add_argument("--workers", type=int, default=0, help="processes (default: one per core)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    if args.images is not None or args.labels is not None:
        if args.images is None or args.labels is None:
            parser.error("--images and --labels go together")
        artifact, report = train_line(args.images, args.labels, args.base, args.seed, args.test_fraction)
        out = args.out or Path("var/models") / f"local-detector-{artifact['version']}.json"
        print(report)
    else:
        artifact, x_replay, y_replay = train(args.seed, args.n, args.workers)
        out = args.out or DEFAULT_MODEL_PATH
        out.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(replay_path(out), x=x_replay.astype(np.float32), y=y_replay)
        print(f"thresholds {artifact['thresholds']}, familiarity limit {artifact['familiarity']['limit']}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(artifact, indent=1) + "\n")
    print(f"wrote {out} (version {artifact['version']}) in {time.perf_counter() - started:.0f} s; "
          f"use it with LINEGUARD_VISION_LOCAL_MODEL={out}")


if __name__ == "__main__":
    main()
