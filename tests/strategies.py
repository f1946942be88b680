"""Hypothesis strategies shared by the property tests: tiny model shapes, prompt batches
(lengths, images per row, padding side and amount drawn freely), budgets."""
from __future__ import annotations

from hypothesis import Phase, strategies as st

from vtp_compile.testing.tiny import TinySpec

# compile-heavy tests report the first failing example instead of shrinking (each try compiles)
NO_SHRINK = [Phase.explicit, Phase.reuse, Phase.generate]


@st.composite
def tiny_specs(draw, layers=(2, 4), image_sizes=(16, 24, 32), vision_layers=2):
    """A tiny LLaVA: GQA ratios 1-4, head dims 8/16, 2-4 layers, 4-16 visual tokens per image."""
    kv = draw(st.sampled_from([1, 2, 4]))
    heads = kv * draw(st.sampled_from([1, 2]))
    head_dim = draw(st.sampled_from([8, 16]))
    return TinySpec(hidden=heads * head_dim, heads=heads, kv_heads=kv,
                    layers=draw(st.integers(*layers)), vision_layers=vision_layers,
                    image_size=draw(st.sampled_from(image_sizes)), seed=draw(st.integers(0, 50)))


@st.composite
def prompt_batches(draw, max_batch=3, ragged=True, images=(1, 2), max_text=12):
    """``make_inputs`` keywords: 1-``max_batch`` rows, each with its own text lengths (0-12
    before, 1-12 after the images, so every prompt length occurs) and, when ``ragged``, its
    own number of images (0 = a text-only row; at least one row has an image); padding on a
    drawn side plus 0-3 extra pads per row."""
    batch = draw(st.integers(1, max_batch))
    uniform = draw(st.sampled_from(images))
    per_row = ragged and batch > 1 and draw(st.booleans())
    rows = []
    for _ in range(batch):
        n_img = draw(st.sampled_from((0,) + tuple(images))) if per_row else uniform
        rows.append((draw(st.integers(0, max_text)), draw(st.integers(1, max_text)), n_img))
    if not any(r[2] for r in rows):
        rows[0] = (rows[0][0], rows[0][1], uniform)
    return dict(rows=rows, side=draw(st.sampled_from(["left", "right"])),
                pad=tuple(draw(st.lists(st.integers(0, 3), min_size=batch, max_size=batch))),
                seed=draw(st.integers(0, 99)), tiles=draw(st.sampled_from([None, 2, 3])))


def keeps(per_image: int):
    """``budget`` (incl. 1, V-1, V, more than V) or ``ratio`` options."""
    V = per_image
    return st.one_of(
        st.sampled_from([1, 2, V // 3 + 1, V - 1, V, V + 5, 2 * V]).map(lambda b: {"budget": max(1, b)}),
        st.sampled_from([0.05, 0.11, 0.25, 0.5, 1.0]).map(lambda r: {"ratio": r}))
