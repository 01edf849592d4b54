"""The local detector's classical pipeline: from RGB pixels to a short feature vector and defect regions.

Steps (numpy only, about a dozen whole-frame operations on a 256 x 256 image):
1. White balance against the belt: the frame border shows only belt, whose colour is known, so per-channel
   gains from the border's median undo brightness and colour temperature at once.
2. Segment the cookie at half resolution: distance from the belt colour, smoothed, majority-filtered.
3. Outline: the cookie's radius along 64 rays from its centroid; the harmonics 2..6 of that profile measure
   how far from round it is (deformed).
4. Bake: median brightness and red-blue balance of the dough (burnt).
5. Cracks: a line detector on brightness relative to the dough: pixels darker than both sides in one of four
   directions (a thin dark line), counted inside the cookie.
6. Bubbles: a blob detector: pixels brighter than every one of eight points on a ring around them.
The classifier on top (services/vision/detector.py) is a logistic regression per class trained by
services/vision/train.py on rendered images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

# The belt colour the simulator's conveyor has (simulator/camera.py BELT_RGB); the reference for white balance.
BELT_REFERENCE_RGB = np.array([78.0, 90.0, 106.0], dtype=np.float32)

FEATURE_NAMES: tuple[str, ...] = (
    "harmonics_2_6",
    "radius_range",
    "dough_brightness",
    "dough_red_blue",
    "crack_pixels_low",
    "crack_pixels_high",
    "crack_dense",
    "bubble_pixels_low",
    "bubble_pixels_high",
    "white_pixels",
    "noise_relative",
    "cookie_radius",
)

_RAYS = 64
_BORDER = 4
_CRACK_OFFSET = 5
_BUBBLE_RING = 14


class NoCookieError(ValueError):
    """No cookie could be found in the frame."""


@dataclass
class Analysis:
    features: np.ndarray  # float32, len(FEATURE_NAMES)
    cookie_box: list[int]
    crack_box: list[int] | None
    bubble_box: list[int] | None


def box_filter(image: np.ndarray, radius: int) -> np.ndarray:
    """Mean over a (2r+1) x (2r+1) window, edges replicated; via cumulative sums, cost independent of r."""
    if radius <= 0:
        return image.astype(np.float32, copy=False)
    k = 2 * radius + 1
    padded = np.pad(image.astype(np.float32, copy=False), ((radius + 1, radius), (radius + 1, radius)), mode="edge")
    padded[0, :] = 0.0
    padded[:, 0] = 0.0
    summed = padded.cumsum(axis=0).cumsum(axis=1)
    window = summed[k:, k:] - summed[:-k, k:] - summed[k:, :-k] + summed[:-k, :-k]
    return window / float(k * k)


def _shift(image: np.ndarray, dy: int, dx: int, fill: float) -> np.ndarray:
    """image[y + dy, x + dx], with `fill` where that falls outside the frame."""
    out = np.full_like(image, fill)
    h, w = image.shape
    ys, yd = (slice(dy, h), slice(0, h - dy)) if dy >= 0 else (slice(0, h + dy), slice(-dy, h))
    xs, xd = (slice(dx, w), slice(0, w - dx)) if dx >= 0 else (slice(0, w + dx), slice(-dx, w))
    out[yd, xd] = image[ys, xs]
    return out


def _bbox(mask: np.ndarray, factor: int = 1) -> list[int] | None:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return [int(cols[0]) * factor, int(rows[0]) * factor, int(cols[-1] + 1) * factor, int(rows[-1] + 1) * factor]


def _offset(box: list[int] | None, dx: int, dy: int) -> list[int] | None:
    return None if box is None else [box[0] + dx, box[1] + dy, box[2] + dx, box[3] + dy]


def _blur_u8(image: np.ndarray, radius: int) -> np.ndarray:
    """Box mean of a uint8 image over a (2r+1) x (2r+1) window (Pillow, in C), as uint8."""
    return np.asarray(Image.fromarray(image, mode="L").filter(ImageFilter.BoxBlur(radius)))


def _grow(mask: np.ndarray, radius: int) -> np.ndarray:
    """Dilation of a boolean mask by a square of the given radius."""
    return _blur_u8(mask.view(np.uint8) * np.uint8(255), radius) > 0


def _shrink(mask: np.ndarray, radius: int) -> np.ndarray:
    """Erosion of a boolean mask by a square of the given radius."""
    return _blur_u8(mask.view(np.uint8) * np.uint8(255), radius) >= 255


def analyse(pixels: np.ndarray) -> Analysis:
    """Features and regions of one RGB frame (H x W x 3, uint8)."""
    height, width = pixels.shape[:2]
    if height % 2 or width % 2:
        pixels = pixels[: height - height % 2, : width - width % 2]
        height, width = pixels.shape[:2]
    scale = width / 256.0
    frame = Image.fromarray(np.ascontiguousarray(pixels), mode="RGB")

    # 1. white balance against the belt seen at the border
    b = _BORDER
    border = np.concatenate([
        pixels[:b].reshape(-1, 3), pixels[-b:].reshape(-1, 3),
        pixels[b:-b, :b].reshape(-1, 3), pixels[b:-b, -b:].reshape(-1, 3),
    ])
    belt_seen = np.median(border, axis=0).astype(np.float32)
    gains = BELT_REFERENCE_RGB / np.maximum(belt_seen, 1.0)
    # white-balanced brightness (clipped at 255 by Pillow; dough and belt stay well below)
    luma = np.asarray(frame.convert("L", (0.299 * gains[0], 0.587 * gains[1], 0.114 * gains[2], 0.0)))

    # sensor noise from the top belt strip: median absolute difference of horizontal neighbours
    strip = luma[:b].astype(np.int16)
    noise = max(float(np.median(np.abs(np.diff(strip, axis=1)))) * 1.4826 / np.sqrt(2.0), 0.5)

    # 2. segmentation at half resolution
    half_raw = np.asarray(frame.reduce(2), dtype=np.float32)
    half = half_raw * gains
    offset = half - BELT_REFERENCE_RGB
    # channel by channel: numpy reduces a length-3 last axis slowly
    distance = np.sqrt(offset[..., 0] ** 2 + offset[..., 1] ** 2 + offset[..., 2] ** 2)
    distance = box_filter(distance, 1)
    mask = _blur_u8(((distance > 60.0) * 255).astype(np.uint8), 2) > 127
    area = np.count_nonzero(mask)
    if area < 0.01 * mask.size:
        raise NoCookieError("no cookie found in the image")
    ys, xs = np.nonzero(mask)
    cy, cx = float(ys.mean()), float(xs.mean())

    # 3. outline along rays from the centroid
    angles = np.linspace(0.0, 2 * np.pi, _RAYS, endpoint=False)
    max_r = max(height, width) // 2
    steps = np.arange(max_r, dtype=np.float32)
    ray_y = np.clip(np.rint(cy + np.sin(angles)[:, None] * steps), 0, mask.shape[0] - 1).astype(np.intp)
    ray_x = np.clip(np.rint(cx + np.cos(angles)[:, None] * steps), 0, mask.shape[1] - 1).astype(np.intp)
    profile = mask[ray_y, ray_x].sum(axis=1).astype(np.float32)
    mean_radius = float(profile.mean())
    spectrum = np.abs(np.fft.rfft(profile / max(mean_radius, 1.0))) * (2.0 / _RAYS)
    harmonics = float(spectrum[2:7].sum())
    smoothed = (np.roll(profile, 1) + profile + np.roll(profile, -1)) / 3.0
    radius_range = float((smoothed.max() - smoothed.min()) / max(mean_radius, 1.0))

    # interior: cookie mask eroded by 3 half-resolution pixels, back at full resolution
    interior_half = _shrink(mask, 3)
    if np.count_nonzero(interior_half) < 12:
        raise NoCookieError("the object in the image is too small to be a cookie")
    # full-resolution work happens only in the cookie's box (plus a margin of belt): a quarter of the frame
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    margin = 6
    hy0, hy1 = max(0, int(rows[0]) - margin), min(mask.shape[0], int(rows[-1]) + 1 + margin)
    hx0, hx1 = max(0, int(cols[0]) - margin), min(mask.shape[1], int(cols[-1]) + 1 + margin)
    crop_half = (slice(hy0, hy1), slice(hx0, hx1))
    crop = (slice(2 * hy0, 2 * hy1), slice(2 * hx0, 2 * hx1))
    interior = interior_half[crop_half].repeat(2, axis=0).repeat(2, axis=1)
    luma_crop = luma[crop]

    # 4. bake
    dough_half = half[interior_half]
    dough_level = max(float(np.median(luma_crop[interior])), 8.0)
    red_blue = float(np.median(dough_half[:, 0] - dough_half[:, 2]))
    noise_relative = noise / dough_level

    # 6. bubbles first (cracks are not searched next to them), at half resolution: a blob brighter than at
    # least six of eight points on a ring around it (two may fall inside an elongated blob of merged bubbles).
    # The signal is each pixel's smallest white-balanced channel: blue for dough of any bake, high on a blister,
    # and the last channel to clip in an over-exposed frame. Outside the cookie counts as bright, so the rim
    # never responds; thresholds rise with the noise.
    lowest = np.minimum(np.minimum(half[..., 0], half[..., 1]), half[..., 2])
    lowest_level = max(float(np.median(lowest[interior_half])), 8.0)
    lowest_noise = noise * 1.5 / lowest_level  # per-channel noise is about 1.5 x the luma noise
    blob = box_filter(np.where(mask, lowest / lowest_level, 10.0), 1)
    r = max(2, round(_BUBBLE_RING * scale / 2))
    rq = max(1, round(r * 0.7071))
    first = np.full_like(blob, -10.0)
    second = first.copy()
    third = first.copy()
    for dy, dx in ((0, r), (r, 0), (0, -r), (-r, 0), (rq, rq), (rq, -rq), (-rq, rq), (-rq, -rq)):
        value = _shift(blob, dy, dx, 10.0)
        np.maximum(third, np.minimum(second, value), out=third)
        np.maximum(second, np.minimum(first, value), out=second)
        np.maximum(first, value, out=first)
    bubble_response = blob - third
    bubble_low_half = (bubble_response > max(0.12, 0.8 * lowest_noise)) & interior_half
    bubble_high_half = (bubble_response > max(0.3, 1.6 * lowest_noise)) & interior_half
    # blisters are near white at their top (clipped to white in over-exposed frames); dough never is
    clipped = np.minimum(np.minimum(half_raw[..., 0], half_raw[..., 1]), half_raw[..., 2]) > 235.0
    white_half = ((lowest > 160.0) | clipped) & interior_half
    near_bubble = _grow(bubble_high_half, 1)[crop_half].repeat(2, axis=0).repeat(2, axis=1)

    # 5. cracks: darker than both sides along one of four directions, in grey levels relative to the dough
    capped = np.minimum(luma_crop, np.uint8(min(255, 1.3 * dough_level)))
    centre = _blur_u8(capped, 1).astype(np.int16)
    sides = _blur_u8(capped, 2).astype(np.int16)
    d = max(2, round(_CRACK_OFFSET * scale))
    q = max(2, round(d * 0.7071))
    crack_response = np.full(centre.shape, -255, dtype=np.int16)
    for dy, dx in ((0, d), (d, 0), (q, q), (q, -q)):
        darker_than_both = np.minimum(_shift(sides, dy, dx, 0), _shift(sides, -dy, -dx, 0)) - centre
        np.maximum(crack_response, darker_than_both, out=crack_response)
    searched = interior & ~near_bubble
    crack_low = (crack_response > dough_level * max(0.12, 1.2 * noise_relative)) & searched
    crack_high = (crack_response > dough_level * max(0.25, 2.0 * noise_relative)) & searched
    crack_dense = (_blur_u8(crack_low.view(np.uint8) * np.uint8(255), 2) > 102) & searched

    cookie_area = max(float(4 * np.count_nonzero(interior_half)), 1.0)
    per_area = 1000.0 / cookie_area  # counts per 1000 dough pixels: independent of cookie size
    features = np.array(
        [
            harmonics,
            radius_range,
            dough_level / 100.0,
            red_blue / 100.0,
            np.log1p(np.count_nonzero(crack_low) * per_area),
            np.log1p(np.count_nonzero(crack_high) * per_area),
            np.log1p(np.count_nonzero(crack_dense) * per_area),
            np.log1p(4.0 * np.count_nonzero(bubble_low_half) * per_area),
            np.log1p(4.0 * np.count_nonzero(bubble_high_half) * per_area),
            np.log1p(4.0 * np.count_nonzero(white_half) * per_area),
            noise_relative,
            2.0 * mean_radius / (62.0 * scale),
        ],
        dtype=np.float32,
    )
    bubble_box = _bbox(bubble_high_half, 2) or _bbox(bubble_low_half, 2)
    if bubble_box is not None:  # the response covers a blister's top; its edge lies a few pixels further out
        pad = round(3 * scale)
        bubble_box = [max(0, bubble_box[0] - pad), max(0, bubble_box[1] - pad),
                      min(width, bubble_box[2] + pad), min(height, bubble_box[3] + pad)]
    return Analysis(
        features=features,
        cookie_box=_bbox(mask, 2) or [0, 0, width, height],
        crack_box=_offset(_bbox(crack_dense), 2 * hx0, 2 * hy0),
        bubble_box=bubble_box,
    )
