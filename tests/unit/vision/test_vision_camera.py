"""The simulator's camera: deterministic per seed, defects visible where the truth boxes say."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from simulator.camera import DEFECT_CLASSES, CameraConditions, random_defects, render_cookie


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float32)


def test_same_seed_same_image_and_truth():
    for defects in (frozenset(), frozenset({"cracked", "bubbled"}), frozenset(DEFECT_CLASSES)):
        a = render_cookie(defects, np.random.default_rng(42), conditions=CameraConditions.harsh())
        b = render_cookie(defects, np.random.default_rng(42), conditions=CameraConditions.harsh())
        assert a == b


def test_different_seeds_differ():
    a, _ = render_cookie(frozenset(), np.random.default_rng(1))
    b, _ = render_cookie(frozenset(), np.random.default_rng(2))
    assert a != b


def test_output_is_a_png_of_the_requested_size():
    png, truth = render_cookie(frozenset(), np.random.default_rng(0), size=128)
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.size == (128, 128) and image.mode == "RGB"
    assert truth == []


@pytest.mark.parametrize("defect", DEFECT_CLASSES)
def test_each_defect_changes_the_image_inside_its_box(defect):
    # same seed: the only difference between the two renders is the defect
    good, _ = render_cookie(frozenset(), np.random.default_rng(7))
    bad, truth = render_cookie(frozenset({defect}), np.random.default_rng(7))
    assert [t["class"] for t in truth] == [defect]
    x0, y0, x1, y1 = truth[0]["box"]
    assert 0 <= x0 < x1 <= 256 and 0 <= y0 < y1 <= 256
    difference = np.abs(pixels(good) - pixels(bad)).sum(axis=-1)
    inside = difference[y0:y1, x0:x1]
    assert inside.mean() > 8.0, f"{defect} barely changes the image"
    outside = difference.copy()
    outside[y0:y1, x0:x1] = 0
    if defect in ("cracked", "bubbled"):  # local defects stay inside their box (a little blur aside)
        assert outside.mean() < inside.mean() / 20


def test_burnt_is_darker_and_deformed_changes_the_outline():
    good = pixels(render_cookie(frozenset(), np.random.default_rng(5))[0])
    burnt = pixels(render_cookie(frozenset({"burnt"}), np.random.default_rng(5))[0])
    centre = (slice(108, 148), slice(108, 148))
    assert burnt[centre].mean() < good[centre].mean() * 0.6
    # deformed: the same cookie's outline moves; pixels change along the rim, not in the middle
    deformed = pixels(render_cookie(frozenset({"deformed"}), np.random.default_rng(5))[0])
    changed = np.abs(deformed - good).sum(axis=-1) > 60
    assert changed.sum() > 500 and not changed[centre].any()


def test_several_defects_at_once_each_get_a_box():
    _, truth = render_cookie(frozenset({"cracked", "burnt", "bubbled"}), np.random.default_rng(9))
    assert [t["class"] for t in truth] == ["cracked", "bubbled", "burnt"]


def test_harsh_conditions_change_lighting_and_noise():
    standard = pixels(render_cookie(frozenset(), np.random.default_rng(3))[0])
    harsh = pixels(render_cookie(frozenset(), np.random.default_rng(3), conditions=CameraConditions.harsh())[0])
    # the belt strip at the top: noise shows up as pixel-to-pixel differences
    assert np.abs(np.diff(harsh[:4], axis=1)).mean() > 2 * np.abs(np.diff(standard[:4], axis=1)).mean()


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="unknown defect classes"):
        render_cookie(frozenset({"mouldy"}), np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown camera conditions"):
        CameraConditions.preset("foggy")


def test_random_defects_mixes_good_and_multiple():
    rng = np.random.default_rng(0)
    sets = [random_defects(rng, 0.5) for _ in range(400)]
    good = sum(1 for s in sets if not s)
    assert 150 < good < 250
    assert any(len(s) >= 2 for s in sets)
    assert {c for s in sets for c in s} == set(DEFECT_CLASSES)


def test_emitter_posts_multipart_and_reports_refusals():
    import asyncio

    from aiohttp import web
    from aiohttp.test_utils import TestServer

    from simulator.camera import CameraEmitter

    received: list[dict] = []

    async def intake(request: web.Request) -> web.Response:
        form = await request.post()
        received.append({k: (v.file.read() if hasattr(v, "file") else v) for k, v in form.items()})
        received[-1]["authorization"] = request.headers.get("Authorization")
        return web.json_response({}, status=200 if form["item_id"] != "refused" else 422)

    async def scenario() -> None:
        app = web.Application()
        app.router.add_post("/v1/images", intake)
        async with TestServer(app) as server:
            emitter = CameraEmitter(str(server.make_url("/v1/images")), rng=np.random.default_rng(4),
                                    token="cam-token")
            await emitter.emit("line1", "detector", "i1", "2026-11-29T12:00:00.000Z", frozenset({"burnt"}))
            with pytest.raises(RuntimeError, match="HTTP 422"):
                await emitter.emit("line1", "detector", "refused", "2026-11-29T12:00:01.000Z", frozenset())
            await emitter.close()
            assert emitter.sent == 1 and emitter.failed == 1
            assert [t["class"] for t in emitter.ground_truth["i1"]] == ["burnt"]

    asyncio.run(scenario())
    first = received[0]
    assert first["line_id"] == "line1" and first["station"] == "detector" and first["item_id"] == "i1"
    assert first["captured_at"] == "2026-11-29T12:00:00.000Z"
    assert first["authorization"] == "Bearer cam-token"  # the camera's token goes with every image
    assert Image.open(io.BytesIO(first["image"])).size == (256, 256)
