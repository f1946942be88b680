"""Procedural scenes: coloured shapes on a textured background, deterministic from a seed.

A scene is a 112×112 RGB image (a ViT with patch 8 sees it as a 14×14 grid of 196 visual
tokens, most of them background) holding 1-8 non-overlapping shapes, plus a structured
description from which every task answer is derived. No external data is used.

Example::

    >>> from vtp_compile.scenes.generator import generate_scene
    >>> image, scene = generate_scene(seed=3)
    >>> image.size, len(scene.shapes) >= 1
    ((112, 112), True)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 112
GRID = 3  # coarse grid used for grounding answers ("row r col c", 1-based)
KINDS = ("square", "circle", "triangle")
COLOURS = {
    "red": (215, 45, 40),
    "green": (40, 170, 60),
    "blue": (45, 85, 225),
    "yellow": (230, 205, 40),
}
SIZES = {"small": (16, 20), "large": (24, 28)}  # side length range in pixels, inclusive
_MARGIN = 3  # minimum free pixels between shapes and to the image border


@dataclass(frozen=True)
class Shape:
    """One shape in a scene.

    ``bbox`` is ``(x0, y0, x1, y1)`` in pixels (x1, y1 exclusive); ``centre`` is ``(cx, cy)``;
    ``cell`` is the 1-based ``(row, col)`` of the centre on the ``GRID``×``GRID`` grid.
    """

    kind: str
    colour: str
    size: str
    bbox: tuple[int, int, int, int]

    @property
    def centre(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.bbox
        return ((x0 + x1) / 2.0, (y0 + y1) / 2.0)

    @property
    def cell(self) -> tuple[int, int]:
        cx, cy = self.centre
        return (grid_index(cy), grid_index(cx))


@dataclass(frozen=True)
class Scene:
    """Structured description of a generated image (what the tasks read their answers from)."""

    seed: int
    shapes: tuple[Shape, ...]
    width: int = IMAGE_SIZE
    height: int = IMAGE_SIZE
    background: dict = field(default_factory=dict)


def grid_index(coord: float, size: int = IMAGE_SIZE, grid: int = GRID) -> int:
    """1-based index of the grid band that pixel coordinate ``coord`` falls in."""
    return min(grid, int(coord * grid // size) + 1)


def _background(rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Grey-ish textured clutter: per-pixel noise plus faint oriented stripes and soft blobs."""
    base = rng.uniform(95, 150)
    tint = rng.uniform(-8, 8, size=3)
    yy, xx = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    period = rng.uniform(6, 18)
    amp = rng.uniform(3, 10)
    stripes = amp * np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period)
    img = base + tint[None, None, :] + stripes[..., None]
    n_blobs = int(rng.integers(0, 4))
    for _ in range(n_blobs):  # low-contrast smudges: clutter that is not a shape
        bx, by = rng.uniform(0, IMAGE_SIZE, size=2)
        r = rng.uniform(6, 18)
        d2 = (xx - bx) ** 2 + (yy - by) ** 2
        img += (rng.uniform(-14, 14) * np.exp(-d2 / (2 * r * r)))[..., None]
    img += rng.normal(0, 7, size=img.shape)
    info = {"base": float(base), "stripe_angle": float(angle), "stripe_period": float(period),
            "stripe_amp": float(amp), "blobs": n_blobs}
    return np.clip(img, 0, 255).astype(np.uint8), info


def _draw(draw: ImageDraw.ImageDraw, shape: Shape, rgb) -> None:
    x0, y0, x1, y1 = shape.bbox
    if shape.kind == "square":
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=rgb)
    elif shape.kind == "circle":
        draw.ellipse([x0, y0, x1 - 1, y1 - 1], fill=rgb)
    elif shape.kind == "triangle":
        draw.polygon([((x0 + x1 - 1) / 2.0, y0), (x0, y1 - 1), (x1 - 1, y1 - 1)], fill=rgb)
    else:  # pragma: no cover - KINDS is closed
        raise ValueError(f"unknown shape kind {shape.kind!r}; valid: {KINDS}")


def label_map(scene: Scene) -> np.ndarray:
    """``[H, W]`` uint8 map: 0 for background, ``i + 1`` where shape ``i`` covers the pixel."""
    canvas = Image.new("L", (scene.width, scene.height), 0)
    draw = ImageDraw.Draw(canvas)
    for i, shape in enumerate(scene.shapes):
        _draw(draw, shape, i + 1)
    return np.asarray(canvas)


def _place(rng: np.random.Generator, side: int, taken: list[tuple[int, int, int, int]]):
    """Random non-overlapping bbox of the given side, or None after a bounded number of tries."""
    for _ in range(200):
        x0 = int(rng.integers(_MARGIN, IMAGE_SIZE - _MARGIN - side + 1))
        y0 = int(rng.integers(_MARGIN, IMAGE_SIZE - _MARGIN - side + 1))
        box = (x0, y0, x0 + side, y0 + side)
        if all(box[2] + _MARGIN <= t[0] or t[2] + _MARGIN <= box[0]
               or box[3] + _MARGIN <= t[1] or t[3] + _MARGIN <= box[1] for t in taken):
            return box
    return None


def generate_scene(seed: int, n_shapes: int | tuple[int, int] = (1, 8),
                   kinds=KINDS, colours=tuple(COLOURS)) -> tuple[Image.Image, Scene]:
    """Generate one scene deterministically from ``seed``.

    Args:
        seed: any non-negative int; the same seed always gives the same image and description.
        n_shapes: exact count or inclusive ``(low, high)`` range (1-8).
        kinds, colours: the vocabularies to draw from.

    Returns:
        ``(image, scene)``: a 112×112 RGB ``PIL.Image`` and its :class:`Scene`.
    """
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5CE7E]))
    lo, hi = (n_shapes, n_shapes) if isinstance(n_shapes, int) else n_shapes
    if not 1 <= lo <= hi <= 8:
        raise ValueError(f"n_shapes must lie in 1..8, got {n_shapes!r}")
    target = int(rng.integers(lo, hi + 1))
    pixels, bg = _background(rng)
    image = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(image)
    shapes: list[Shape] = []
    while len(shapes) < target:
        size = str(rng.choice(list(SIZES)))
        side = int(rng.integers(SIZES[size][0], SIZES[size][1] + 1))
        box = _place(rng, side, [s.bbox for s in shapes])
        if box is None:  # crowded: retry with a small shape; give up only if even that fails
            size, side = "small", SIZES["small"][0]
            box = _place(rng, side, [s.bbox for s in shapes])
            if box is None:
                break
        shape = Shape(kind=str(rng.choice(kinds)), colour=str(rng.choice(colours)),
                      size=size, bbox=box)
        jitter = rng.integers(-12, 13, size=3)
        rgb = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(COLOURS[shape.colour], jitter))
        _draw(draw, shape, rgb)
        shapes.append(shape)
    return image, Scene(seed=int(seed), shapes=tuple(shapes), background=bg)
