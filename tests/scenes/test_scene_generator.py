"""Scene generator: determinism, geometry and pixels consistent with the description."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from vtp_compile.scenes.generator import (COLOURS, GRID, IMAGE_SIZE, KINDS, SIZES,
                                          generate_scene, grid_index)


def test_same_seed_same_scene():
    a_img, a = generate_scene(123)
    b_img, b = generate_scene(123)
    assert a == b
    assert np.array_equal(np.asarray(a_img), np.asarray(b_img))


def test_different_seeds_differ():
    imgs = [np.asarray(generate_scene(s)[0]) for s in range(5)]
    assert all(not np.array_equal(imgs[0], other) for other in imgs[1:])


@settings(max_examples=40)
@given(seed=st.integers(0, 2**31 - 1))
def test_scene_geometry_and_pixels(seed):
    image, scene = generate_scene(seed)
    assert image.size == (IMAGE_SIZE, IMAGE_SIZE) and image.mode == "RGB"
    assert 1 <= len(scene.shapes) <= 8
    pix = np.asarray(image).astype(int)
    boxes = [s.bbox for s in scene.shapes]
    for s in scene.shapes:
        x0, y0, x1, y1 = s.bbox
        assert 0 <= x0 < x1 <= IMAGE_SIZE and 0 <= y0 < y1 <= IMAGE_SIZE
        assert s.kind in KINDS and s.colour in COLOURS and s.size in SIZES
        lo, hi = SIZES[s.size]
        assert lo <= x1 - x0 <= hi and x1 - x0 == y1 - y0
        # the centre pixel carries the shape's colour (up to the per-shape jitter)
        cx, cy = (int(v) for v in s.centre)
        assert np.abs(pix[cy, cx] - np.array(COLOURS[s.colour])).max() <= 12
        assert s.cell == (grid_index(s.centre[1]), grid_index(s.centre[0]))
        assert all(1 <= v <= GRID for v in s.cell)
    for i, a in enumerate(boxes):  # no overlaps
        for b in boxes[i + 1:]:
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]


def test_background_is_textured_not_flat():
    image, scene = generate_scene(7, n_shapes=1)
    pix = np.asarray(image).astype(float)
    x0, y0, x1, y1 = scene.shapes[0].bbox
    mask = np.ones(pix.shape[:2], bool)
    mask[y0:y1, x0:x1] = False
    assert pix[mask].std() > 3.0  # noise / stripes present
    assert set(scene.background) >= {"stripe_angle", "stripe_period", "blobs"}


def test_shape_count_range_and_validation():
    for seed in range(10):
        assert len(generate_scene(seed, n_shapes=(2, 4))[1].shapes) in (2, 3, 4)
        assert len(generate_scene(seed, n_shapes=3)[1].shapes) == 3
    with pytest.raises(ValueError):
        generate_scene(0, n_shapes=(0, 9))


def test_grid_index_bands():
    assert grid_index(0) == 1 and grid_index(IMAGE_SIZE - 1e-6) == GRID
    assert grid_index(IMAGE_SIZE / GRID - 0.01) == 1 and grid_index(IMAGE_SIZE / GRID) == 2


def test_label_map_marks_each_shape():
    from vtp_compile.scenes.generator import label_map
    from vtp_compile.scenes.targets import N_PATCH_CLASSES, patch_labels
    from vtp_compile.scenes.tasks import make_dataset
    image, scene = generate_scene(11, n_shapes=5)
    lm = label_map(scene)
    assert lm.shape == (IMAGE_SIZE, IMAGE_SIZE)
    for i, s in enumerate(scene.shapes):
        cx, cy = (int(v) for v in s.centre)
        assert lm[cy, cx] == i + 1
    assert (lm == 0).mean() > 0.3  # mostly background
    labels = patch_labels(make_dataset("counting", 3, seed=0))
    assert labels.shape == (3, 196) and 0 <= labels.min() and labels.max() < N_PATCH_CLASSES


def test_patch_targets_describe_each_shape():
    import torch
    from vtp_compile.scenes.targets import (AUX_TARGETS, patch_shape_index, patch_labels,
                                            patch_targets)
    from vtp_compile.scenes.tasks import make_dataset
    exs = make_dataset("ordered", 4, seed=0)
    t = patch_targets(exs)
    assert set(t) == set(AUX_TARGETS)
    assert (t["class"] == patch_labels(exs)).all()
    for i, ex in enumerate(exs):
        shapes = ex.scene.shapes
        order = sorted(shapes, key=lambda s: s.centre[0])
        bg = t["class"][i] == 0
        for name in AUX_TARGETS:
            if name != "class":
                assert (t[name][i][bg] == -100).all()
            assert t[name][i].max() < AUX_TARGETS[name]
        idx = patch_shape_index(ex.scene)
        for k, s in enumerate(shapes):  # every patch on a shape carries that shape's facts
            on = torch.from_numpy(idx == k + 1)
            assert on.any()
            assert (t["kind"][i][on] == KINDS.index(s.kind)).all()
            assert (t["cell_row"][i][on] == s.cell[0] - 1).all()
            assert (t["cell_col"][i][on] == s.cell[1] - 1).all()
            assert (t["x_rank"][i][on] == order.index(s)).all()
            n_colour = sum(o.colour == s.colour for o in shapes)
            n_kind = sum(o.kind == s.kind for o in shapes)
            assert (t["same_colour"][i][on] == n_colour - 1).all()
            assert (t["same_kind"][i][on] == n_kind - 1).all()


def test_sincos_position_init():
    import torch
    from vtp_compile.scenes.model import build_model, build_processor
    from vtp_compile.scenes.train import init_sincos_positions
    model = build_model(build_processor().tokenizer)
    init_sincos_positions(model)
    emb = model.model.vision_tower.embeddings.position_embedding.weight.detach()[1:]
    assert emb.shape == (196, 128)
    # patches in the same row share the row half of the table, and differ in the column half
    row, col = slice(0, 64), slice(64, 128)
    assert torch.allclose(emb[0, row], emb[13, row])
    assert not torch.allclose(emb[0, col], emb[13, col])
    assert torch.allclose(emb[0, col], emb[14, col])
    assert not torch.allclose(emb[0, row], emb[14, row])
