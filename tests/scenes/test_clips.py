"""Clip generator: determinism, motion, presence runs and pixels consistent with the description."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from vtp_compile.scenes.clips import MAX_FRAMES, generate_clip
from vtp_compile.scenes.generator import COLOURS, IMAGE_SIZE, SIZES


def test_same_seed_same_clip_and_seeds_differ():
    fa, a = generate_clip(7)
    fb, b = generate_clip(7)
    assert a == b and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(fa, fb))
    fc, _ = generate_clip(8)
    assert not np.array_equal(np.asarray(fa[0]), np.asarray(fc[0]))


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n_frames=st.integers(2, MAX_FRAMES))
def test_clip_geometry_motion_and_pixels(seed, n_frames):
    frames, clip = generate_clip(seed, n_frames=n_frames)
    assert len(frames) == clip.n_frames == n_frames
    pairs = [(t.colour, t.kind) for t in clip.tracks]
    assert len(pairs) == len(set(pairs)), "objects are unique by (colour, kind)"
    for tr in clip.tracks:
        present = tr.frames
        assert present == list(range(present[0], present[-1] + 1)), "one contiguous run"
        lo, hi = SIZES[tr.size]
        steps = [np.subtract(tr.boxes[t + 1], tr.boxes[t]) for t in present[:-1]]
        assert all(np.array_equal(s, steps[0]) for s in steps), "constant velocity"
        for t in present:
            x0, y0, x1, y1 = tr.boxes[t]
            assert 0 <= x0 < x1 <= IMAGE_SIZE and 0 <= y0 < y1 <= IMAGE_SIZE
            assert lo <= x1 - x0 <= hi and x1 - x0 == y1 - y0
            cx, cy = (int(v) for v in tr.shape(t).centre)
            pix = np.asarray(frames[t]).astype(int)[cy, cx]
            assert np.abs(pix - np.array(COLOURS[tr.colour])).max() <= 12 + 12  # jitter + noise
    for t in range(n_frames):
        scene = clip.frame_scene(t)
        assert len(scene.shapes) >= 1, "no empty frame"
        boxes = [s.bbox for s in scene.shapes]
        for i, a in enumerate(boxes):
            for b in boxes[i + 1:]:
                assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]


def test_clips_have_motion_appearance_and_disappearance():
    clips = [generate_clip(s)[1] for s in range(60)]
    tracks = [t for c in clips for t in c.tracks]
    assert any(t.dx() != 0 for t in tracks)
    assert any(t.frames[0] > 0 for t in tracks) and any(t.frames[-1] < 3 for t in tracks)
    assert any(len(t.frames) == 4 and t.dx() == 0 for t in tracks)


def test_bad_arguments():
    with pytest.raises(ValueError, match="n_frames"):
        generate_clip(0, n_frames=MAX_FRAMES + 1)
    with pytest.raises(ValueError, match="n_objects"):
        generate_clip(0, n_objects=(0, 3))
