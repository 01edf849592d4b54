"""The local detector: at budget on fresh seeds (standard and harsh camera), well-formed output, reproducible."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from services.vision import evaluate, train
from services.vision.detector import DEFECT_CLASSES, DetectionError, LocalDetector, make_detector
from services.vision.imaging import decode_image
from simulator.camera import render_cookie

# Seeds nobody trained on (training uses 1 and 2); the full-size run is `python -m services.vision.evaluate`.
IMAGES_PER_CONDITION = 200


@pytest.fixture(scope="module")
def detector() -> LocalDetector:
    return LocalDetector()


@pytest.mark.parametrize(("conditions", "seed"), [("standard", 9001), ("harsh", 9002)])
def test_precision_and_recall_at_budget_on_a_fresh_seed(detector, conditions, seed):
    scores = evaluate.score_images(detector, seed, IMAGES_PER_CONDITION, conditions)
    assert scores.images == IMAGES_PER_CONDITION and scores.undecided == 0
    for label in evaluate.LABELS:
        assert scores.support[label] >= 25, f"too few {label} images to judge"
        precision, recall, _ = scores.metrics(label)
        assert precision >= 0.95 and recall >= 0.95, (
            f"{conditions} {label}: precision {precision:.3f} recall {recall:.3f}\n"
            + evaluate.report(scores, conditions))


def test_output_is_well_formed(detector):
    png, truth = render_cookie(frozenset({"cracked", "bubbled", "burnt"}), np.random.default_rng(31))
    detection = detector.detect(decode_image(png))
    assert detection.verdict == "defective"
    assert detection.classes == {"cracked", "bubbled", "burnt"}
    for defect in detection.defects:
        x0, y0, x1, y1 = defect.box
        assert 0 <= x0 < x1 <= 256 and 0 <= y0 < y1 <= 256
        assert 0.0 <= defect.confidence <= 1.0
        true_box = next(t["box"] for t in truth if t["class"] == defect.defect_class)
        assert evaluate.iou(true_box, defect.box) > 0.3, defect
    assert set(detection.scores) == set(DEFECT_CLASSES)
    good = detector.detect(decode_image(render_cookie(frozenset(), np.random.default_rng(32))[0]))
    assert good.verdict == "ok" and good.defects == ()
    assert detection.model.provider == "local" and detection.latency_ms > 0


def test_no_cookie_is_a_detection_error(detector):
    pixels = np.full((256, 256, 3), (78, 90, 106), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    with pytest.raises(DetectionError, match="no cookie"):
        detector.detect(decode_image(buffer.getvalue()))


def test_training_is_reproducible_and_the_artifact_loads(tmp_path):
    first = train.train(seed=5, n=12, workers=1)
    second = train.train(seed=5, n=12, workers=1)
    assert first == second
    assert set(first["weights"]) == set(DEFECT_CLASSES)
    path = tmp_path / "model.json"
    path.write_text(json.dumps(first))
    assert LocalDetector(path).classes == list(DEFECT_CLASSES)


def test_a_missing_or_stale_artifact_says_how_to_rebuild(tmp_path):
    with pytest.raises(FileNotFoundError, match="services.vision.train"):
        LocalDetector(tmp_path / "missing.json")
    stale = json.loads(train.DEFAULT_MODEL_PATH.read_text())
    stale["features"] = ["something_else"]
    (tmp_path / "stale.json").write_text(json.dumps(stale))
    with pytest.raises(ValueError, match="retrain"):
        LocalDetector(tmp_path / "stale.json")
    with pytest.raises(ValueError, match="unknown detector"):
        make_detector("magic")


def test_evaluate_command_prints_the_table(capsys):
    code = evaluate.main(["--seed", "77", "--n", "12", "--workers", "1"])
    out = capsys.readouterr().out
    assert "| cracked |" in out and "| good |" in out and "Confusion" in out
    assert code in (0, 1)
