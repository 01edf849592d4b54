"""The local detector's pipeline: from RGB pixels of any size to a feature vector and defect regions.

Nothing here assumes a belt colour, an image size or a lighting:
1. Working frame: the image reduced to 128 px on its longer side.
2. Belt model per image: a colour plane (per channel a + b x + c y, so a lighting gradient is part of it) fitted
   robustly to the frame's border, and the border's own spread; everything that differs from that model by more
   than the belt's texture and noise is foreground. The belt may be any colour, dark, light or a metal mesh.
3. The inspected cookie: the foreground blob nearest the centre, its holes filled (a blister the belt's colour is
   part of the cookie), traced along 64 rays from its centre (toppings and neighbouring cookies cut by the
   frame's edge do not matter). Its radius profile gives the shape
   (deformed) and says whether it is a cookie at all (abstention: nothing found, cut by the frame, not round
   enough, too small or too large, not dough-coloured).
4. Scale: the cookie is cut out and resampled to a 112 x 112 canonical crop, so every later measure is relative
   to the cookie's own size, whatever the camera's distance or resolution.
5. Colour: brightness is measured relative to the dough's own median (robust to exposure and colour casts);
   the dough's colour relative to the belt and its chroma feed the burnt measure, and so does its texture (the
   spread of its brightness), measured without what is brighter than the dough (toppings, blisters).
6. Local structure on the crop, each a ring detector (a pixel against 8 points on a ring around it):
   cracks are darker than most of the ring but not all of it (a line leaves the ring twice); chocolate chips
   and other dark inclusions are darker than the whole ring (a blob); blisters are brighter than most of the
   ring on the smallest colour channel, and large; sugar crystals and seeds are small bright specks.
7. Dark lines among dark inclusions: the connected components of the pixels darker than the dough around them,
   by shape (a crack is long and thin, or curved; a chip or nut is compact), so chocolate dough with chips still
   shows its cracks; the crack measures of step 6 leave out the compact ones and 2 px around them.
The classifier on top (services/vision/detector.py, a small neural network in numpy) is trained by
services/vision/training/train.py on broadly randomised renders, and retrained from a plant's own images.
OpenCV (headless) reduces the working frame (area averaging), fills the blob's holes and does the box means, the
ring detectors' min and max and the belt fit's small solve, where Pillow's filters and numpy's per-call overhead
and strided loops cost several times more; Pillow cuts and resamples the canonical crop.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np
from PIL import Image

FEATURE_NAMES: tuple[str, ...] = (
    "harmonics_2_6",
    "radius_range",
    "radius_min_max",
    "size_in_frame",
    "dough_luma",
    "dough_vs_belt",
    "chroma_red_blue",
    "chroma_green_blue",
    "saturation",
    "dark_fraction",
    "texture_spread",
    "rim_ratio",
    "luma_p05",
    "crack_line_low",
    "crack_line_high",
    "crack_line_long",
    "crack_line_max",
    "crack_line_energy",
    "dark_blobs",
    "dark_blob_max",
    "bubble_low",
    "bubble_high",
    "bubble_max",
    "bubble_energy",
    "white_area",
    "bright_specks",
    "noise",
    "belt_spread",
    "dark_line_length",
    "dark_line_total",
    "dark_line_ratio",
    "dark_line_width",
    "dark_blob_count",
)

SEG = 128  # working frame: longer side, pixels
CANON = 112  # canonical crop side, pixels
_RAYS = 64
_BORDER = 3
_ANGLES = np.linspace(0.0, 2 * np.pi, _RAYS, endpoint=False)
_COS, _SIN = np.cos(_ANGLES), np.sin(_ANGLES)
_SAME_COLOUR = 0.1  # dough and belt closer than this share of the dough's brightness: the frame is all dough
_CROP_MARGIN = 1.08  # crop half-side relative to the cookie's largest radius
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)

# canonical crop geometry, computed once: every pixel's angle and distance from the crop's centre
_cy, _cx = np.mgrid[0:CANON, 0:CANON].astype(np.float32) + 0.5 - CANON / 2.0
_CANON_RHO = np.hypot(_cx, _cy)
_CANON_RAY = ((np.arctan2(_cy, _cx) % (2 * np.pi)) / (2 * np.pi) * _RAYS).astype(np.float32)


class AbstainError(ValueError):
    """The image is not one the detector can judge; `reason` is a short label (metrics), the message says why."""

    reason = "unfamiliar"

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class NoCookieError(AbstainError):
    """No cookie could be found in the frame."""

    reason = "no_cookie"


@dataclass
class Analysis:
    features: np.ndarray  # float32, len(FEATURE_NAMES)
    cookie_box: list[int]
    crack_box: list[int] | None
    bubble_box: list[int] | None


def _blur(image: np.ndarray, radius: int) -> np.ndarray:
    """Box mean over (2r+1)^2 of an image (float32, or uint8 rounded), edges replicated (OpenCV's box filter: a
    fraction of the time of numpy cumulative sums or Pillow's BoxBlur, and no float32 rounding drift)."""
    k = 2 * radius + 1
    return cv2.blur(image, (k, k), borderType=cv2.BORDER_REPLICATE)


_RINGS = 16  # dough brightness profile from the centre to the outline
_CHIP_MARGIN = np.ones((5, 5), np.uint8)  # a chip's pixels and 2 px around them leave the crack measures
_NEIGHBOURS = ((0, 1), (1, -1), (1, 0), (1, 1))  # half of the 8-neighbourhood: each pair once


def _components(mask: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray,
                                                                np.ndarray]:
    """The 8-connected components of a sparse mask: per component its pixel count, the length and width of the
    line it is (sqrt(12 x variance) along and across its principal axis: a segment of length L gives L) and the
    highest of `values` in it; and per pixel of the mask (in np.nonzero order) the index of its component.

    Labelled on the mask's pixels only (a few hundred), by min-label propagation with pointer jumping."""
    ys, xs = np.nonzero(mask)
    n = ys.size
    if n == 0:
        empty = np.zeros(0, dtype=np.float64)
        return empty, empty, empty, empty, np.zeros(0, dtype=np.intp)
    h, w = mask.shape
    index = np.full((h + 2, w + 2), -1, dtype=np.intp)
    index[ys + 1, xs + 1] = np.arange(n)
    pairs_a, pairs_b = [], []
    for dy, dx in _NEIGHBOURS:
        other = index[ys + 1 + dy, xs + 1 + dx]
        linked = other >= 0
        pairs_a.append(np.flatnonzero(linked))
        pairs_b.append(other[linked])
    a = np.concatenate(pairs_a)
    b = np.concatenate(pairs_b)
    labels = np.arange(n)
    while True:
        low = np.minimum(labels[a], labels[b])
        before = labels.copy()
        np.minimum.at(labels, a, low)
        np.minimum.at(labels, b, low)
        labels = labels[labels]
        labels = labels[labels]
        if np.array_equal(labels, before):
            break
    # every label is its component's root (the smallest index in it): number the roots in order, no sort
    comp = np.cumsum(labels == np.arange(n))[labels] - 1
    count = np.bincount(comp).astype(np.float64)
    fy, fx = ys.astype(np.float64), xs.astype(np.float64)
    my, mx = np.bincount(comp, fy) / count, np.bincount(comp, fx) / count
    vyy = np.bincount(comp, fy * fy) / count - my * my
    vxx = np.bincount(comp, fx * fx) / count - mx * mx
    vxy = np.bincount(comp, fx * fy) / count - mx * my
    mid = (vxx + vyy) / 2
    root = np.sqrt(np.maximum(((vxx - vyy) / 2) ** 2 + vxy * vxy, 0.0))
    length = np.sqrt(12.0 * (mid + root) + 1.0)  # + 1: a single pixel is 1 px long and wide
    width = np.sqrt(12.0 * np.maximum(mid - root, 0.0) + 1.0)
    peak = np.zeros(count.size, dtype=np.float64)
    np.maximum.at(peak, comp, values[ys, xs])
    return count, length, width, peak, comp


def _ring(radius: int) -> list[tuple[int, int]]:
    q = max(1, round(radius * 0.7071))
    return [(0, radius), (radius, 0), (0, -radius), (-radius, 0), (q, q), (q, -q), (-q, q), (-q, -q)]


def _ring_order(image: np.ndarray, radius: int, fill: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per pixel: the lowest, second lowest and third lowest of 8 points on a ring around it (`fill` outside)."""
    h, w = image.shape
    r = radius
    padded = np.full((h + 2 * r, w + 2 * r), fill, dtype=image.dtype)
    padded[r:r + h, r:r + w] = image
    views = [padded[r + dy:r + dy + h, r + dx:r + dx + w] for dy, dx in _ring(radius)]  # image[y + dy, x + dx]
    # the first two points sort directly (what the running update gives from "all three unknown")
    # OpenCV's min and max: several times numpy's speed on these strided views, the same values
    first = cv2.min(views[0], views[1])
    second = cv2.max(views[0], views[1])
    third = np.full_like(image, np.float32(1e6))
    scratch = np.empty_like(image)
    for value in views[2:]:
        cv2.min(third, cv2.max(second, value, dst=scratch), dst=third)
        cv2.min(second, cv2.max(first, value, dst=scratch), dst=second)
        cv2.min(first, value, dst=first)
    return first, second, third


def _bbox(mask: np.ndarray) -> list[int] | None:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return [int(cols[0]), int(rows[0]), int(cols[-1] + 1), int(rows[-1] + 1)]


def _median(values: np.ndarray) -> float:
    """np.median of a 1-D float array without its overhead: the same partition and the same arithmetic
    (the middle value, or the float mean of the two middle values), so the same number to the last bit."""
    n = values.size
    k = n // 2
    if n % 2:
        return float(np.partition(values, k)[k])
    part = np.partition(values, (k - 1, k))
    return float((part[k - 1] + part[k]) / 2)


def _percentile(values: np.ndarray, q: float, weak: bool = True) -> float:
    """np.percentile(values, q) (method "linear") of a 1-D float32 array, without its overhead: one partition
    around the two neighbouring order statistics, then numpy's own interpolation arithmetic: in float32 when q
    is a Python number (`weak`), in float64 when q came in a tuple (numpy then interpolates in double).
    The same number to the last bit (a test checks it against np.percentile)."""
    n = values.size
    virtual = (n - 1) * (q / 100)
    if virtual >= n - 1:
        return float(values.max())
    below = int(np.floor(virtual))
    t = virtual - below
    part = np.partition(values, (below, below + 1))
    a, b = part[below], part[below + 1]
    diff = b - a  # float32, as numpy computes it
    if weak:
        return float(b - diff * (1 - t) if t >= 0.5 else a + diff * t)
    return float(b) - float(diff) * (1 - t) if t >= 0.5 else float(a) + float(diff) * t


def _per_1000(count: int, area: float) -> float:
    return float(np.log1p(count * 1000.0 / area))


@lru_cache(maxsize=16)
def _frame_geometry(h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per working-frame shape: x and y in -0.5..0.5, the border mask and the border's design matrix.

    The arrays are shared between calls: read only."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    xx = xx / w - 0.5
    yy = yy / h - 0.5
    b = _BORDER
    border = np.zeros((h, w), dtype=bool)
    border[:b] = border[-b:] = True
    border[:, :b] = border[:, -b:] = True
    design = np.stack([np.ones(int(border.sum()), dtype=np.float32), xx[border], yy[border]], axis=1)
    return xx, yy, border, design


@lru_cache(maxsize=16)
def _border_index(h: int, w: int) -> np.ndarray:
    """Per working-frame shape: the border's flat pixel indices, in the order a boolean mask selects them."""
    return np.flatnonzero(_frame_geometry(h, w)[2])


@lru_cache(maxsize=16)
def _centre_weight(h: int, w: int) -> np.ndarray:
    """Per working-frame shape: the weight favouring blobs near the centre."""
    xx, yy, _, _ = _frame_geometry(h, w)
    return 1.0 - 0.5 * np.hypot(yy, xx)


@lru_cache(maxsize=16)
def _ray_steps(length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per ray length: the y and x offsets of every step along every ray, and the step indices."""
    steps = np.arange(0, length, dtype=np.float32)
    return _SIN[:, None] * steps, _COS[:, None] * steps, np.arange(length - 1)


def _colour_distance(planes: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per pixel of (3, n) channel planes: the Euclidean colour distance from `reference` ((3, 1) or (3, n))."""
    difference = planes - reference
    return np.sqrt(np.einsum("ij,ij->j", difference, difference))


def _belt_model(small: np.ndarray) -> tuple[np.ndarray, float]:
    """Fit colour = a + b x + c y (per channel) to the border robustly: the plane's (3, 3) coefficients (rows a,
    b, c; a column per channel) and the border's spread around it."""
    h, w = small.shape[:2]
    design = _frame_geometry(h, w)[3]
    # the border's colours as channel planes: numpy's loops over a last axis of 3 run 3 elements at a time
    colours = small.reshape(-1, 3)[_border_index(h, w)]
    planes = np.ascontiguousarray(colours.T)
    # start from the border's median colour (robust), then fit the plane to the inliers twice: a neighbouring
    # cookie cut by the frame's edge is not belt and must not pull the plane or inflate the spread
    coef = np.zeros((3, 3), dtype=np.float32)
    coef[0] = [_median(plane) for plane in planes]
    residual = _colour_distance(planes, coef[0][:, None])
    keep = residual <= max(3.0 * _median(residual), 6.0)
    for _ in range(2):
        used = np.compress(keep, design, axis=0)
        normal = used.T @ used + 1e-3 * np.eye(3, dtype=np.float32)
        coef = cv2.solve(normal, used.T @ np.compress(keep, colours, axis=0), flags=cv2.DECOMP_CHOLESKY)[1]
        residual = _colour_distance(planes, coef.T @ design.T)
        keep = residual <= max(3.0 * _median(np.compress(keep, residual)), 6.0)
    spread = _median(np.compress(keep, residual))
    return coef, spread


def _belt_distance(smooth: np.ndarray, coef: np.ndarray) -> np.ndarray:
    """Per pixel: the colour distance from the belt plane a + b x + c y. Channel by channel on whole planes
    (a broadcast over a last axis of 3 runs numpy's inner loop 3 elements at a time); the same float32
    operations in the same order as building the H x W x 3 plane and subtracting it."""
    h, w = smooth.shape[:2]
    xx, yy, _, _ = _frame_geometry(h, w)
    total = np.zeros((h, w), dtype=np.float32)
    term = np.empty((h, w), dtype=np.float32)
    for c in range(3):
        np.multiply(xx, coef[1, c], out=term)
        term += coef[0, c]
        plane = yy * coef[2, c]
        plane += term  # (a + b x) + c y
        np.subtract(smooth[..., c], plane, out=plane)
        plane *= plane
        total += plane
    return np.sqrt(total, out=total)


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """The mask with every background region that does not reach the frame's edge made foreground: a blister, a
    sugar crystal or a reflection the belt's colour is part of the cookie it lies in, not a hole that stops the
    rays (blisters on dark dough read as belt and cut the outline short)."""
    h, w = mask.shape
    canvas = np.ones((h + 2, w + 2), dtype=np.uint8)  # background, with a frame of background around it
    canvas[1:-1, 1:-1] = ~mask
    cv2.floodFill(canvas, None, (0, 0), 2)  # 4-connected: a diagonal gap in an outline does not leak
    return canvas[1:-1, 1:-1] != 2


_OUTSIDE = 2  # label of the margin around the frame in `_labelled`


def _labelled(mask: np.ndarray) -> np.ndarray:
    """The mask as 0 (belt) and 1 (object) inside a margin labelled _OUTSIDE, wide enough that a ray from
    anywhere within 3 px of the frame stays in it: one lookup per sample instead of bounds checks and clips."""
    h, w = mask.shape
    pad = max(h, w) + 4
    labels = np.full((h + 2 * pad, w + 2 * pad), _OUTSIDE, dtype=np.uint8)
    labels[pad:pad + h, pad:pad + w] = mask
    return labels


def _trace(mask: np.ndarray, labels: np.ndarray, cy: float, cx: float) -> tuple[np.ndarray, int]:
    """The blob's radius along each ray from (cy, cx), and how many rays ran out of the frame inside it."""
    h, w = mask.shape
    dys, dxs, index = _ray_steps(max(h, w))
    ys = np.rint(cy + dys)
    xs = np.rint(cx + dxs)
    if -3.0 <= cy <= h + 2.0 and -3.0 <= cx <= w + 2.0:  # every sample lies in the labelled margin
        pad = (labels.shape[0] - h) // 2
        stride = labels.shape[1]
        # flat indices (exact in float32 at these sizes): one take instead of a 2-D fancy index
        at = ((ys + pad) * stride + (xs + pad)).astype(np.intp)
        values = labels.reshape(-1).take(at)
        samples = values == 1
        outside = values == _OUTSIDE
    else:
        ys, xs = ys.astype(np.intp), xs.astype(np.intp)
        inside = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
        samples = mask[np.clip(ys, 0, h - 1), np.clip(xs, 0, w - 1)] & inside
        outside = ~inside
    empty = ~samples
    gap = empty[:, :-1] & empty[:, 1:]  # two outside samples in a row end the blob (holes of 1 px do not)
    # a ray starting on background begins at its first foreground sample (closed holes are filled before; this is
    # a blister open to the rim, or the notch of a deformed outline)
    begin = samples.argmax(axis=1)
    begin[begin > 8] = 0  # a hole, not a blister's width: the ray ends there
    gap &= index[None, :] >= begin[:, None]
    first = np.where(gap.any(axis=1), gap.argmax(axis=1), len(index))
    exits = np.where(outside.any(axis=1), outside.argmax(axis=1), len(index) + 1)
    return first.astype(np.float32) + 0.5, int(np.count_nonzero(first >= exits - 2))


def analyse(pixels: np.ndarray) -> Analysis:
    """Features and regions of one RGB frame (H x W x 3, uint8); AbstainError when it cannot be judged."""
    height, width = pixels.shape[:2]
    factor = max(height, width) / SEG  # frame pixels per working pixel
    sw, sh = max(16, round(width / factor)), max(16, round(height / factor))
    small = cv2.resize(pixels, (sw, sh), interpolation=cv2.INTER_AREA)
    smooth = _blur(small, 2).astype(np.float32)

    # 2. belt model and foreground
    coef, spread = _belt_model(smooth)
    distance = _belt_distance(smooth, coef)
    mask = _fill_holes(distance > max(14.0, 4.0 * spread))

    # 3. the inspected cookie: the solid blob nearest the centre
    core = _blur(mask.astype(np.float32), 5)
    centred = core * _centre_weight(sh, sw)
    seed = int(centred.argmax())
    if core.flat[seed] < 0.6:
        raise NoCookieError("no cookie found in the image")
    cy, cx = float(seed // sw), float(seed % sw)
    labels = _labelled(mask)
    for _ in range(2):
        profile, cut = _trace(mask, labels, cy, cx)
        # centroid of the star-shaped region the rays outline
        weights = profile**2
        cx += float((2.0 / 3.0) * (profile**3 * _COS).sum() / weights.sum())
        cy += float((2.0 / 3.0) * (profile**3 * _SIN).sum() / weights.sum())
    profile, cut = _trace(mask, labels, cy, cx)
    mean_r = float(profile.mean())
    if cut >= 3:
        raise AbstainError("the object is cut by the frame's edge: the whole cookie must be in view",
                           "cut_by_frame")
    size_in_frame = 2.0 * mean_r / min(sh, sw)
    if size_in_frame < 0.15 or mean_r < 6:
        raise NoCookieError("no cookie found in the image (only a small object)")
    if size_in_frame > 0.9:
        raise AbstainError("the object fills the frame: not a cookie seen whole", "too_close")
    smoothed = (np.roll(profile, 1) + profile + np.roll(profile, -1)) / 3.0
    radius_min_max = float(smoothed.min() / smoothed.max())
    if radius_min_max < 0.22:
        raise AbstainError("the object is not cookie-shaped", "not_round")
    spectrum = np.abs(np.fft.rfft(profile / mean_r)) * (2.0 / _RAYS)
    harmonics = float(spectrum[2:7].sum())
    radius_range = float((smoothed.max() - smoothed.min()) / mean_r)

    # 4. canonical crop around the cookie, in frame pixels
    half = _CROP_MARGIN * float(profile.max()) * factor
    fcx, fcy = (cx + 0.5) * factor, (cy + 0.5) * factor
    x0, y0 = fcx - half, fcy - half
    scale = 2.0 * half / CANON  # frame pixels per canonical pixel
    box = (round(x0), round(y0), round(fcx + half), round(fcy + half))
    frame = Image.fromarray(np.ascontiguousarray(pixels), mode="RGB")  # only now: abstentions above skip it
    crop = np.asarray(frame.crop(box).resize((CANON, CANON), Image.Resampling.BILINEAR), dtype=np.float32)
    # the cookie's outline in the crop: the ray profile, interpolated between rays
    ray = _CANON_RAY
    low = ray.astype(np.intp) % _RAYS
    frac = ray - np.floor(ray)
    outline = (profile[low] * (1 - frac) + profile[(low + 1) % _RAYS] * frac) * factor / scale
    rho = _CANON_RHO
    cookie = rho < outline - 1.0
    interior = rho < 0.86 * outline
    rim = cookie & ~interior
    inner = rho < 0.93 * outline  # cracks run into the rim
    area = float(np.count_nonzero(interior))
    if area < 200:
        raise NoCookieError("the object is too small to be a cookie")

    # 5. colour, relative to the dough's own median
    # every second interior pixel, channel by channel (a boolean mask over H x W x 3 costs several times more)
    dough_at = np.flatnonzero(interior)[::2] * 3
    flat_crop = crop.reshape(-1)
    median = np.array([_median(flat_crop[dough_at + c]) for c in range(3)], dtype=np.float32)
    dough_luma = max(float(median @ _LUMA), 4.0)
    xx, yy, _, _ = _frame_geometry(sh, sw)
    belt_centre = coef[0] + xx[sh // 2, sw // 2] * coef[1] + yy[sh // 2, sw // 2] * coef[2]
    belt_luma = max(float(belt_centre @ _LUMA), 4.0)
    total = max(float(median.sum()), 1.0)
    if not (median[0] >= 0.9 * median[2] and median[0] >= 0.8 * median[1]):
        raise AbstainError("the object is not dough-coloured", "not_dough")
    if float(np.linalg.norm(median - belt_centre)) < _SAME_COLOUR * dough_luma:
        # what surrounds the object has the dough's own colour: dough fills the frame (a cookie seen far too
        # close), and the "object" is a blister, crack or chip on it
        raise AbstainError("the object has the colour of its surroundings: dough fills the frame", "too_close")
    luma = (crop @ _LUMA) / dough_luma
    dough_rel = luma[interior]
    sample = np.ascontiguousarray(dough_rel[::2])
    p05 = _percentile(sample, 5, weak=False)

    # 6. local structure on the crop; outside the cookie counts as dough (1.0) so the rim never responds
    capped = np.where(cookie, np.minimum(luma, 1.25), np.float32(1.0))
    centre = _blur(capped, 1)
    lowest, _, third = _ring_order(centre, 5, 1.0)
    line = (third - centre) * (lowest - centre < 0.12)  # darker than most of the ring, not all of it
    blob_dark = lowest - centre  # darker than the whole ring
    noise = _median(np.abs(capped - centre)[interior])
    # Dark lines among dark inclusions (dark dough, chips, nuts), relative to the dough around each pixel: the
    # dark pixels' connected components by shape. A crack is a long thin component (length several times its
    # width, or curved); a chocolate chip or nut is a compact blob (width about its length), two touching chips a
    # short one. First the dough's brightness by distance from the centre (16 rings): the browner rim, a dark
    # ring, would join every crack reaching it into one round component; and the outline may include a shadow,
    # so the lines are looked for inside the first outer ring that turns dark.
    ring_of = np.minimum((rho / np.maximum(outline, 1.0) * _RINGS).astype(np.intp), _RINGS)
    in_cookie = ring_of[cookie]
    ring_sum = np.bincount(in_cookie, weights=capped[cookie], minlength=_RINGS + 1)
    ring_n = np.bincount(in_cookie, minlength=_RINGS + 1)
    profile_luma = (ring_sum / np.maximum(ring_n, 1)).astype(np.float32)
    reference = _median(profile_luma[:_RINGS // 2])
    dim = np.flatnonzero(profile_luma[_RINGS // 2:_RINGS] < 0.92 * reference)
    edge_ring = _RINGS // 2 + int(dim[0]) if dim.size else _RINGS
    # capped at the dough's own level: a bright nut or blister must not make the dough around it look dark
    flat = profile_luma[ring_of]
    np.maximum(flat, np.float32(0.2), out=flat)
    np.divide(capped, flat, out=flat)
    np.minimum(flat, np.float32(1.0), out=flat)
    flat[~cookie] = 1.0
    local = _blur(flat, 7)
    np.maximum(local, np.float32(0.2), out=local)
    darkness = _blur(flat, 1)
    darkness /= local
    np.subtract(np.float32(1.0), darkness, out=darkness)
    np.maximum(darkness, np.float32(0.0), out=darkness)
    # hysteresis: a component counts when part of it is clearly dark
    dark_mask = (darkness > 0.1) & inner & (ring_of < edge_ring)
    count, length, thickness, peak, component = _components(dark_mask, darkness)
    clear = peak > 0.2
    # thin: long for its width, or curved (it fills little of the ellipse its spread describes)
    sized = clear & (count >= 6) & (length >= 10.0)
    mean_width = count / np.maximum(length, 1.0)
    thin = sized & (((length >= 2.8 * thickness) & (mean_width <= 4.5)) | (count <= 0.7 * length * thickness))
    compact = clear & (count >= 4) & ~thin
    # the ring detector's line responses, where no chip is: a chip's edge is darker than part of its ring, as a
    # crack is, so its pixels and 2 px around them do not count (the network had learned to discount every
    # line response where chips are, cracks among chips too)
    chips = np.zeros_like(dark_mask)
    chips[dark_mask] = compact[component]
    near_chip = cv2.dilate(chips.view(np.uint8), _CHIP_MARGIN).view(bool)
    crack_zone = interior & ~near_chip
    line_low = (line > 0.15) & crack_zone
    line_high = (line > 0.3) & crack_zone
    # long: a line pixel with several more within a few pixels (a crack), not an isolated speck
    long_line = (_blur(line_low.astype(np.float32), 3) > 0.16) & line_low

    # Blisters lift the dough towards white: its weakest channel (blue) rises far more than its strongest
    # (red). "Lift" = weakest channel / dough's, over strongest channel / dough's: 1 on dough, about 2 on a
    # blister's top, whatever the light's colour (per-channel gains cancel); a nut, a lighter or shaded patch
    # keeps the dough's hue (about 1.2 to 1.5) and is not a defect.
    weak, strong = int(np.argmin(median)), int(np.argmax(median))
    lift = ((crop[..., weak] / max(float(median[weak]), 4.0))
            / np.maximum(crop[..., strong] / max(float(median[strong]), 4.0), 0.1))
    bright = np.where(cookie, lift, np.float32(10.0))
    bright_c = _blur(bright, 1)
    _, _, third_b = _ring_order(-bright_c, 9, -10.0)  # on the negated image: the third highest
    bubble = (bright_c + third_b) * interior  # how much above the third-highest ring point
    bubble_low = bubble > 0.4
    bubble_high = bubble > 0.8
    white = (bright_c > 1.7) & interior
    _, _, third_s = _ring_order(-bright, 3, -10.0)
    specks = ((bright + third_s) > 0.35) & interior
    # The dough's own texture: what is brighter than the dough (nuts, sugar, seeds, glaze, blisters) left out, so
    # a cookie with many toppings does not look blotchy (a burnt cookie's dark patches stay in).
    plain = interior & (luma < 1.15) & ~(bubble_low | white | specks)
    plain_rel = luma[plain] if np.count_nonzero(plain) >= 0.5 * area else dough_rel
    plain_sample = np.ascontiguousarray(plain_rel[::2])
    texture = _percentile(plain_sample, 90, weak=False) - _percentile(plain_sample, 10, weak=False)

    features = np.array(
        [
            harmonics,
            radius_range,
            radius_min_max,
            size_in_frame,
            dough_luma / 255.0,
            float(np.log(dough_luma / belt_luma)),
            float((median[0] - median[2]) / total),
            float((median[1] - median[2]) / total),
            float((median.max() - median.min()) / max(float(median.max()), 1.0)),
            float(np.count_nonzero(dough_rel < 0.7) / area),
            float(texture),
            _median(luma[rim]) if rim.any() else 1.0,
            float(p05),
            _per_1000(int(np.count_nonzero(line_low)), area),
            _per_1000(int(np.count_nonzero(line_high)), area),
            _per_1000(int(np.count_nonzero(long_line)), area),
            _percentile(line[crack_zone], 99.5) if crack_zone.any() else 0.0,
            float(np.log1p(line[line_low].sum() * 1000.0 / area)),
            _per_1000(int(np.count_nonzero((blob_dark > 0.2) & interior)), area),
            _percentile(blob_dark[interior], 99.5),
            _per_1000(int(np.count_nonzero(bubble_low)), area),
            _per_1000(int(np.count_nonzero(bubble_high)), area),
            _percentile(bubble[interior], 99.5),
            float(np.log1p(bubble[bubble_low].sum() * 1000.0 / area)),
            _per_1000(int(np.count_nonzero(white)), area),
            _per_1000(int(np.count_nonzero(specks)), area),
            noise,
            spread / max(belt_luma, 4.0),
            float(np.log1p(length[thin].max() if thin.any() else 0.0)),
            float(np.log1p(length[thin].sum() * 100.0 / np.sqrt(area))),
            float(np.max((length / thickness)[sized], initial=1.0)),
            float(np.min(mean_width[sized], initial=8.0)),
            _per_1000(int(np.count_nonzero(compact)), area),
        ],
        dtype=np.float32,
    )

    def to_frame(crop_box: list[int] | None, pad: float = 0.0) -> list[int] | None:
        if crop_box is None:
            return None
        return [max(0, int(x0 + (crop_box[0] - pad) * scale)), max(0, int(y0 + (crop_box[1] - pad) * scale)),
                min(width, int(np.ceil(x0 + (crop_box[2] + pad) * scale))),
                min(height, int(np.ceil(y0 + (crop_box[3] + pad) * scale)))]

    cookie_box = to_frame(_bbox(cookie), 1.0) or [0, 0, width, height]
    return Analysis(
        features=features,
        cookie_box=cookie_box,
        crack_box=to_frame(_bbox(long_line), 2.0),
        bubble_box=to_frame(_bbox(bubble_high) or _bbox(bubble_low), 3.0),
    )
