"""Procedural clips: a few frames of one scene in which shapes move, appear and disappear.

A clip is ``n_frames`` (default 4, at most :data:`MAX_FRAMES`) 112×112 frames over one static
textured background (the scene generator's clutter, fresh pixel noise per frame). Each object
(a :class:`Track`) has a ``(colour, kind)`` pair unique in its clip -- so "the red square" names
one object in every frame -- a size, and a bounding box per frame: ``None`` where it is absent.
An object is present over one contiguous run of frames (it may appear after the first frame
and disappear before the last), and either stays put or moves in a straight line at a
constant whole-pixel velocity. Shapes never overlap in a frame. Deterministic from the seed.

Example::

    >>> from vtp_compile.scenes.clips import generate_clip
    >>> frames, clip = generate_clip(seed=3)
    >>> len(frames), frames[0].size, clip.n_frames
    (4, (112, 112), 4)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from .generator import _MARGIN, COLOURS, IMAGE_SIZE, KINDS, SIZES, Scene, Shape, _background, _draw

MAX_FRAMES = 6
DEFAULT_FRAMES = 4
_SPEEDS = (6, 14)  # px per frame along a moving axis (inclusive range), or 0


@dataclass(frozen=True)
class Track:
    """One object of a clip: ``boxes[t]`` is its ``(x0, y0, x1, y1)`` in frame ``t`` (0-based)
    or ``None`` while it is absent."""

    kind: str
    colour: str
    size: str
    boxes: tuple

    def shape(self, t: int) -> Shape | None:
        """The object in frame ``t`` as a scene :class:`Shape` (None if absent)."""
        box = self.boxes[t]
        return None if box is None else Shape(self.kind, self.colour, self.size, box)

    @property
    def frames(self) -> list[int]:
        """0-based frames in which the object is present (one contiguous run)."""
        return [t for t, b in enumerate(self.boxes) if b is not None]

    @property
    def name(self) -> str:
        return f"{self.colour} {self.kind}"

    def dx(self) -> float:
        """Net horizontal displacement of the centre from its first to its last frame (px)."""
        present = self.frames
        a, b = self.boxes[present[0]], self.boxes[present[-1]]
        return (b[0] + b[2]) / 2.0 - (a[0] + a[2]) / 2.0


@dataclass(frozen=True)
class Clip:
    """Structured description of a generated clip (what the clip tasks read answers from)."""

    seed: int
    n_frames: int
    tracks: tuple[Track, ...]
    background: dict = field(default_factory=dict)

    def frame_scene(self, t: int) -> Scene:
        """Frame ``t`` (0-based) as a :class:`Scene` of the objects present in it."""
        shapes = tuple(s for s in (tr.shape(t) for tr in self.tracks) if s is not None)
        return Scene(seed=self.seed, shapes=shapes, background=self.background)


def _inside(box) -> bool:
    x0, y0, x1, y1 = box
    return _MARGIN <= x0 and _MARGIN <= y0 and x1 <= IMAGE_SIZE - _MARGIN and y1 <= IMAGE_SIZE - _MARGIN


def _apart(a, b) -> bool:
    return (a[2] + _MARGIN <= b[0] or b[2] + _MARGIN <= a[0]
            or a[3] + _MARGIN <= b[1] or b[3] + _MARGIN <= a[1])


def _velocity(rng: np.random.Generator) -> int:
    if rng.random() < 0.5:
        return 0
    return int(rng.integers(_SPEEDS[0], _SPEEDS[1] + 1)) * (1 if rng.random() < 0.5 else -1)


def _span(rng: np.random.Generator, n_frames: int) -> tuple[int, int]:
    """Inclusive 0-based ``(first, last)`` frame of an object: whole clip half the time."""
    if rng.random() < 0.5:
        return 0, n_frames - 1
    first = int(rng.integers(0, n_frames))
    last = int(rng.integers(first, n_frames))
    return first, last


def _track_boxes(rng, side, span, n_frames, placed):
    """Boxes of an object over ``span`` that stay inside the image and clear of every ``placed``
    track in every shared frame, or None after a bounded number of tries."""
    first, last = span
    moving = rng.random() < 0.6
    for _ in range(200):
        vx, vy = (_velocity(rng), _velocity(rng)) if moving else (0, 0)
        x0 = int(rng.integers(_MARGIN, IMAGE_SIZE - _MARGIN - side + 1))
        y0 = int(rng.integers(_MARGIN, IMAGE_SIZE - _MARGIN - side + 1))
        boxes = [None] * n_frames
        ok = True
        for t in range(first, last + 1):
            k = t - first
            box = (x0 + k * vx, y0 + k * vy, x0 + k * vx + side, y0 + k * vy + side)
            if not _inside(box) or any(p[t] is not None and not _apart(box, p[t]) for p in placed):
                ok = False
                break
            boxes[t] = box
        if ok:
            return tuple(boxes)
    return None


def generate_clip(seed: int, n_frames: int = DEFAULT_FRAMES,
                  n_objects: int | tuple[int, int] = (1, 5)) -> tuple[list[Image.Image], Clip]:
    """Generate one clip deterministically from ``seed``.

    Args:
        seed: any non-negative int; the same seed always gives the same frames and description.
        n_frames: frames per clip, 2..:data:`MAX_FRAMES`.
        n_objects: exact count or inclusive ``(low, high)`` range of objects (1-8); every frame
            shows at least one of them.

    Returns:
        ``(frames, clip)``: ``n_frames`` 112×112 RGB ``PIL.Image`` and the :class:`Clip`.
    """
    if not 2 <= n_frames <= MAX_FRAMES:
        raise ValueError(f"n_frames must lie in 2..{MAX_FRAMES}, got {n_frames}")
    lo, hi = (n_objects, n_objects) if isinstance(n_objects, int) else n_objects
    if not 1 <= lo <= hi <= 8:
        raise ValueError(f"n_objects must lie in 1..8, got {n_objects!r}")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xC11B, n_frames]))
    target = int(rng.integers(lo, hi + 1))
    pixels, bg = _background(rng)
    pairs = [(c, k) for c in COLOURS for k in KINDS]
    order = rng.permutation(len(pairs))
    tracks: list[Track] = []
    rgbs = []
    for idx in order[:target]:
        colour, kind = pairs[int(idx)]
        size = str(rng.choice(list(SIZES)))
        side = int(rng.integers(SIZES[size][0], SIZES[size][1] + 1))
        span = _span(rng, n_frames)
        boxes = _track_boxes(rng, side, span, n_frames, [t.boxes for t in tracks])
        if boxes is None:
            continue
        tracks.append(Track(kind, colour, size, boxes))
        jitter = rng.integers(-12, 13, size=3)
        rgbs.append(tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(COLOURS[colour], jitter)))
    # every frame shows something: an empty frame gets the first object held still there
    for t in range(n_frames):
        if all(tr.boxes[t] is None for tr in tracks):
            tracks, rgbs = _fill_empty(rng, t, n_frames, tracks, rgbs, pairs)
    frames = []
    for t in range(n_frames):
        noisy = np.clip(pixels.astype(np.int16) + rng.normal(0, 3, size=pixels.shape).astype(np.int16),
                        0, 255).astype(np.uint8)
        image = Image.fromarray(noisy, "RGB")
        draw = ImageDraw.Draw(image)
        for tr, rgb in zip(tracks, rgbs):
            shape = tr.shape(t)
            if shape is not None:
                _draw(draw, shape, rgb)
        frames.append(image)
    return frames, Clip(seed=int(seed), n_frames=n_frames, tracks=tuple(tracks), background=bg)


def _fill_empty(rng, t, n_frames, tracks, rgbs, pairs):
    """Add a static small object present in frame ``t`` only (keeps every frame non-empty)."""
    used = {(tr.colour, tr.kind) for tr in tracks}
    free = [p for p in pairs if p not in used]
    colour, kind = free[int(rng.integers(len(free)))]
    side = SIZES["small"][0]
    x0 = int(rng.integers(_MARGIN, IMAGE_SIZE - _MARGIN - side + 1))
    y0 = int(rng.integers(_MARGIN, IMAGE_SIZE - _MARGIN - side + 1))
    boxes = [None] * n_frames
    boxes[t] = (x0, y0, x0 + side, y0 + side)  # frame t is empty: nothing to overlap
    jitter = rng.integers(-12, 13, size=3)
    rgb = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(COLOURS[colour], jitter))
    return tracks + [Track(kind, colour, "small", tuple(boxes))], rgbs + [rgb]
