"""``shapes``: edgeprune's own procedurally generated 10-class 32x32 RGB image set.

The class is the outline of one shape; everything else is a nuisance drawn at random:
position, scale, a small rotation, aspect ratio, foreground texture (solid, stripes, checker,
gradient), background colour and texture, distractor strokes, a partial occluder,
brightness/contrast and Gaussian pixel noise. Small shapes are only a few pixels across, so
circle/hexagon/star and square/plus/ell are genuinely confusable: a ResNet-20 does not reach
100%. Generation is vectorised numpy, deterministic in ``seed`` (the same ``(n, seed)`` always
gives the same images, on any machine with the same numpy).
"""

from __future__ import annotations

import numpy as np

CLASS_NAMES = ("circle", "square", "triangle", "plus", "ring", "diamond", "hexagon", "star",
               "crescent", "ell")

_SS = 2  # supersampling factor for anti-aliased edges
_MAX_ROT = np.deg2rad(15.0)  # keeps square/diamond and plus/x apart (they differ by 45 deg)


def _polygon(u: np.ndarray, v: np.ndarray, k: int, phase: float) -> np.ndarray:
    """Inside of a regular k-gon with circumradius 1 whose first edge normal is at ``phase``."""
    inside = np.ones(u.shape, dtype=bool)
    apothem = np.cos(np.pi / k)
    for i in range(k):
        a = phase + 2 * np.pi * i / k
        inside &= u * np.cos(a) + v * np.sin(a) <= apothem
    return inside


def _mask(cls: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    r = np.hypot(u, v)
    if cls == 0:  # circle
        return r <= 0.9
    if cls == 1:  # square
        return _polygon(u, v, 4, 0.0) & (r <= 1.2)
    if cls == 2:  # triangle, apex up (v grows downwards)
        return _polygon(u * 1.05, v * 1.05 - 0.15, 3, np.pi / 2)
    if cls == 3:  # plus
        return ((np.abs(u) <= 0.3) & (np.abs(v) <= 0.95)) | ((np.abs(v) <= 0.3) & (np.abs(u) <= 0.95))
    if cls == 4:  # ring
        return (r <= 0.95) & (r >= 0.55)
    if cls == 5:  # diamond
        return np.abs(u) + np.abs(v) <= 1.05
    if cls == 6:  # hexagon
        return _polygon(u, v, 6, 0.0)
    if cls == 7:  # five-pointed star
        phi = np.arctan2(v, u) + np.pi / 2
        return r <= 0.42 + 0.58 * ((0.5 + 0.5 * np.cos(5 * phi)) ** 2)
    if cls == 8:  # crescent
        return (r <= 0.95) & (np.hypot(u - 0.45, v) >= 0.7)
    if cls == 9:  # ell
        return (((u >= -0.8) & (u <= -0.2)) & (np.abs(v) <= 0.85)) | (
            (np.abs(u) <= 0.8) & (v >= 0.25) & (v <= 0.85))
    raise ValueError(cls)


def _texture(rng: np.random.Generator, n: int, gu: np.ndarray, gv: np.ndarray) -> np.ndarray:
    """A texture weight in [0, 1] per pixel, one random kind per image: (n, H, W)."""
    kind = rng.integers(0, 4, n)
    freq = rng.uniform(2.0, 6.0, (n, 1, 1))
    ang = rng.uniform(0, np.pi, (n, 1, 1))
    proj = gu * np.cos(ang) + gv * np.sin(ang)
    stripes = (np.sin(freq * np.pi * proj) > 0).astype(np.float32)
    checker = ((np.sin(freq * np.pi * gu) * np.sin(freq * np.pi * gv)) > 0).astype(np.float32)
    gradient = np.clip(0.5 + 0.5 * proj, 0, 1).astype(np.float32)
    solid = np.zeros_like(gradient)
    out = np.stack([solid, stripes, checker, gradient])  # (4, n, H, W)
    return out[kind, np.arange(n)]


def _colours(rng: np.random.Generator, n: int, avoid: np.ndarray | None, min_dist: float) -> np.ndarray:
    cols = rng.uniform(0, 1, (n, 3)).astype(np.float32)
    if avoid is None:
        return cols
    for _ in range(50):  # rejection sampling, vectorised
        bad = np.linalg.norm(cols - avoid, axis=1) < min_dist
        if not bad.any():
            break
        cols[bad] = rng.uniform(0, 1, (int(bad.sum()), 3))
    return cols


def generate(n: int, *, seed: int = 0, size: int = 32, chunk: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(images, labels)``: uint8 (n, size, size, 3) NHWC and int64 (n,)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n, dtype=np.int64) % len(CLASS_NAMES)
    rng.shuffle(labels)
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        images[start:stop] = _render(np.random.default_rng([seed, start]), labels[start:stop], size)
    return images, labels


def _render(rng: np.random.Generator, labels: np.ndarray, size: int) -> np.ndarray:
    n = len(labels)
    hi = size * _SS
    axis = (np.arange(hi, dtype=np.float32) + 0.5) / hi * 2 - 1
    gv, gu = np.meshgrid(axis, axis, indexing="ij")  # gv: rows (down), gu: columns
    gu = gu[None]
    gv = gv[None]

    # geometry
    scale = rng.uniform(0.28, 0.62, (n, 1, 1)).astype(np.float32)
    aspect = rng.uniform(0.85, 1.15, (n, 1, 1)).astype(np.float32)
    lim = 0.95 - scale
    cx = rng.uniform(-1, 1, (n, 1, 1)).astype(np.float32) * lim
    cy = rng.uniform(-1, 1, (n, 1, 1)).astype(np.float32) * lim
    rot = rng.uniform(-_MAX_ROT, _MAX_ROT, (n, 1, 1)).astype(np.float32)
    du, dv = gu - cx, gv - cy
    u = (du * np.cos(rot) + dv * np.sin(rot)) / (scale * aspect)
    v = (-du * np.sin(rot) + dv * np.cos(rot)) / (scale / aspect)
    mask = np.zeros((n, hi, hi), dtype=bool)
    for cls in np.unique(labels):
        idx = labels == cls
        mask[idx] = _mask(int(cls), u[idx], v[idx])

    # colours and textures
    bg1 = _colours(rng, n, None, 0)
    fg1 = _colours(rng, n, bg1, 0.45)
    bg2 = np.clip(bg1 + rng.normal(0, 0.15, (n, 3)), 0, 1).astype(np.float32)
    fg2 = np.clip(fg1 + rng.normal(0, 0.3, (n, 3)), 0, 1).astype(np.float32)
    t_fg = _texture(rng, n, u, v)[..., None]
    t_bg = _texture(rng, n, gu.repeat(n, 0), gv.repeat(n, 0))[..., None]
    fg = fg1[:, None, None] * (1 - t_fg) + fg2[:, None, None] * t_fg
    bg = bg1[:, None, None] * (1 - t_bg) + bg2[:, None, None] * t_bg
    img = np.where(mask[..., None], fg, bg)

    # distractor strokes: thin random line segments in random colours
    for _ in range(2):
        present = rng.uniform(0, 1, (n, 1, 1)) < 0.6
        p0 = rng.uniform(-1, 1, (n, 2, 1, 1)).astype(np.float32)
        ang = rng.uniform(0, np.pi, (n, 1, 1)).astype(np.float32)
        length = rng.uniform(0.2, 0.6, (n, 1, 1)).astype(np.float32)
        ex, ey = np.cos(ang), np.sin(ang)
        t = (gu - p0[:, 0]) * ex + (gv - p0[:, 1]) * ey
        dist = np.abs(-(gu - p0[:, 0]) * ey + (gv - p0[:, 1]) * ex)
        stroke = present & (dist <= 0.045) & (t >= 0) & (t <= length)
        col = rng.uniform(0, 1, (n, 3)).astype(np.float32)
        img = np.where(stroke[..., None], col[:, None, None], img)

    # occluder: a background-coloured rectangle over part of some shapes
    occ = rng.uniform(0, 1, (n, 1, 1)) < 0.3
    ox = cx + rng.uniform(-1, 1, (n, 1, 1)).astype(np.float32) * scale
    oy = cy + rng.uniform(-1, 1, (n, 1, 1)).astype(np.float32) * scale
    ow = rng.uniform(0.1, 0.3, (n, 1, 1)).astype(np.float32) * scale * 2
    box = occ & (np.abs(gu - ox) <= ow / 2) & (np.abs(gv - oy) <= ow / 2)
    img = np.where(box[..., None], bg1[:, None, None], img)

    # downsample (anti-alias), photometric jitter, noise
    img = img.reshape(n, size, _SS, size, _SS, 3).mean(axis=(2, 4))
    contrast = rng.uniform(0.6, 1.0, (n, 1, 1, 1)).astype(np.float32)
    bright = rng.uniform(-0.1, 0.1, (n, 1, 1, 1)).astype(np.float32)
    img = (img - 0.5) * contrast + 0.5 + bright
    sigma = rng.uniform(0.02, 0.13, (n, 1, 1, 1)).astype(np.float32)
    img = img + rng.normal(0, 1, img.shape).astype(np.float32) * sigma
    return np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)
