"""Draw a contact sheet of rendered cookies with their true boxes, for people to see the defects.

    python -m services.vision.training.contact_sheet [--out docs/vision-contact-sheet.png] [--seed 5] [--detect]

Rows: standard camera, harsh camera, varied (training) camera, held-out belts and toppings. Columns: good, each defect alone, and a few combinations. With --detect the
local detector's boxes are drawn too (true boxes in red, detected ones in green, detected classes below).
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from simulator.camera import CameraConditions, render_cookie

COLUMNS: list[frozenset[str]] = [
    frozenset(),
    frozenset({"cracked"}),
    frozenset({"deformed"}),
    frozenset({"bubbled"}),
    frozenset({"burnt"}),
    frozenset({"cracked", "burnt"}),
    frozenset({"bubbled", "deformed"}),
    frozenset({"cracked", "bubbled", "deformed"}),
]
TILE = 160
LABEL = 44


def contact_sheet(seed: int = 5, detect: bool = False) -> Image.Image:
    detector = None
    if detect:
        from services.vision.detector import LocalDetector
        from services.vision.imaging import decode_image

        detector = LocalDetector()
    rng = np.random.default_rng(seed)
    rows = [CameraConditions.standard(), CameraConditions.harsh(), CameraConditions.varied_training(),
            CameraConditions.heldout()]
    sheet = Image.new("RGB", (TILE * len(COLUMNS), (TILE + LABEL) * len(rows)), (255, 255, 255))
    pen = ImageDraw.Draw(sheet)
    for r, conditions in enumerate(rows):
        for c, defects in enumerate(COLUMNS):
            png, truth = render_cookie(defects, rng, conditions=conditions)
            tile = Image.open(io.BytesIO(png)).convert("RGB")
            draw = ImageDraw.Draw(tile)
            for item in truth:
                draw.rectangle(item["box"], outline=(230, 30, 30), width=max(2, tile.width // 128))
            found = ""
            if detector is not None:
                detection = detector.detect(decode_image(png, working_side=512))
                for defect in detection.defects:
                    draw.rectangle(defect.box, outline=(40, 220, 60), width=max(1, tile.width // 160))
                found = "seen: " + ("abstained" if detection.abstained
                                    else ", ".join(sorted(detection.classes)) or "good")
            x, y = c * TILE, r * (TILE + LABEL)
            sheet.paste(tile.resize((TILE, TILE), Image.Resampling.LANCZOS), (x, y))
            name = ", ".join(sorted(defects)) or "good"
            pen.text((x + 4, y + TILE + 2), f"{conditions.name} camera", fill=(90, 90, 90))
            pen.text((x + 4, y + TILE + 15), name, fill=(0, 0, 0))
            if found:
                pen.text((x + 4, y + TILE + 28), found, fill=(0, 110, 0))
    return sheet


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("docs/vision-contact-sheet.png"))
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--detect", action="store_true", help="also draw the local detector's answer")
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # a 256-colour palette keeps the committed file small; the cookies stay clearly readable
    contact_sheet(args.seed, args.detect).quantize(256).save(args.out, optimize=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
