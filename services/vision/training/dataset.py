"""Labelled image sets: rendered by the simulator's camera, or a plant's own folder of images with labels.jsonl.

A folder set is a directory of images plus a JSON-lines file, one line per image:

    {"file": "0001.jpg", "defects": []}                       # a good cookie
    {"file": "0002.jpg", "defects": ["cracked", "burnt"]}

`python -m services.vision.training.dataset --out DIR --conditions cocoa --n 300` writes a rendered set in that
format (what a plant's labelling produces), for trying `train --images` and `evaluate --images`.
"""

from __future__ import annotations

import argparse
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from services.vision.classes import DEFECT_CLASSES
from simulator.camera import CameraConditions, random_defects, render_cookie


@dataclass(frozen=True)
class LabelledImage:
    png: bytes  # the encoded image (PNG or JPEG)
    defects: frozenset[str]
    truth: list[dict]
    name: str = ""


def rendered_set(
    seed: int, n: int, conditions: CameraConditions | str = "standard", defect_rate: float = 0.6, size: int = 256,
    start: int = 0,
) -> Iterator[LabelledImage]:
    """Images start .. start + n - 1 of one seed: the same seed always gives the same images and labels, and
    each image has its own random stream, so a slice renders only its own images (parallel chunks)."""
    if isinstance(conditions, str):
        conditions = CameraConditions.preset(conditions)
    for index in range(start, start + n):
        rng = np.random.default_rng([seed, index])
        defects = random_defects(rng, defect_rate)
        png, truth = render_cookie(defects, rng, size=size, conditions=conditions)
        yield LabelledImage(png, defects, truth, f"{index:05d}")


class LabelError(ValueError):
    """labels.jsonl is malformed; the message names the line."""


def read_labels(labels: Path) -> list[tuple[str, frozenset[str]]]:
    rows = []
    for number, line in enumerate(labels.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            name, defects = item["file"], item["defects"]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise LabelError(f"{labels}:{number}: expected {{\"file\": ..., \"defects\": [...]}} ({error})") from None
        unknown = set(defects) - set(DEFECT_CLASSES)
        if not isinstance(defects, list) or unknown:
            raise LabelError(f"{labels}:{number}: defects must be a list of {', '.join(DEFECT_CLASSES)}; "
                             f"got {defects!r}")
        rows.append((str(name), frozenset(defects)))
    return rows


def folder_set(images: Path, labels: Path) -> Iterator[LabelledImage]:
    """The images a labels.jsonl names, in its order."""
    for name, defects in read_labels(labels):
        yield LabelledImage((images / name).read_bytes(), defects, [], name)


def write_folder(out: Path, seed: int, n: int, conditions: str, defect_rate: float = 0.6) -> Path:
    """Render n labelled images into `out` (images + labels.jsonl); returns the labels file."""
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    for item in rendered_set(seed, n, conditions, defect_rate):
        kind = Image.open(io.BytesIO(item.png)).format.lower()
        name = f"{item.name}.{'jpg' if kind == 'jpeg' else kind}"
        (out / name).write_bytes(item.png)
        lines.append(json.dumps({"file": name, "defects": sorted(item.defects)}))
    labels = out / "labels.jsonl"
    labels.write_text("\n".join(lines) + "\n")
    return labels


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=500)
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--conditions", default="cocoa")
    args = parser.parse_args(argv)
    labels = write_folder(args.out, args.seed, args.n, args.conditions)
    print(f"wrote {args.n} images and {labels}")


if __name__ == "__main__":
    main()
