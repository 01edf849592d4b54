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
uneven gradient), blur, sensor noise, scale (distance to the belt) and position on the belt.
"""

from __future__ import annotations

import asyncio
import io
import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

DEFECT_CLASSES: tuple[str, ...] = ("cracked", "deformed", "bubbled", "burnt")

# The belt is a blue-grey food-grade conveyor; the vision service uses it as its colour reference.
BELT_RGB = np.array([78.0, 90.0, 106.0], dtype=np.float32)

# Dough colour along the bake: raw -> golden -> brown -> burnt (bake level 0.0 .. 1.0).
_BAKE_STOPS = np.array([0.0, 0.4, 0.7, 1.0], dtype=np.float32)
_BAKE_RGB = np.array(
    [[236, 206, 152], [214, 162, 92], [160, 98, 46], [62, 36, 20]],
    dtype=np.float32,
)


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

    @classmethod
    def standard(cls) -> CameraConditions:
        return cls()

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
        presets = {"standard": cls.standard, "harsh": cls.harsh}
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


def _bake_to_rgb(bake: np.ndarray) -> np.ndarray:
    bake = np.clip(bake, 0.0, 1.0)
    channels = [np.interp(bake, _BAKE_STOPS, _BAKE_RGB[:, c]) for c in range(3)]
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


def render_cookie(
    defects: frozenset[str],
    rng: np.random.Generator,
    size: int = 256,
    conditions: CameraConditions | None = None,
) -> tuple[bytes, list[dict]]:
    """Render one cookie on the belt; return (PNG bytes, true defect boxes [{"class", "box": [x0,y0,x1,y1]}])."""
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
    dough = _bake_to_rgb(bake)
    texture = 1.0 + 0.05 * _smooth_noise(dough_rng, size, 24) + dough_rng.normal(0.0, 0.025, size=(size, size))
    dough *= texture[..., None].astype(np.float32)

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

    # --- belt: blue-grey with a woven texture; a soft shadow under the cookie.
    belt = np.broadcast_to(BELT_RGB, (size, size, 3)).astype(np.float32)
    weave = 1.0 + 0.03 * np.sin(yy * (2 * math.pi / 5.0)) + belt_rng.normal(0.0, 0.02, size=(size, size))
    belt = belt * weave[..., None].astype(np.float32)
    shadow = np.clip((outline + 5.0 * s - rho) / (5.0 * s), 0.0, 1.0)
    belt *= (1.0 - 0.25 * shadow)[..., None]
    frame = belt * (1.0 - coverage[..., None]) + dough * coverage[..., None]

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
    image.save(buffer, format="PNG", compress_level=1)
    truth.sort(key=lambda d: DEFECT_CLASSES.index(d["class"]))
    return buffer.getvalue(), truth


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
    ) -> None:
        self.intake_url = intake_url
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
        form.add_field("image", png, filename=f"{item_id}.png", content_type="image/png")
        session = await self._client()
        async with session.post(self.intake_url, data=form) as response:
            if response.status >= 300:
                self.failed += 1
                detail = await response.text()
                raise RuntimeError(f"vision intake refused item {item_id}: HTTP {response.status} {detail[:200]}")
        self.sent += 1

    async def close(self) -> None:
        if self._session is not None and self._owns_session:
            await self._session.close()
        self._session = None
