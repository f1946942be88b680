"""Draw which visual tokens a pruning site kept, over the image the model saw.

Visual token ``i`` is patch ``(i // grid_w, i % grid_w)`` of the patch grid (raster order).
Dropped patches are dimmed; kept ones stay bright with a thin outline.

Example::

    >>> from PIL import Image
    >>> img = render_kept(Image.new("RGB", (112, 112), "white"), (14, 14), [0, 15, 195])
    >>> img.size
    (112, 112)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def _cell_edges(n: int, size: int) -> list[int]:
    return [round(i * size / n) for i in range(n + 1)]


def kept_mask(grid: tuple[int, int], kept) -> np.ndarray:
    """Boolean ``[grid_h, grid_w]`` mask of kept patches; indices must lie in ``0..h*w-1``."""
    gh, gw = grid
    idx = np.asarray([int(i) for i in kept], dtype=np.int64).reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() >= gh * gw):
        raise ValueError(f"kept indices must lie in 0..{gh * gw - 1} for a {gh}x{gw} grid, "
                         f"got range {idx.min()}..{idx.max()}")
    mask = np.zeros(gh * gw, dtype=bool)
    mask[idx] = True
    return mask.reshape(gh, gw)


def render_kept(image: Image.Image, grid: tuple[int, int], kept, dim: float = 0.25,
                outline: tuple[int, int, int] | None = (255, 64, 64)) -> Image.Image:
    """``image`` with dropped patches darkened to ``dim`` brightness; same size as ``image``."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    h, w = rgb.shape[:2]
    mask = kept_mask(grid, kept)
    ys, xs = _cell_edges(grid[0], h), _cell_edges(grid[1], w)
    pix = np.zeros((h, w), dtype=bool)
    for r in range(grid[0]):
        for c in range(grid[1]):
            if mask[r, c]:
                pix[ys[r]:ys[r + 1], xs[c]:xs[c + 1]] = True
    out = np.where(pix[..., None], rgb, rgb * dim)
    result = Image.fromarray(out.clip(0, 255).astype(np.uint8), "RGB")
    if outline is not None:
        draw = ImageDraw.Draw(result)
        for r, c in zip(*np.nonzero(mask)):
            draw.rectangle([xs[c], ys[r], xs[c + 1] - 1, ys[r + 1] - 1], outline=outline)
    return result


def render_sites(image: Image.Image, grid: tuple[int, int], panels: list[tuple[str, object]],
                 scale: int = 3) -> Image.Image:
    """A strip: the input, then one rendering per ``(title, kept_indices)`` panel, titled."""
    base = image.convert("RGB")
    size = (base.width * scale, base.height * scale)
    tiles = [("input", base.resize(size, Image.NEAREST))]
    tiles += [(title, render_kept(base.resize(size, Image.NEAREST), grid, kept))
              for title, kept in panels]
    title_h, pad = 16, 6
    sheet = Image.new("RGB", (len(tiles) * (size[0] + pad) + pad, size[1] + title_h + 2 * pad),
                      "white")
    draw = ImageDraw.Draw(sheet)
    for i, (title, tile) in enumerate(tiles):
        x = pad + i * (size[0] + pad)
        draw.text((x, pad // 2), title, fill="black")
        sheet.paste(tile, (x, title_h + pad))
    return sheet


def save_png(image: Image.Image, path: str | Path) -> Path:
    """Write ``image`` as PNG, creating parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")
    return path
