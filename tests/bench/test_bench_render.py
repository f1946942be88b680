"""Kept-token rendering with synthetic indices."""
import numpy as np
import pytest
from PIL import Image

from vtp_compile.bench.render import kept_mask, render_kept, render_sites, save_png


def _white(size=112):
    return Image.new("RGB", (size, size), (200, 200, 200))


def test_render_shape_and_dimming():
    out = render_kept(_white(), (14, 14), [0, 15, 195], dim=0.25, outline=None)
    assert out.size == (112, 112) and out.mode == "RGB"
    pix = np.asarray(out)
    assert (pix[0:8, 0:8] == 200).all()          # token 0: top-left patch kept
    assert (pix[8:16, 8:16] == 200).all()        # token 15: row 1, col 1
    assert (pix[104:112, 104:112] == 200).all()  # token 195: bottom-right
    assert (pix[0:8, 8:16] == 50).all()          # token 1 dropped: dimmed
    assert (pix == 200).all(-1).sum() == 3 * 64


def test_render_non_square_image_grid():
    out = render_kept(Image.new("RGB", (90, 60), "white"), (2, 3), [5], outline=None)
    pix = np.asarray(out)
    assert out.size == (90, 60)
    assert (pix[30:, 60:] == 255).all() and (pix[:30, :] < 255).all()


def test_kept_mask_validates():
    assert kept_mask((2, 2), [3]).tolist() == [[False, False], [False, True]]
    with pytest.raises(ValueError, match="0..3"):
        kept_mask((2, 2), [4])


def test_render_sites_sheet(tmp_path):
    import torch
    kept = torch.tensor([[1, 2, 3], [4, 5, 6]])
    sheet = render_sites(_white(), (14, 14), [("fastv L2", kept[0].tolist()),
                                              ("pdrop L8", [7])], scale=2)
    assert sheet.width > 3 * 224 and sheet.height > 224
    path = save_png(sheet, tmp_path / "sub" / "kept.png")
    assert Image.open(path).format == "PNG"
