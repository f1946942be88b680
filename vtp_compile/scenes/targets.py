"""What the scene model's training supervises besides the answers (training only, not saved).

Per-patch targets read from the scene description through each patch's centre pixel
(:func:`patch_targets`: content, and facts about the shape a patch belongs to), and the
selection head (:class:`SelectionHead`): the token before each answer must find, in decoder
hidden states, the patches of the shapes its question names (:func:`selected_shapes`).
"""

from __future__ import annotations

import numpy as np
import torch

from .generator import COLOURS, GRID, KINDS, label_map
from .model import PATCH_SIZE

N_PATCH_CLASSES = 1 + len(COLOURS) * len(KINDS)
MAX_SHAPES = 8
# auxiliary per-patch targets -> number of classes. "class" is every patch's content
# (background or one of the 12 (colour, kind) pairs); the others describe the *scene* from the
# point of view of the shape a patch belongs to (ignored on background patches).
AUX_TARGETS = {
    "class": N_PATCH_CLASSES,
    "kind": len(KINDS),  # the shape's kind, on shape patches only (content, full weight)
    "colour": len(COLOURS),  # the shape's colour (content, full weight; not in the "scene" preset)
    "cell_row": GRID,  # 3x3-grid row / column of the shape's centre (grounding)
    "cell_col": GRID,
    "x_rank": MAX_SHAPES,  # left-to-right rank of the shape's centre (ordered / relations)
    "same_colour": MAX_SHAPES,  # how many shapes share its colour, minus 1 (counting)
    "same_kind": MAX_SHAPES,  # how many shapes share its kind, minus 1 (counting)
}


CONTENT_TARGETS = ("class", "kind", "colour")  # full weight; the others get scene_aux_scale
_SCENE = ("class", "kind", "cell_row", "cell_col", "x_rank", "same_colour", "same_kind")
# --aux-targets presets -> the targets they supervise ("class" first: its head gives fg_acc)
AUX_PRESETS = {"scene": _SCENE, "class": ("class",), "scene+colour": _SCENE + ("colour",)}


def patch_shape_index(scene) -> np.ndarray:
    """``[196]`` index of the shape under each patch's centre pixel (0 = background)."""
    half = PATCH_SIZE // 2
    return label_map(scene)[half::PATCH_SIZE, half::PATCH_SIZE].reshape(-1)


def patch_labels(examples) -> torch.Tensor:
    """``[B, 196]`` class of each patch's centre pixel: 0 background, else 1 + (colour, kind).

    Target of the auxiliary training head (dense supervision that teaches the vision tower
    what each patch shows far faster than the few answer tokens alone).
    """
    return patch_targets(examples, ("class",))["class"]


def patch_targets(examples, names=tuple(AUX_TARGETS)) -> dict[str, torch.Tensor]:
    """Per-patch auxiliary targets ``{name: [B, 196] int64}`` (see :data:`AUX_TARGETS`).

    Every target is read from the scene description through the patch's centre pixel; all but
    ``"class"`` are ``-100`` (ignored) on background patches.
    """
    colours = list(COLOURS)
    out = {n: [] for n in names}
    for ex in examples:
        shapes = ex.scene.shapes
        idx = patch_shape_index(ex.scene)
        order = sorted(range(len(shapes)), key=lambda i: shapes[i].centre[0])
        rank = {i: r for r, i in enumerate(order)}
        per_shape = {
            "class": [1 + colours.index(s.colour) * len(KINDS) + KINDS.index(s.kind)
                      for s in shapes],
            "kind": [KINDS.index(s.kind) for s in shapes],
            "colour": [colours.index(s.colour) for s in shapes],
            "cell_row": [s.cell[0] - 1 for s in shapes],
            "cell_col": [s.cell[1] - 1 for s in shapes],
            "x_rank": [rank[i] for i in range(len(shapes))],
            "same_colour": [sum(o.colour == s.colour for o in shapes) - 1 for s in shapes],
            "same_kind": [sum(o.kind == s.kind for o in shapes) - 1 for s in shapes],
        }
        for n in names:
            table = np.array([0 if n == "class" else -100] + per_shape[n], dtype=np.int64)
            out[n].append(table[idx])
    return {n: torch.from_numpy(np.stack(rows)) for n, rows in out.items()}


def selected_shapes(scene, question: str) -> list[int]:
    """Indices of the shapes a question names by colour and/or kind (``how many red shapes ?``:
    every red shape; ``where is the red circle ?``: the red circle; ``what is left of the red
    circle ?``: the red circle, the anchor). Empty for questions that name neither (``list the
    colours ...``). Training-only target of the selection head (``select_weight``)."""
    words = question.split()
    colours = {w for w in words if w in COLOURS}
    kinds = {w[:-1] if w.endswith("s") and w[:-1] in KINDS else w for w in words}
    kinds &= set(KINDS)
    if not colours and not kinds:
        return []
    return [i for i, s in enumerate(scene.shapes)
            if (not colours or s.colour in colours) and (not kinds or s.kind in kinds)]


def selection_masks(scene_questions) -> list[np.ndarray | None]:
    """For ``[(scene, [question, ...]), ...]``, per question in that order: a ``[196]`` bool mask
    of the patches of :func:`selected_shapes`, or None where the question names no shape or
    none of the named shapes is present."""
    out = []
    for scene, questions in scene_questions:
        idx = patch_shape_index(scene)
        for question in questions:
            chosen = selected_shapes(scene, question)
            mask = np.isin(idx, [i + 1 for i in chosen]) if chosen else None
            out.append(mask if mask is not None and mask.any() else None)
    return out


class SelectionHead(torch.nn.Module):
    """Training-only bilinear scorer: from decoder hidden states, the last question token scores
    every visual token; trained (``select_weight``) to put its softmax mass on the patches of
    the shapes the question names. It shapes the hidden states so that question words and
    patch content meet in a low-rank space; no attention map is supervised directly."""

    def __init__(self, hidden: int, dim: int = 64):
        super().__init__()
        self.q = torch.nn.Linear(hidden, dim)
        self.k = torch.nn.Linear(hidden, dim)
        self.scale = dim ** -0.5

    def loss(self, hidden, spans, masks, n_image: int) -> torch.Tensor | None:
        """Mean ``-log`` softmax mass on the target patches over questions with a mask.

        ``hidden`` ``[B, L, D]``; ``spans`` from :func:`encode_batch` (the query is the token
        before each answer); visual tokens are positions ``1 .. n_image``."""
        picked = [(row, lo - 1, m) for (row, _, lo, _), m in zip(spans, masks) if m is not None]
        if not picked:
            return None
        h = torch.nn.functional.layer_norm(hidden.float(), hidden.shape[-1:])
        rows = torch.tensor([r for r, _, _ in picked])
        pos = torch.tensor([p for _, p, _ in picked])
        q = self.q(h[rows, pos])  # [S, d]
        k = self.k(h[rows, 1:1 + n_image])  # [S, N, d]
        scores = torch.einsum("sd,snd->sn", q, k) * self.scale
        target = torch.from_numpy(np.stack([m for _, _, m in picked]))
        hit = scores.masked_fill(~target, float("-inf")).logsumexp(-1)
        return (scores.logsumexp(-1) - hit).mean()
