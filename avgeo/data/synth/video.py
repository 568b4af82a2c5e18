"""Frames of a clip: a parametric landscape panorama, lit and weathered, filmed by a panning, zooming camera.

The panorama (height S, width 3S for S-pixel frames) is drawn from the location's landscape and
layout seed only: sky, optional mountains, optional sea, ground, buildings by urbanity, trees by
climate. Time of day and weather light and veil it; the camera pans and zooms across it; each frame
adds moving water, rain or snow, and sensor noise. Nothing in the drawing depends on where the place
is: only on its look (`Landscape`), which places far apart share.
"""

from __future__ import annotations

import math

import numpy as np

from avgeo.data.synth.config import VisualKnobs
from avgeo.data.synth.scene import ClipScene, Weather
from avgeo.data.synth.world import Landscape, SynthLocation

PANORAMA_WIDTHS = 3
"""Panorama width in frame widths: room for the camera to pan."""

_GROUND_RGB = {
    "tropical": (0.16, 0.42, 0.14),
    "temperate": (0.34, 0.52, 0.24),
    "arid": (0.78, 0.65, 0.44),
    "cold": (0.82, 0.84, 0.88),
}
_TREE_RGB = {
    "tropical": (0.05, 0.3, 0.08),
    "temperate": (0.14, 0.34, 0.12),
    "arid": (0.42, 0.42, 0.24),
    "cold": (0.08, 0.22, 0.14),
}
_TRUNK_RGB = np.array((0.3, 0.22, 0.14), np.float32)
_TREES_PER_PANORAMA = {"urban": 8, "suburban": 24, "rural": 45}
_TREE_DENSITY = {"tropical": 1.3, "temperate": 1.0, "arid": 0.4, "cold": 0.8}
_FACADE_RGB = {
    "brick": (0.58, 0.3, 0.24),
    "stucco": (0.9, 0.88, 0.8),
    "ochre": (0.86, 0.62, 0.4),
    "concrete": (0.62, 0.62, 0.6),
    "pastel": (0.56, 0.8, 0.76),
    "adobe": (0.76, 0.6, 0.44),
    "timber": (0.44, 0.32, 0.22),
    "tile": (0.84, 0.86, 0.88),
}
# (count range, height range as a fraction of S, width range as a fraction of S) per urbanity.
_BUILDINGS = {
    "urban": ((10, 17), (0.15, 0.45), (0.12, 0.3)),
    "suburban": ((8, 15), (0.05, 0.12), (0.1, 0.2)),
    "rural": ((0, 3), (0.04, 0.08), (0.08, 0.14)),
}
_SKY_ZENITH = np.array([(0.22, 0.45, 0.85), (0.18, 0.2, 0.42), (0.01, 0.02, 0.06)], np.float32)
_SKY_HORIZON = np.array([(0.68, 0.8, 0.93), (0.95, 0.55, 0.3), (0.06, 0.08, 0.16)], np.float32)
_LIGHT_TINT = np.array([(1.0, 1.0, 1.0), (1.0, 0.8, 0.65), (0.7, 0.75, 1.0)], np.float32)
_OVERCAST_RGB = np.array((0.6, 0.62, 0.65), np.float32)
_FOG_RGB = np.array((0.78, 0.79, 0.8), np.float32)
_LIT_WINDOW_RGB = np.array((1.0, 0.85, 0.55), np.float32)
_WATER_RGB = np.array((0.12, 0.3, 0.48), np.float32)
_MOUNTAIN_RGB = np.array((0.42, 0.46, 0.55), np.float32)
_CLOUD_COVER = {"clear": 0.15, "cloudy": 0.6, "rain": 0.85, "fog": 0.0, "snow": 0.75}
_WEATHER_DIM = {"clear": 1.0, "cloudy": 0.85, "rain": 0.65, "fog": 0.85, "snow": 0.8}
_WEATHER_GREY = {"clear": 0.0, "cloudy": 0.35, "rain": 0.5, "fog": 0.2, "snow": 0.3}


def render_frames(
    scene: ClipScene, size_px: int, fps: int, duration_s: float, knobs: VisualKnobs
) -> np.ndarray:
    """(T, S, S, 3) uint8 RGB frames of `scene`, T = round(duration_s * fps), S = `size_px`."""
    rng = np.random.default_rng([scene.render_seed, 0])
    horizon, ground_top = _horizon_rows(scene.location, size_px)
    panorama = _panorama(scene, size_px, horizon, ground_top, knobs.facade_share, rng)
    n_frames = max(1, round(duration_s * fps))
    rows, cols = _camera_rows_cols(scene, size_px, panorama.shape[1], n_frames, rng)
    # Nearest-neighbour sampling: a quarter of bilinear's cost, and at zooms up to 1.4 a panorama pixel
    # covers at most two frame pixels.
    row_index = np.clip(np.rint(rows), 0, size_px - 1).astype(np.int32)
    col_index = np.clip(np.rint(cols), 0, panorama.shape[1] - 1).astype(np.int32)
    pixel_index = row_index[:, :, None] * panorama.shape[1] + col_index[:, None, :]
    frames = np.take(panorama.reshape(-1, 3), pixel_index, axis=0)
    water_rows = (row_index >= horizon) & (row_index < ground_top)
    frames = _animate(frames, rows, cols, water_rows, scene.weather, fps, knobs.pixel_noise, rng)
    return (np.clip(frames, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _horizon_rows(location: SynthLocation, size_px: int) -> tuple[int, int]:
    """(horizon, ground_top) rows of the location's panorama; the sea, if any, lies between them."""
    rng = np.random.default_rng([location.layout_seed, 1])
    horizon = int(size_px * rng.uniform(0.42, 0.58))
    return horizon, horizon + (int(size_px * rng.uniform(0.08, 0.16)) if location.landscape.coast else 0)


def _panorama(
    scene: ClipScene,
    size_px: int,
    horizon: int,
    ground_top: int,
    facade_share: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """(S, 3S, 3) float32 RGB in [0, 1]: the location's layout, lit for the scene's time and weather."""
    landscape = scene.location.landscape
    layout_rng = np.random.default_rng(scene.location.layout_seed)
    height, width = size_px, PANORAMA_WIDTHS * size_px
    rows = np.arange(height, dtype=np.float32)[:, None]
    w_day, w_twilight, w_night = _daylight_weights(scene.time_of_day_h)
    weights = np.array([w_day, w_twilight, w_night], np.float32)

    image = np.empty((height, width, 3), np.float32)
    sky_t = (rows[:horizon] / max(horizon - 1, 1))[..., None]
    image[:horizon] = (1 - sky_t) * (weights @ _SKY_ZENITH) + sky_t * (weights @ _SKY_HORIZON)
    cloud_field = _smooth_noise(rng, (horizon, width), (4, 12))
    cloud_alpha = np.clip((cloud_field - (1 - _CLOUD_COVER[scene.weather])) * 4, 0, 0.9)[..., None]
    cloud_rgb = np.float32(0.95 * w_day + 0.75 * w_twilight + 0.12 * w_night)
    image[:horizon] = (1 - cloud_alpha) * image[:horizon] + cloud_alpha * cloud_rgb

    ground_rgb = np.array(_GROUND_RGB[landscape.climate], np.float32)
    texture = _smooth_noise(layout_rng, (height - horizon, width), (6, 36))[..., None]
    image[horizon:] = ground_rgb * (0.8 + 0.4 * texture)
    if landscape.coast:
        image[horizon:ground_top] = 0.65 * _WATER_RGB + 0.35 * image[horizon - 1]
    # Everything but the sky is lit by the sun (or not).
    sunlit = np.zeros((height, width), bool)
    sunlit[horizon:] = True
    if landscape.mountains:
        _draw_mountains(image, sunlit, horizon, landscape, layout_rng)
    lit_windows = _draw_buildings(image, sunlit, ground_top, landscape, facade_share, scene, layout_rng, rng)
    _draw_trees(image, sunlit, ground_top, landscape, layout_rng)

    light = 0.15 + 0.85 * w_day + 0.45 * w_twilight
    image[sunlit] *= light * (weights @ _LIGHT_TINT) * _WEATHER_DIM[scene.weather]
    image[lit_windows] = _LIT_WINDOW_RGB * (0.4 + 0.6 * w_night)
    grey = _WEATHER_GREY[scene.weather]
    image = (1 - grey) * image + grey * _OVERCAST_RGB * (0.25 + 0.75 * light)
    if scene.weather == "fog":
        # Fog thickens with distance: strongest at the horizon.
        depth = np.clip(1.0 - np.abs(rows - horizon) / height, 0.0, 1.0)[..., None]
        image = (1 - 0.7 * depth) * image + 0.7 * depth * _FOG_RGB * (0.3 + 0.7 * light)
    return image


def _daylight_weights(time_of_day_h: float) -> tuple[float, float, float]:
    """(day, twilight, night) weights summing to 1, from the sun's height over a 6:00-18:00 day."""
    sun = math.sin(math.pi * (time_of_day_h - 6.0) / 12.0)
    day = _smoothstep(-0.05, 0.35, sun)
    night = _smoothstep(0.0, -0.3, sun)
    return day, max(0.0, 1.0 - day - night), night


def _smoothstep(edge_from: float, edge_to: float, value: float) -> float:
    t = min(1.0, max(0.0, (value - edge_from) / (edge_to - edge_from)))
    return t * t * (3 - 2 * t)


def _draw_mountains(
    image: np.ndarray, sunlit: np.ndarray, horizon: int, landscape: Landscape, layout_rng: np.random.Generator
) -> None:
    height, width = image.shape[:2]
    columns = np.arange(width, dtype=np.float32)
    profile = np.full(width, layout_rng.uniform(0.1, 0.16), np.float32)
    for cycles in (1, 2, 5, 11):
        profile += (
            layout_rng.uniform(0.02, 0.08)
            / math.sqrt(cycles)
            * np.sin(2 * math.pi * cycles * columns / width + layout_rng.uniform(0, 2 * math.pi))
        )
    peak_px = np.clip(profile, 0.03, 0.3) * height
    rows = np.arange(horizon, dtype=np.float32)[:, None]
    above_horizon_px = horizon - rows
    mountain = above_horizon_px <= peak_px[None, :]
    colour = 0.7 * _MOUNTAIN_RGB + 0.3 * np.array(_GROUND_RGB[landscape.climate], np.float32)
    snowline = 0.55 if landscape.climate == "cold" else 0.8
    snow = mountain & (above_horizon_px > snowline * peak_px.max())
    image[:horizon][mountain] = colour
    image[:horizon][snow] = 0.92
    sunlit[:horizon] |= mountain


def _draw_buildings(
    image: np.ndarray,
    sunlit: np.ndarray,
    ground_top: int,
    landscape: Landscape,
    facade_share: float,
    scene: ClipScene,
    layout_rng: np.random.Generator,
    rng: np.random.Generator,
) -> np.ndarray:
    """Draw facades standing on `ground_top`, a share `facade_share` in the location's style and the rest
    in random ones; returns the (H, W) mask of windows lit in this clip."""
    height, width = image.shape[:2]
    (count_low, count_high), height_range, width_range = _BUILDINGS[landscape.urbanity]
    styles = list(_FACADE_RGB)
    lit = np.zeros((height, width), bool)
    # Lights come on with dusk; which windows are lit changes from clip to clip.
    _, w_twilight, w_night = _daylight_weights(scene.time_of_day_h)
    lit_share = 0.35 * w_night + 0.1 * w_twilight
    for _ in range(int(layout_rng.integers(count_low, count_high + 1))):
        facade_h = max(3, int(height * layout_rng.uniform(*height_range)))
        facade_w = max(3, int(height * layout_rng.uniform(*width_range)))
        left = int(layout_rng.integers(0, width - facade_w))
        top = max(0, ground_top - facade_h)
        own_style = layout_rng.random() < facade_share
        style = landscape.facade if own_style else styles[layout_rng.integers(len(styles))]
        facade = image[top:ground_top, left : left + facade_w]
        facade[:] = np.array(_FACADE_RGB[style], np.float32) * layout_rng.uniform(0.9, 1.1)
        sunlit[top:ground_top, left : left + facade_w] = True
        if landscape.urbanity == "suburban":
            _draw_roof(image, sunlit, top, left, facade_w)
        window_rows = (np.arange(facade.shape[0]) % 4 == 2)[:, None]
        window_cols = (np.arange(facade_w) % 4 == 2)[None, :]
        windows = window_rows & window_cols
        facade[windows] *= 0.55
        lit[top:ground_top, left : left + facade_w] |= windows & (rng.random(windows.shape) < lit_share)
    return lit


def _draw_roof(image: np.ndarray, sunlit: np.ndarray, top: int, left: int, facade_w: int) -> None:
    roof_h = max(2, facade_w // 3)
    for step in range(min(roof_h, top)):
        inset = (step * facade_w) // (2 * roof_h)
        image[top - 1 - step, left + inset : left + facade_w - inset] = (0.45, 0.22, 0.18)
        sunlit[top - 1 - step, left + inset : left + facade_w - inset] = True


def _draw_trees(
    image: np.ndarray,
    sunlit: np.ndarray,
    ground_top: int,
    landscape: Landscape,
    layout_rng: np.random.Generator,
) -> None:
    height, width = image.shape[:2]
    n_trees = int(_TREES_PER_PANORAMA[landscape.urbanity] * _TREE_DENSITY[landscape.climate])
    tree_rgb = np.array(_TREE_RGB[landscape.climate], np.float32)
    # Most trees stand far off, near the horizon; nearer ones stand lower in the frame and look bigger.
    # Far ones are drawn first so that near ones hide them.
    depths = np.sort(layout_rng.random(n_trees) ** 2)
    for depth in depths:
        base_y = min(height - 1, ground_top + 1 + int(depth * (height - ground_top)))
        radius = max(1.5, height * 0.04 * (0.6 + 2.0 * depth) * (0.5 if landscape.climate == "arid" else 1.0))
        centre_x = layout_rng.uniform(0, width)
        shade = layout_rng.uniform(0.75, 1.15)
        y0 = max(0, int(base_y - 3.5 * radius))
        x0, x1 = max(0, int(centre_x - radius - 1)), min(width, int(centre_x + radius + 2))
        yy = np.arange(y0, base_y + 1, dtype=np.float32)[:, None]
        xx = np.arange(x0, x1, dtype=np.float32)[None, :]
        if landscape.climate == "cold":
            # A conifer: a triangle widening downwards from its tip.
            tip_y = base_y - 3.0 * radius
            crown = (yy >= tip_y) & (np.abs(xx - centre_x) <= (yy - tip_y) / 3.0)
            trunk = np.zeros_like(crown)
        elif landscape.climate == "arid":
            crown = (yy - (base_y - radius)) ** 2 + (xx - centre_x) ** 2 <= radius**2
            trunk = np.zeros_like(crown)
        else:
            crown = (yy - (base_y - 2.2 * radius)) ** 2 + (xx - centre_x) ** 2 <= radius**2
            trunk = (yy > base_y - 1.5 * radius) & (np.abs(xx - centre_x) <= max(0.5, radius / 5))
        patch = image[y0 : base_y + 1, x0:x1]
        patch[trunk] = _TRUNK_RGB
        patch[crown] = tree_rgb * shade
        sunlit[y0 : base_y + 1, x0:x1] |= crown | trunk


def _camera_rows_cols(
    scene: ClipScene, size_px: int, panorama_w: int, n_frames: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(T, S) panorama rows and (T, S) columns the frames' pixel rows and columns look at: the camera
    pans and zooms linearly from its start to its end framing, with a little hand shake."""
    progress = np.linspace(0.0, 1.0, n_frames, dtype=np.float32) if n_frames > 1 else np.zeros(1, np.float32)
    zoom = (scene.zoom_start + (scene.zoom_end - scene.zoom_start) * progress)[:, None]
    centre_col = (scene.pan_start + (scene.pan_end - scene.pan_start) * progress)[:, None] * panorama_w
    shake_rows, shake_cols = rng.normal(0.0, 0.4, size=(2, n_frames, 1)).astype(np.float32)
    offsets = (np.arange(size_px, dtype=np.float32) + 0.5 - size_px / 2)[None, :]
    rows = size_px / 2 - 0.5 + shake_rows + offsets / zoom
    return rows, centre_col - 0.5 + shake_cols + offsets / zoom


def _bilinear(image_hwc: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Sample (H, W, C) at float coordinates `ys`, `xs` (any equal shapes) -> (*shape, C), edges clamped."""
    height, width = image_hwc.shape[:2]
    ys = np.clip(ys, 0, height - 1)
    xs = np.clip(xs, 0, width - 1)
    y0 = np.minimum(ys.astype(np.int32), height - 2)
    x0 = np.minimum(xs.astype(np.int32), width - 2)
    wy = (ys - y0.astype(np.float32))[..., None]
    wx = (xs - x0.astype(np.float32))[..., None]
    top = image_hwc[y0, x0] * (1 - wx) + image_hwc[y0, x0 + 1] * wx
    bottom = image_hwc[y0 + 1, x0] * (1 - wx) + image_hwc[y0 + 1, x0 + 1] * wx
    return top * (1 - wy) + bottom * wy


def _smooth_noise(
    rng: np.random.Generator, shape_hw: tuple[int, int], cells_hw: tuple[int, int]
) -> np.ndarray:
    """(H, W) float32 noise in [0, 1], smooth over `cells_hw` cells (a bilinearly upsampled random grid)."""
    grid = rng.random((cells_hw[0] + 1, cells_hw[1] + 1, 1), dtype=np.float32)
    ys = np.linspace(0, cells_hw[0], shape_hw[0], dtype=np.float32)[:, None]
    xs = np.linspace(0, cells_hw[1], shape_hw[1], dtype=np.float32)[None, :]
    ys, xs = np.broadcast_arrays(ys, xs)
    return _bilinear(grid, ys, xs)[..., 0]


def _animate(
    frames: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    water_rows: np.ndarray,
    weather: Weather,
    fps: int,
    pixel_noise: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """What moves in (T, S, S, 3) `frames`: glinting water in `water_rows` (T, S), rain or snow, and
    sensor noise; `rows` and `cols` (T, S) are the panorama coordinates in view."""
    n_frames = frames.shape[0]
    if water_rows.any():
        time_s = (np.arange(n_frames, dtype=np.float32) / fps)[:, None, None]
        glint = 0.06 * np.sin(0.9 * cols[:, None, :] + 1.7 * rows[:, :, None] + 2.5 * time_s)
        frames = frames + (water_rows[:, :, None] * glint)[..., None]
    if weather in ("rain", "snow"):
        density, colour = (0.012, 0.8) if weather == "rain" else (0.006, 0.97)
        drops = rng.random(frames.shape[:3]) < density
        if weather == "rain":
            # Streaks: each drop smeared over the three rows below it.
            drops = drops | np.roll(drops, 1, axis=1) | np.roll(drops, 2, axis=1)
        frames = np.where(drops[..., None], 0.5 * frames + 0.5 * colour, frames)
    flicker = rng.normal(1.0, 0.01, size=(n_frames, 1, 1, 1)).astype(np.float32)
    # Uniform noise of the same standard deviation as Gaussian sensor noise, at a third of the cost.
    noise = (rng.random(frames.shape, dtype=np.float32) - 0.5) * np.float32(pixel_noise * math.sqrt(12.0))
    return frames * flicker + noise
