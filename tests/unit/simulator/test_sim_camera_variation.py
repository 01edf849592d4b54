"""The camera's plant-to-plant variation: reproducible, broad, labels still true, the simulator's own camera unchanged."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
from PIL import Image

from services.vision.classes import DEFECT_CLASSES as SERVICE_CLASSES
from simulator.camera import (
    DEFECT_CLASSES,
    OUT_OF_DISTRIBUTION,
    CameraConditions,
    render_cookie,
    render_unusual,
)


def test_the_defect_classes_are_defined_once():
    assert DEFECT_CLASSES is SERVICE_CLASSES


@pytest.mark.parametrize(("conditions", "digest"), [("standard", "9f6199c5ed74f129"), ("harsh", "110597cbc30baeea")])
def test_the_simulators_own_cameras_render_byte_for_byte_as_before(conditions, digest):
    # digests of the renderer before variation existed: the simulator's line and its figures do not move
    png, truth = render_cookie(frozenset({"cracked", "bubbled"}), np.random.default_rng(42),
                               conditions=CameraConditions.preset(conditions))
    assert hashlib.sha256(png).hexdigest()[:16] == digest
    assert [t["class"] for t in truth] == ["cracked", "bubbled"]


def test_varied_renders_are_reproducible_and_vary_size_format_and_belt():
    conditions = CameraConditions.varied_training()
    rng = np.random.default_rng(5)
    sizes, formats, borders = set(), set(), []
    for _ in range(24):
        defects = frozenset({"cracked"}) if rng.random() < 0.5 else frozenset()
        seed = int(rng.integers(0, 2**31))
        data, truth = render_cookie(defects, np.random.default_rng(seed), conditions=conditions)
        assert (data, truth) == render_cookie(defects, np.random.default_rng(seed), conditions=conditions)
        image = Image.open(io.BytesIO(data))
        sizes.add(image.size[0])
        formats.add(image.format)
        assert 128 <= image.size[0] <= 512 and image.size[0] == image.size[1]
        for item in truth:  # boxes stay inside the frame after rotation and resizing
            x0, y0, x1, y1 = item["box"]
            assert 0 <= x0 < x1 <= image.size[0] and 0 <= y0 < y1 <= image.size[1]
        pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
        borders.append(np.median(pixels[:3].reshape(-1, 3), axis=0))
    assert len(sizes) > 10 and formats == {"PNG", "JPEG"}
    # belts of several colours and brightness: the border medians spread widely
    assert np.ptp(np.array(borders)[:, 2]) > 80 and np.ptp(np.array(borders).mean(axis=1)) > 80


def test_a_defect_is_still_the_only_difference_under_variation():
    conditions = CameraConditions.varied_training()
    good, _ = render_cookie(frozenset(), np.random.default_rng(7), conditions=conditions)
    bad, truth = render_cookie(frozenset({"bubbled"}), np.random.default_rng(7), conditions=conditions)
    a = np.asarray(Image.open(io.BytesIO(good)).convert("RGB"), dtype=np.float32)
    b = np.asarray(Image.open(io.BytesIO(bad)).convert("RGB"), dtype=np.float32)
    x0, y0, x1, y1 = truth[0]["box"]
    difference = np.abs(a - b).sum(axis=-1)
    inside = difference[y0:y1, x0:x1].mean()
    difference[y0:y1, x0:x1] = 0
    assert inside > 8.0 and difference.mean() < inside / 8  # JPEG blocks may shift a little outside


def test_held_out_values_never_appear_in_training():
    varied, heldout, cocoa = (CameraConditions.varied_training(), CameraConditions.heldout(),
                              CameraConditions.cocoa())
    assert not set(heldout.belts) & set(varied.belts)
    assert not (set(heldout.toppings) - {"none"}) & set(varied.toppings)
    assert not set(cocoa.doughs) & set(varied.doughs)
    assert CameraConditions.preset("heldout") == heldout


@pytest.mark.parametrize("kind", OUT_OF_DISTRIBUTION)
def test_unusual_images_render(kind):
    data = render_unusual(kind, np.random.default_rng(1), size=128)
    assert Image.open(io.BytesIO(data)).size == (128, 128)
    assert data == render_unusual(kind, np.random.default_rng(1), size=128)
