"""The camera over the cooling conveyor: renders one cookie per item and posts it to the vision intake.

`render_cookie` draws a cookie on the belt from the item's state (its defects) and returns PNG bytes with the
true box of every defect, so the vision service can be scored against ground truth. Everything random comes
from the `numpy.random.Generator` passed in, so one seed gives one image, byte for byte.

Defects (several at once are possible; an empty set is a good cookie):
- cracked: dark jagged lines running through the dough;
- deformed: an irregular, non-round outline;
- bubbled: raised light blisters on the surface;
- burnt: an over-baked, dark cookie with blackened patches.

`CameraConditions` describes what a real camera adds on top: lighting (brightness, colour temperature, an
uneven gradient), blur, sensor noise, scale (distance to the belt) and position on the belt. The `varied`,
`heldout` and `cocoa` presets also vary what differs between plants: belt colour and texture, toppings and
inclusions that are not defects (chocolate chips, nuts, sugar, seeds, glaze), dough colour, shadows, JPEG
artefacts, rotation, image size and neighbouring cookies cut by the frame's edge; `heldout` and `cocoa` draw
values that `varied` (the training set) never shows, to test a detector on what it was not tuned on.
"""

from __future__ import annotations

import asyncio
import io
import math
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from services.vision.classes import DEFECT_CLASSES

# The belt is a blue-grey food-grade conveyor; the vision service uses it as its colour reference.
BELT_RGB = np.array([78.0, 90.0, 106.0], dtype=np.float32)

# Dough colour along the bake: raw -> golden -> brown -> burnt (bake level 0.0 .. 1.0).
_BAKE_STOPS = np.array([0.0, 0.4, 0.7, 1.0], dtype=np.float32)
_BAKE_RGB = np.array(
    [[236, 206, 152], [214, 162, 92], [160, 98, 46], [62, 36, 20]],
    dtype=np.float32,
)
# Cocoa dough (a chocolate cookie): dark already when baked right; burnt is darker still.
_COCOA_RGB = np.array([[150, 104, 74], [118, 76, 50], [88, 54, 34], [36, 22, 16]], dtype=np.float32)
_DOUGHS = {"plain": _BAKE_RGB, "cocoa": _COCOA_RGB}

# Belts: base colour and texture kind. `varied` trains on the first five; light grey and green are held out.
_BELTS: dict[str, tuple[tuple[float, float, float], str]] = {
    "standard": ((78.0, 90.0, 106.0), "weave"),
    "dark": ((40.0, 40.0, 44.0), "rubber"),
    "blue": ((40.0, 85.0, 155.0), "weave"),
    "white": ((222.0, 222.0, 214.0), "rubber"),
    "metal_mesh": ((140.0, 145.0, 150.0), "mesh"),
    "light_grey": ((165.0, 168.0, 168.0), "rubber"),
    "green": ((50.0, 120.0, 75.0), "weave"),
}
TOPPINGS: tuple[str, ...] = ("none", "chips", "sugar", "seeds", "glaze", "nuts", "poppy")


@dataclass(frozen=True)
class CameraConditions:
    """Ranges that each rendered image draws its camera settings from (low, high), uniformly."""

    name: str = "standard"
    brightness: tuple[float, float] = (0.9, 1.1)  # gain on all channels
    color_temperature_k: tuple[float, float] = (5600.0, 7200.0)  # 6500 K is neutral
    lighting_gradient: tuple[float, float] = (0.0, 0.05)  # relative brightness change across the frame
    blur_sigma: tuple[float, float] = (0.0, 0.6)  # Gaussian blur, pixels
    noise_sigma: tuple[float, float] = (1.0, 4.0)  # sensor noise, grey levels (0..255)
    scale: tuple[float, float] = (0.92, 1.08)  # cookie size relative to nominal
    position: float = 0.5  # fraction of the free margin the cookie centre may wander
    # what differs between plants (the defaults are the simulator's own line); drawn uniformly per image
    belts: tuple[str, ...] = ("standard",)
    toppings: tuple[str, ...] = ("none",)
    doughs: tuple[str, ...] = ("plain",)
    dough_tint: float = 0.0  # per-channel jitter of the dough colour, relative
    shadow: tuple[float, float] = (0.25, 0.25)  # darkening of the belt under the cookie
    jpeg_quality: tuple[int, int] | None = None  # JPEG instead of PNG, quality drawn in this range
    image_size: tuple[int, int] | None = None  # square output size drawn in this range (else `size`)
    neighbours: float = 0.0  # probability of good cookies cut by the frame's edge next to this one
    rotate: bool = False  # random quarter turn and mirror of the whole frame

    @property
    def varied(self) -> bool:
        """Whether this camera varies more than lighting: then one more random stream is drawn per image."""
        return (self.belts, self.toppings, self.doughs, self.dough_tint, self.shadow, self.jpeg_quality,
                self.image_size, self.neighbours, self.rotate) != (
            ("standard",), ("none",), ("plain",), 0.0, (0.25, 0.25), None, None, 0.0, False)

    @classmethod
    def standard(cls) -> CameraConditions:
        return cls()

    @classmethod
    def varied_training(cls) -> CameraConditions:
        """Many plants and days: what the local detector is trained on."""
        return cls(
            name="varied",
            brightness=(0.75, 1.3),
            color_temperature_k=(4000.0, 9000.0),
            lighting_gradient=(0.0, 0.15),
            blur_sigma=(0.0, 1.2),
            noise_sigma=(1.0, 9.0),
            scale=(0.75, 1.25),
            position=1.0,
            belts=("standard", "dark", "blue", "white", "metal_mesh"),
            toppings=("none", "none", "chips", "sugar", "seeds", "glaze", "nuts"),
            dough_tint=0.08,
            shadow=(0.05, 0.45),
            jpeg_quality=(45, 95),
            image_size=(128, 512),
            neighbours=0.3,
            rotate=True,
        )

    @classmethod
    def heldout(cls) -> CameraConditions:
        """Belts and a topping `varied` never shows (light grey, green; poppy seeds), sizes up to 1024 px."""
        return replace(cls.varied_training(), name="heldout", belts=("light_grey", "green"),
                       toppings=("none", "poppy"), image_size=(128, 1024))

    @classmethod
    def cocoa(cls) -> CameraConditions:
        """A chocolate-dough line: kept out of the defaults, to show `train --images` learning a new line."""
        return replace(cls.varied_training(), name="cocoa", doughs=("cocoa",),
                       toppings=("none", "chips", "nuts"), image_size=(192, 320))

    @classmethod
    def harsh(cls) -> CameraConditions:
        """A poorly lit, dirty, vibrating camera: what the detector must still cope with."""
        return cls(
            name="harsh",
            brightness=(0.6, 1.4),
            color_temperature_k=(3800.0, 9500.0),
            lighting_gradient=(0.05, 0.2),
            blur_sigma=(0.6, 1.6),
            noise_sigma=(5.0, 12.0),
            scale=(0.8, 1.2),
            position=1.0,
        )

    @classmethod
    def preset(cls, name: str) -> CameraConditions:
        presets = {"standard": cls.standard, "harsh": cls.harsh, "varied": cls.varied_training,
                   "heldout": cls.heldout, "cocoa": cls.cocoa}
        if name not in presets:
            raise ValueError(f"unknown camera conditions {name!r}; expected one of {sorted(presets)}")
        return presets[name]()


@dataclass
class _Shot:
    """The concrete camera settings for one image, drawn from CameraConditions."""

    brightness: float
    color_gains: np.ndarray
    gradient: float
    gradient_angle: float
    blur_sigma: float
    noise_sigma: float
    scale: float
    position: float
    extra: dict[str, Any] = field(default_factory=dict)


def _draw_shot(conditions: CameraConditions, rng: np.random.Generator) -> _Shot:
    def between(bounds: tuple[float, float]) -> float:
        return float(rng.uniform(bounds[0], bounds[1]))

    kelvin = between(conditions.color_temperature_k)
    # Warm light (low K) lifts red and lowers blue; cold light the opposite.
    warmth = math.log(6500.0 / kelvin)
    gains = np.array([math.exp(0.45 * warmth), 1.0, math.exp(-0.55 * warmth)], dtype=np.float32)
    return _Shot(
        brightness=between(conditions.brightness),
        color_gains=gains,
        gradient=between(conditions.lighting_gradient),
        gradient_angle=float(rng.uniform(0, 2 * math.pi)),
        blur_sigma=between(conditions.blur_sigma),
        noise_sigma=between(conditions.noise_sigma),
        scale=between(conditions.scale),
        position=conditions.position,
    )


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise in about [-1, 1]: a small random grid upscaled with bicubic interpolation."""
    grid = rng.uniform(0, 255, size=(cells, cells)).astype(np.uint8)
    big = Image.fromarray(grid, mode="L").resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(big, dtype=np.float32) / 127.5 - 1.0


def _bake_to_rgb(bake: np.ndarray, stops_rgb: np.ndarray = _BAKE_RGB) -> np.ndarray:
    bake = np.clip(bake, 0.0, 1.0)
    channels = [np.interp(bake, _BAKE_STOPS, stops_rgb[:, c]) for c in range(3)]
    return np.stack(channels, axis=-1).astype(np.float32)


def _box(points: np.ndarray, pad: float, size: int) -> list[int]:
    x0, y0 = points.min(axis=0) - pad
    x1, y1 = points.max(axis=0) + pad
    return [
        int(max(0, math.floor(x0))),
        int(max(0, math.floor(y0))),
        int(min(size, math.ceil(x1))),
        int(min(size, math.ceil(y1))),
    ]


@dataclass
class _Variation:
    """What differs between plants, drawn for one image when the conditions are `varied`."""

    belt: str = "standard"
    topping: str = "none"
    dough: str = "plain"
    tint: np.ndarray = field(default_factory=lambda: np.ones(3, dtype=np.float32))
    shadow: float = 0.25
    jpeg_quality: int | None = None
    size: int | None = None
    neighbours: int = 0
    quarter_turns: int = 0
    mirror: bool = False
    rng: np.random.Generator | None = None  # toppings, belt texture, neighbours


def _draw_variation(conditions: CameraConditions, rng: np.random.Generator) -> _Variation:
    def pick(options: tuple[str, ...]) -> str:
        return str(options[int(rng.integers(0, len(options)))])

    v = _Variation(belt=pick(conditions.belts), topping=pick(conditions.toppings), dough=pick(conditions.doughs))
    v.tint = (1.0 + rng.uniform(-conditions.dough_tint, conditions.dough_tint, size=3)).astype(np.float32)
    v.shadow = float(rng.uniform(*conditions.shadow))
    if conditions.jpeg_quality is not None and rng.random() < 0.5:
        v.jpeg_quality = int(rng.integers(conditions.jpeg_quality[0], conditions.jpeg_quality[1] + 1))
    if conditions.image_size is not None:
        v.size = int(rng.integers(conditions.image_size[0], conditions.image_size[1] + 1)) // 2 * 2
    if rng.random() < conditions.neighbours:
        v.neighbours = int(rng.integers(1, 3))
    if conditions.rotate:
        v.quarter_turns, v.mirror = int(rng.integers(0, 4)), bool(rng.random() < 0.5)
    v.rng = np.random.default_rng(int(rng.integers(0, 2**63 - 1)))
    return v


def _blob(canvas: np.ndarray, x: float, y: float, rx: float, ry: float, angle: float, colour: np.ndarray,
          alpha: float = 1.0, shade: float = 0.0) -> None:
    """Paint a soft-edged ellipse onto an H x W x 3 float canvas, in place; `shade` lightens its top left."""
    h, w = canvas.shape[:2]
    reach = max(rx, ry) + 2.0
    x0, x1 = max(0, int(x - reach)), min(w, int(x + reach) + 1)
    y0, y1 = max(0, int(y - reach)), min(h, int(y + reach) + 1)
    if x0 >= x1 or y0 >= y1:
        return
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    px, py = xx + 0.5 - x, yy + 0.5 - y
    c, s = math.cos(angle), math.sin(angle)
    u, v = (px * c + py * s) / rx, (-px * s + py * c) / ry
    d = np.sqrt(u * u + v * v)
    a = np.clip((1.0 - d) * max(rx, ry), 0.0, 1.0) * alpha
    paint = np.broadcast_to(colour, (y1 - y0, x1 - x0, 3)).astype(np.float32)
    if shade:
        paint = paint * (1.0 + shade * np.clip(-(px + py) / (rx + ry), -1.0, 1.0))[..., None]
    canvas[y0:y1, x0:x1] = canvas[y0:y1, x0:x1] * (1.0 - a[..., None]) + paint * a[..., None]


def _toppings(dough: np.ndarray, topping: str, rng: np.random.Generator, cx: float, cy: float, radius: float,
              s: float) -> None:
    """Inclusions and toppings that are not defects, painted onto the dough in place."""
    if topping == "none":
        return

    def spot() -> tuple[float, float]:
        angle, dist = rng.uniform(0, 2 * math.pi), math.sqrt(rng.uniform(0.0, 1.0)) * 0.78 * radius
        return cx + dist * math.cos(angle), cy + dist * math.sin(angle)

    if topping == "chips":  # chocolate chips: dark brown, compact, with a soft highlight
        for _ in range(int(rng.integers(3, 13))):
            x, y = spot()
            r = rng.uniform(2.5, 5.5) * s
            colour = np.array([rng.uniform(45, 75), rng.uniform(26, 42), rng.uniform(16, 28)], dtype=np.float32)
            _blob(dough, x, y, r * rng.uniform(0.8, 1.2), r, rng.uniform(0, math.pi), colour, 1.0, 0.4)
    elif topping == "nuts":  # nut pieces: tan, irregular, shaded edges
        for _ in range(int(rng.integers(3, 8))):
            x, y = spot()
            r = rng.uniform(4.0, 8.0) * s
            colour = np.array([rng.uniform(170, 215), rng.uniform(125, 165), rng.uniform(75, 110)],
                              dtype=np.float32)
            _blob(dough, x, y, r * rng.uniform(0.7, 1.3), r, rng.uniform(0, math.pi), colour, 1.0, 0.35)
    elif topping == "sugar":  # coarse sugar: many small white crystals
        for _ in range(int(rng.integers(30, 120))):
            x, y = spot()
            grey = rng.uniform(215, 250)
            _blob(dough, x, y, rng.uniform(0.7, 1.4) * s, rng.uniform(0.7, 1.4) * s, 0.0,
                  np.array([grey, grey, grey * 0.97], dtype=np.float32), rng.uniform(0.5, 0.9))
    elif topping == "seeds":  # sesame: small pale elongated seeds
        for _ in range(int(rng.integers(8, 30))):
            x, y = spot()
            colour = np.array([rng.uniform(215, 240), rng.uniform(195, 220), rng.uniform(145, 175)],
                              dtype=np.float32)
            _blob(dough, x, y, rng.uniform(2.5, 3.5) * s, rng.uniform(1.0, 1.5) * s, rng.uniform(0, math.pi),
                  colour, 0.9, 0.2)
    elif topping == "poppy":  # poppy seeds: many tiny blue-black dots
        for _ in range(int(rng.integers(20, 60))):
            x, y = spot()
            r = rng.uniform(0.8, 1.3) * s
            colour = np.array([rng.uniform(30, 50), rng.uniform(30, 45), rng.uniform(38, 58)], dtype=np.float32)
            _blob(dough, x, y, r, r * rng.uniform(0.8, 1.0), rng.uniform(0, math.pi), colour, 0.95)
    elif topping == "glaze":  # a translucent sheen over the whole top, with a few soft specular streaks
        size = dough.shape[0]
        sheen = np.clip(_smooth_noise(rng, size, 5) * 0.5 + 0.5, 0.0, 1.0)[..., None]
        dough += (235.0 - dough) * (rng.uniform(0.1, 0.25) * sheen)
        for _ in range(int(rng.integers(1, 4))):
            x, y = spot()
            _blob(dough, x, y, rng.uniform(8.0, 16.0) * s, rng.uniform(1.2, 2.0) * s, rng.uniform(0, math.pi),
                  np.array([245.0, 240.0, 230.0], dtype=np.float32), rng.uniform(0.25, 0.45))


def _belt(kind: str, rng: np.random.Generator, size: int, s: float, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """A belt of the given kind (see _BELTS), colour jittered a little from plant to plant."""
    colour, texture = _BELTS[kind]
    base = np.array(colour, dtype=np.float32) * (1.0 + rng.uniform(-0.06, 0.06, size=3)).astype(np.float32)
    if texture == "weave":
        pattern = 1.0 + 0.03 * np.sin(yy * (2 * math.pi / (5.0 * s))) + rng.normal(0.0, 0.02, size=(size, size))
    elif texture == "rubber":
        pattern = 1.0 + 0.04 * _smooth_noise(rng, size, 12) + rng.normal(0.0, 0.015, size=(size, size))
    else:  # metal mesh: bright wires on a dark, open weave, slightly askew
        period = rng.uniform(5.0, 9.0) * s
        angle = rng.uniform(-0.3, 0.3)
        u = xx * math.cos(angle) + yy * math.sin(angle)
        v = -xx * math.sin(angle) + yy * math.cos(angle)
        wires = np.maximum(np.cos(u * 2 * math.pi / period), np.cos(v * 2 * math.pi / period))
        pattern = 0.75 + 0.3 * np.clip(wires, 0.0, 1.0) + rng.normal(0.0, 0.02, size=(size, size))
    return base * pattern[..., None].astype(np.float32)


def _neighbours(frame: np.ndarray, count: int, rng: np.random.Generator, cx: float, cy: float, reach: float,
                radius: float, shadow: float) -> None:
    """Good cookies cut by the frame's edge, never touching the inspected one, painted in place."""
    size = frame.shape[0]
    for _ in range(count):
        side = int(rng.integers(0, 4))
        along = rng.uniform(0.0, size)
        out = rng.uniform(0.3, 0.8) * radius  # how far outside the frame its centre lies
        nx, ny = [(-out, along), (size + out, along), (along, -out), (along, size + out)][side]
        nr = radius * rng.uniform(0.9, 1.1)
        if math.hypot(nx - cx, ny - cy) < reach + nr + 8.0:
            continue
        colour = _bake_to_rgb(np.array(rng.uniform(0.3, 0.5)))
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        rho = np.hypot(xx + 0.5 - nx, yy + 0.5 - ny)
        cover = np.clip(nr - rho + 0.5, 0.0, 1.0)[..., None]
        shade = np.clip((nr + 5.0 - rho) / 5.0, 0.0, 1.0)[..., None]
        grain = (1.0 + rng.normal(0.0, 0.03, size=(size, size)))[..., None].astype(np.float32)
        frame *= 1.0 - shadow * shade * (1.0 - cover)
        frame[:] = frame * (1.0 - cover) + colour * grain * cover


def _turn_box(box: list[int], size: int, turns: int, mirror: bool) -> list[int]:
    mask = np.zeros((size, size), dtype=bool)
    mask[box[1]:box[3], box[0]:box[2]] = True
    mask = np.rot90(mask, turns)
    if mirror:
        mask = mask[:, ::-1]
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return [int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1]


def render_cookie(
    defects: frozenset[str],
    rng: np.random.Generator,
    size: int = 256,
    conditions: CameraConditions | None = None,
) -> tuple[bytes, list[dict]]:
    """Render one cookie on the belt; return (image bytes, true defect boxes [{"class", "box": [x0,y0,x1,y1]}]).

    The image is a PNG, or a JPEG when the conditions draw JPEG artefacts."""
    unknown = set(defects) - set(DEFECT_CLASSES)
    if unknown:
        raise ValueError(f"unknown defect classes {sorted(unknown)}; expected a subset of {DEFECT_CLASSES}")
    if size < 64:
        raise ValueError("size must be at least 64 pixels")
    conditions = conditions or CameraConditions.standard()
    # One stream per aspect: the same seed with and without a defect renders the same cookie, camera and noise,
    # so the defect is the only difference.
    shot_rng, shape_rng, dough_rng, bubble_rng, crack_rng, belt_rng = (
        np.random.default_rng(int(seed)) for seed in rng.integers(0, 2**63 - 1, size=6))
    # a varied camera draws one more stream (after the six, so the simulator's own camera renders as before)
    variation = _draw_variation(conditions, rng) if conditions.varied else _Variation()
    if variation.size is not None:
        size = variation.size
    shot = _draw_shot(conditions, shot_rng)
    s = size / 256.0  # every length below is given for a 256 x 256 frame

    # --- outline: r(theta) = R * (1 + sum of harmonics); deformed cookies get strong low-order harmonics.
    radius = 62.0 * s * shot.scale
    harmonics: list[tuple[int, float, float]] = []
    for order in range(2, 7):
        amplitude = shape_rng.uniform(0.0, 0.008)
        harmonics.append((order, amplitude, shape_rng.uniform(0, 2 * math.pi)))
    # the free margin assumes the largest deformation, so a defect never moves the cookie
    max_extent = radius * (1.0 + 5 * 0.008 + 2 * 0.17)
    margin = size / 2.0 - max_extent - 6.0 * s
    wander = max(0.0, margin) * shot.position
    cx = size / 2.0 + shape_rng.uniform(-wander, wander)
    cy = size / 2.0 + shape_rng.uniform(-wander, wander)
    if "deformed" in defects:
        for _ in range(int(shape_rng.integers(1, 3))):
            order = int(shape_rng.integers(2, 5))
            harmonics.append((order, shape_rng.uniform(0.09, 0.17), shape_rng.uniform(0, 2 * math.pi)))

    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    dx, dy = xx + 0.5 - cx, yy + 0.5 - cy
    rho = np.hypot(dx, dy)
    theta = np.arctan2(dy, dx)
    outline = np.full_like(rho, radius)
    for order, amplitude, phase in harmonics:
        outline += radius * amplitude * np.cos(order * theta + phase)
    coverage = np.clip(outline - rho + 0.5, 0.0, 1.0)  # anti-aliased edge
    relative_rho = np.clip(rho / outline, 0.0, 1.0)

    # --- dough: colour by bake, browner towards the rim, blotchy texture and fine grain.
    bake_level = dough_rng.uniform(0.84, 0.97) if "burnt" in defects else dough_rng.uniform(0.3, 0.5)
    bake = np.full_like(rho, bake_level) + 0.12 * relative_rho**4
    if "burnt" in defects:
        bake += 0.08 * np.clip(_smooth_noise(dough_rng, size, 6), 0, 1)  # blackened patches
    else:
        bake += 0.03 * _smooth_noise(dough_rng, size, 6)
    dough = _bake_to_rgb(bake, _DOUGHS[variation.dough]) * variation.tint
    texture = 1.0 + 0.05 * _smooth_noise(dough_rng, size, 24) + dough_rng.normal(0.0, 0.025, size=(size, size))
    dough *= texture[..., None].astype(np.float32)
    if variation.rng is not None:  # toppings lie under blisters and cracks
        _toppings(dough, variation.topping, variation.rng, cx, cy, radius, s * shot.scale)

    truth: list[dict] = []
    cookie_pixels = np.argwhere(coverage > 0.5)[:, ::-1].astype(np.float32)  # (x, y)

    # --- bubbles: raised light blisters with a highlight towards the light and a faint shadow opposite.
    if "bubbled" in defects:
        centres = []
        for _ in range(int(bubble_rng.integers(2, 5))):
            bubble_r = bubble_rng.uniform(6.0, 11.0) * s * shot.scale
            angle = bubble_rng.uniform(0, 2 * math.pi)
            dist = bubble_rng.uniform(0.0, 0.6) * radius
            bx, by = cx + dist * math.cos(angle), cy + dist * math.sin(angle)
            d = np.hypot(xx + 0.5 - bx, yy + 0.5 - by) / bubble_r
            dome = np.sqrt(np.clip(1.0 - d**2, 0.0, 1.0))
            highlight = np.clip(1.0 - np.hypot(xx + 0.5 - (bx - 0.3 * bubble_r), yy + 0.5 - (by - 0.3 * bubble_r))
                                / (0.5 * bubble_r), 0.0, 1.0)
            lift = 0.5 * dome + 0.3 * highlight
            dough = dough + (255.0 - dough) * lift[..., None]
            centres.append((bx - bubble_r, by - bubble_r))
            centres.append((bx + bubble_r, by + bubble_r))
        truth.append({"class": "bubbled", "box": _box(np.array(centres), 1.0, size)})

    # --- cracks: dark jagged polylines from inside the cookie towards (often through) the rim.
    if "cracked" in defects:
        crack_layer = Image.new("L", (size, size), 0)
        pen = ImageDraw.Draw(crack_layer)
        crack_points = []
        for _ in range(int(crack_rng.integers(1, 3))):
            angle = crack_rng.uniform(0, 2 * math.pi)
            start = crack_rng.uniform(0.0, 0.45) * radius
            x, y = cx + start * math.cos(angle), cy + start * math.sin(angle)
            heading = angle + crack_rng.uniform(-0.6, 0.6)
            points = [(x, y)]
            for _ in range(int(crack_rng.integers(6, 11))):
                step = crack_rng.uniform(5.0, 9.0) * s * shot.scale
                heading += crack_rng.uniform(-0.7, 0.7)
                x, y = x + step * math.cos(heading), y + step * math.sin(heading)
                if math.hypot(x - cx, y - cy) > 0.92 * radius:
                    break
                points.append((x, y))
            if len(points) < 3:  # too short to see: go the other way from the start
                heading = angle + math.pi
                while len(points) < 4:
                    x, y = x + 6.0 * s * math.cos(heading), y + 6.0 * s * math.sin(heading)
                    points.append((x, y))
            width = int(crack_rng.integers(2, 4))
            pen.line(points, fill=255, width=max(2, round(width * s)), joint="curve")
            crack_points.extend(points)
        crack = np.asarray(crack_layer.filter(ImageFilter.GaussianBlur(0.6)), dtype=np.float32) / 255.0
        dough *= (1.0 - 0.78 * crack)[..., None]
        truth.append({"class": "cracked", "box": _box(np.array(crack_points), 2.5 * s, size)})

    if "deformed" in defects or "burnt" in defects:
        cookie_box = _box(cookie_pixels, 0.5, size)
        if "deformed" in defects:
            truth.append({"class": "deformed", "box": cookie_box})
        if "burnt" in defects:
            truth.append({"class": "burnt", "box": cookie_box})

    # --- belt: blue-grey with a woven texture (or the drawn plant's belt); a soft shadow under the cookie.
    if variation.rng is None:
        belt = np.broadcast_to(BELT_RGB, (size, size, 3)).astype(np.float32)
        weave = 1.0 + 0.03 * np.sin(yy * (2 * math.pi / 5.0)) + belt_rng.normal(0.0, 0.02, size=(size, size))
        belt = belt * weave[..., None].astype(np.float32)
    else:
        belt = _belt(variation.belt, belt_rng, size, s, yy, xx)
    shadow = np.clip((outline + 5.0 * s - rho) / (5.0 * s), 0.0, 1.0)
    belt *= (1.0 - variation.shadow * shadow)[..., None]
    frame = belt * (1.0 - coverage[..., None]) + dough * coverage[..., None]
    if variation.neighbours and variation.rng is not None:
        _neighbours(frame, variation.neighbours, variation.rng, cx, cy, max_extent, radius, variation.shadow)
    if variation.quarter_turns or variation.mirror:
        frame = np.rot90(frame, variation.quarter_turns)
        if variation.mirror:
            frame = frame[:, ::-1]
        truth = [{"class": t["class"], "box": _turn_box(t["box"], size, variation.quarter_turns, variation.mirror)}
                 for t in truth]

    # --- camera: lighting (brightness, colour temperature, gradient), blur, noise.
    ramp = (dx * math.cos(shot.gradient_angle) + dy * math.sin(shot.gradient_angle)) / size
    light = shot.brightness * (1.0 + shot.gradient * ramp)
    frame = frame * light[..., None] * shot.color_gains
    image = Image.fromarray(np.clip(frame, 0, 255).astype(np.uint8), mode="RGB")
    if shot.blur_sigma > 0.05:
        image = image.filter(ImageFilter.GaussianBlur(shot.blur_sigma * s))
    pixels = np.asarray(image, dtype=np.float32)
    pixels = pixels + shot_rng.normal(0.0, shot.noise_sigma, size=pixels.shape)
    image = Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8), mode="RGB")

    buffer = io.BytesIO()
    if variation.jpeg_quality is not None:
        image.save(buffer, format="JPEG", quality=variation.jpeg_quality)
    else:
        image.save(buffer, format="PNG", compress_level=1)
    truth.sort(key=lambda d: DEFECT_CLASSES.index(d["class"]))
    return buffer.getvalue(), truth


OUT_OF_DISTRIBUTION: tuple[str, ...] = ("blank_belt", "something_else", "zoomed")


def render_unusual(kind: str, rng: np.random.Generator, size: int = 256) -> bytes:
    """An image a cookie detector should decline to judge (PNG): a blank belt of any kind, a scene that is not
    a cookie on a belt (smooth coloured regions and objects, like a photo of something else), or a cookie
    seen at 10x zoom (only dough, perhaps a crack or blister, fills the frame)."""
    if kind == "blank_belt":
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        frame = _belt(str(rng.choice(list(_BELTS))), rng, size, size / 256.0, yy, xx)
        frame *= (1.0 + rng.uniform(0, 0.1) * (xx / size - 0.5))[..., None]
    elif kind == "something_else":
        colours = rng.uniform(20, 235, size=(2, 3)).astype(np.float32)
        horizon = _smooth_noise(rng, size, 3)[..., None] * 0.5 + np.linspace(0, 1, size)[:, None, None]
        frame = np.where(horizon > 0.5, colours[0], colours[1]).astype(np.float32)
        frame *= (1.0 + 0.15 * _smooth_noise(rng, size, 16))[..., None]
        for _ in range(int(rng.integers(1, 5))):
            _blob(frame, rng.uniform(0, size), rng.uniform(0, size), rng.uniform(0.05, 0.3) * size,
                  rng.uniform(0.05, 0.3) * size, rng.uniform(0, math.pi),
                  rng.uniform(10, 245, size=3).astype(np.float32), 1.0, 0.3)
    elif kind == "zoomed":
        big = 1024
        png, _ = render_cookie(random_defects(rng, 0.6), rng, size=big)
        cookie = Image.open(io.BytesIO(png))
        side = big // 10
        x0, y0 = (int(v) for v in rng.integers(big // 2 - 2 * side, big // 2 + side, size=2))
        zoomed = cookie.crop((x0, y0, x0 + side, y0 + side)).resize((size, size), Image.Resampling.BICUBIC)
        frame = np.asarray(zoomed, dtype=np.float32)
    else:
        raise ValueError(f"unknown kind {kind!r}; expected one of {OUT_OF_DISTRIBUTION}")
    frame = frame + rng.normal(0.0, 3.0, size=frame.shape)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(frame, 0, 255).astype(np.uint8), mode="RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def random_defects(rng: np.random.Generator, defect_rate: float = 0.5) -> frozenset[str]:
    """A cookie's defects for test sets: good with probability 1 - defect_rate, else 1-3 classes at once."""
    if rng.random() >= defect_rate:
        return frozenset()
    count = int(rng.choice([1, 1, 1, 2, 2, 3]))
    return frozenset(str(c) for c in rng.choice(DEFECT_CLASSES, size=count, replace=False))


class CameraEmitter:
    """Posts one rendered image per item to the vision intake (multipart upload, see services/vision/README.md).

    The true boxes of every emitted item are kept in `ground_truth[item_id]`, so tests can score the verdicts.
    """

    def __init__(
        self,
        intake_url: str,
        rng: np.random.Generator | None = None,
        size: int = 256,
        conditions: CameraConditions | None = None,
        session: Any | None = None,
        timeout_s: float = 10.0,
        token: str | None = None,
    ) -> None:
        self.intake_url = intake_url
        # the camera's bearer token (one of the vision service's LINEGUARD_VISION_TOKENS)
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.rng = rng if rng is not None else np.random.default_rng()
        self.size = size
        self.conditions = conditions
        self.timeout_s = timeout_s
        self._session = session
        self._owns_session = session is None
        self.ground_truth: dict[str, list[dict]] = {}
        self.sent = 0
        self.failed = 0

    async def _client(self) -> Any:
        import aiohttp

        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s))
        return self._session

    async def emit(
        self, line_id: str, station: str, item_id: str, captured_at: datetime | str, defects: frozenset[str]
    ) -> None:
        import aiohttp

        # the seed is drawn here, in call order, so a run stays reproducible; the rendering (10-20 ms) runs in a
        # thread so the simulator's event loop keeps its pace
        image_rng = np.random.default_rng(int(self.rng.integers(0, 2**63 - 1)))
        png, truth = await asyncio.to_thread(render_cookie, frozenset(defects), image_rng, self.size,
                                             self.conditions)
        self.ground_truth[item_id] = truth
        form = aiohttp.FormData()
        form.add_field("line_id", line_id)
        form.add_field("station", station)
        form.add_field("item_id", item_id)
        stamp = captured_at.isoformat() if isinstance(captured_at, datetime) else str(captured_at)
        form.add_field("captured_at", stamp)
        kind = "jpeg" if png[:2] == b"\xff\xd8" else "png"
        form.add_field("image", png, filename=f"{item_id}.{kind}", content_type=f"image/{kind}")
        session = await self._client()
        async with session.post(self.intake_url, data=form, headers=self.headers) as response:
            if response.status >= 300:
                self.failed += 1
                detail = await response.text()
                raise RuntimeError(f"vision intake refused item {item_id}: HTTP {response.status} {detail[:200]}")
        self.sent += 1

    async def close(self) -> None:
        if self._session is not None and self._owns_session:
            await self._session.close()
        self._session = None
