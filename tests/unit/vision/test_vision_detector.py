"""The local detector: at budget on fresh seeds and on belts and toppings it never saw, abstains on what is not a
cookie seen whole, well-formed output, training reproducible, a line's own images learnt."""

from __future__ import annotations

import io
import json
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image, ImageDraw

from services.vision.classes import DEFECT_CLASSES
from services.vision.detector import Familiarity, LocalDetector, make_detector
from services.vision.features import FEATURE_NAMES, analyse
from services.vision.imaging import decode_image
from services.vision.training import evaluate, train
from services.vision.training.dataset import write_folder
from simulator.camera import OUT_OF_DISTRIBUTION, CameraConditions, render_cookie, render_unusual

# Seeds nobody trained on (training uses 1 to 3); the full-size runs are `python -m services.vision.evaluate`.
IMAGES = 100


@pytest.fixture(scope="module")
def detector() -> LocalDetector:
    return LocalDetector()


def assert_floor(scores: evaluate.Scores, floor: float, name: str) -> None:
    for label in evaluate.LABELS:
        assert scores.support[label] >= 12, f"too few {label} images to judge"
        precision, recall, _ = scores.metrics(label)
        assert precision >= floor and recall >= floor, (
            f"{name} {label}: precision {precision:.3f} recall {recall:.3f}\n" + evaluate.report(scores, name))


def test_standard_camera_at_budget_on_a_fresh_seed(detector):
    scores = evaluate.score_images(detector, 9001, IMAGES, "standard")
    assert scores.images == IMAGES and scores.abstained == 0
    assert_floor(scores, 0.95, "standard")


def test_belts_and_toppings_never_trained_on_at_budget(detector):
    # held-out belts (light grey, green) and topping (nuts); sizes kept small here only to keep the test quick
    conditions = replace(CameraConditions.heldout(), image_size=(128, 320))
    rng = np.random.default_rng(9002)
    items = []
    from services.vision.training.dataset import LabelledImage
    from simulator.camera import random_defects

    for _ in range(IMAGES):
        defects = random_defects(rng, 0.6)
        data, truth = render_cookie(defects, rng, conditions=conditions)
        items.append(LabelledImage(data, defects, truth))
    scores = evaluate.score_items(detector, items)
    assert scores.abstained <= 2
    assert_floor(scores, 0.90, "heldout")


@pytest.mark.parametrize("kind", OUT_OF_DISTRIBUTION)
def test_out_of_distribution_images_are_abstentions(detector, kind):
    rng = np.random.default_rng(77)
    for _ in range(2):
        detection = detector.detect(decode_image(render_unusual(kind, rng), working_side=512))
        assert detection.abstained and detection.verdict == "abstained", (kind, detection)
        assert detection.defects == () and detection.abstention and detection.message


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


def test_a_blank_belt_is_an_abstention_not_an_error(detector):
    pixels = np.full((256, 256, 3), (78, 90, 106), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    detection = detector.detect(decode_image(buffer.getvalue()))
    assert detection.abstained and detection.abstention == "no_cookie"


def test_the_same_cookie_at_any_resolution_gets_the_same_verdict(detector):
    for seed, defects in ((40, frozenset({"cracked"})), (41, frozenset({"bubbled"})), (42, frozenset())):
        png, _ = render_cookie(defects, np.random.default_rng(seed), size=512)
        image = Image.open(io.BytesIO(png))
        for side in (160, 256, 512):
            buffer = io.BytesIO()
            image.resize((side, side), Image.Resampling.LANCZOS).save(buffer, format="PNG")
            assert detector.detect(decode_image(buffer.getvalue())).classes == defects, (seed, side)


def test_training_is_reproducible_and_the_artifact_loads(tmp_path):
    first, x1, _ = train.train(seed=5, n=12, workers=1)
    second, x2, _ = train.train(seed=5, n=12, workers=1)
    assert first == second and np.array_equal(x1, x2)
    assert set(first["thresholds"]) == set(DEFECT_CLASSES)
    path = tmp_path / "model.json"
    path.write_text(json.dumps(first))
    assert LocalDetector(path).classes == list(DEFECT_CLASSES)


def test_a_lines_own_labelled_images_fine_tune_a_new_version(tmp_path, capsys):
    folder = tmp_path / "line"
    labels = write_folder(folder, seed=600, n=30, conditions="cocoa")
    out = tmp_path / "line-model.json"
    train.main(["--images", str(folder), "--labels", str(labels), "--out", str(out)])
    printed = capsys.readouterr().out
    assert "| good |" in printed and "held-out" in printed and str(out) in printed
    model = LocalDetector(out)
    assert model.model.version.startswith("2+line.")
    assert train.masks_kept_by(model.network) is not None  # fine-tuning kept deformed's outline-only wiring
    first = json.loads(labels.read_text().splitlines()[0])["file"]
    assert model.detect(decode_image((folder / first).read_bytes())).model == model.model
    code = evaluate.main(["--images", str(folder), "--labels", str(labels), "--model", str(out)])
    assert code in (0, 1) and "| cracked |" in capsys.readouterr().out


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
    assert "| cracked |" in out and "| good |" in out and "Confusion" in out and "abstained" in out
    assert code in (0, 1)


def test_cracks_stand_out_among_chocolate_chips_on_cocoa_dough():
    # the same seed renders the same cookie with and without a crack: only the crack may make a dark line
    line = FEATURE_NAMES.index("dark_line_length")
    cracked, good, chips = 0, 0, 0
    for seed in range(60, 72):
        for defects in (frozenset(), frozenset({"cracked"})):
            png, _ = render_cookie(defects, np.random.default_rng(seed), conditions=CameraConditions.cocoa())
            features = analyse(decode_image(png).pixels).features
            if defects:
                cracked += features[line] > 0
            else:
                good += features[line] > 0
                chips += features[FEATURE_NAMES.index("dark_blob_count")] > 0
    assert cracked == 12 and good <= 1
    assert chips >= 3  # cookies with chips among them: compact blobs, not lines


def test_a_feature_outside_its_training_range_is_an_abstention(detector):
    # a smooth pink disc on a teal background: round and warm enough, but no dough ever had that hue
    image = Image.new("RGB", (256, 256), (60, 200, 170))
    ImageDraw.Draw(image).ellipse((70, 80, 190, 180), fill=(240, 170, 185))
    pixels = np.asarray(image, dtype=np.float32) + np.random.default_rng(3).normal(0, 3, (256, 256, 3))
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, format="PNG")
    detection = detector.detect(decode_image(buffer.getvalue()))
    assert detection.abstained and detection.abstention == "unfamiliar"
    assert "outside its training range" in detection.message
    # an artifact from before the ranges (distance only) still loads and judges
    older = {k: v for k, v in detector.familiarity.to_dict().items() if k not in ("low", "high")}
    assert Familiarity.from_dict(older).outside(np.full(len(detector.familiarity.mean), 1e9)).size == 0


def test_a_blister_the_belts_colour_does_not_cut_the_outline():
    # a dark round cookie on a grey belt with grey blisters near its centre: the blisters are part of the cookie
    image = Image.new("RGB", (256, 256), (150, 152, 158))
    draw = ImageDraw.Draw(image)
    draw.ellipse((58, 58, 198, 198), fill=(52, 32, 24))
    for box in ((112, 110, 136, 134), (130, 128, 150, 148), (104, 132, 120, 148)):
        draw.ellipse(box, fill=(150, 152, 158))
    features = analyse(np.asarray(image)).features
    assert features[FEATURE_NAMES.index("radius_min_max")] > 0.9  # round: rays run to the rim, not to a blister
    assert features[FEATURE_NAMES.index("radius_range")] < 0.1


def test_holes_are_filled_but_belt_reaching_the_frame_is_not():
    from services.vision.features import _fill_holes

    mask = np.zeros((20, 20), dtype=bool)
    mask[4:16, 4:16] = True
    mask[8:11, 8:11] = False  # a hole inside the blob
    mask[0:20, 1] = True  # a wall that, with the frame's edge, encloses column 0: still belt reaching the edge
    filled = _fill_holes(mask)
    assert filled[8:11, 8:11].all()
    assert not filled[:, 0].any() and not filled[0:4, 4:16].any()


def test_deformed_is_judged_from_the_outline_alone(detector):
    # the shipped network: changing any feature but the outline's leaves the deformed score as it was
    outline = [FEATURE_NAMES.index(name) for name in train.OUTLINE_FEATURES]
    others = [i for i in range(len(FEATURE_NAMES)) if i not in outline]
    deformed = DEFECT_CLASSES.index("deformed")
    rng = np.random.default_rng(3)
    base = rng.normal(size=len(FEATURE_NAMES)) * detector.network.std + detector.network.mean
    changed = base.copy()
    changed[others] += rng.normal(size=len(others)) * detector.network.std[others] * 3
    before, after = detector.network.probabilities(np.stack([base, changed]))[:, deformed]
    assert before == pytest.approx(after, abs=1e-12)
    reshaped = base.copy()
    reshaped[outline] += detector.network.std[outline] * 3
    assert detector.network.probabilities(reshaped[None])[0, deformed] != pytest.approx(before, abs=1e-6)
    assert train.masks_kept_by(detector.network) is not None  # so fine-tuning keeps the wiring
