"""Hypothesis strategies shared by the property tests: tiny model shapes, prompt batches
(lengths, images per row, padding side and amount drawn freely), budgets."""
from __future__ import annotations

from hypothesis import Phase, assume, strategies as st

from vtp_compile.testing.tiny import TinySpec

# compile-heavy tests report the first failing example instead of shrinking (each try compiles)
NO_SHRINK = [Phase.explicit, Phase.reuse, Phase.generate]


def not_the_simplest(data) -> None:
    """Reject hypothesis' simplest examples: call after the last draw, before compiling.

    hypothesis runs the all-minimal example first, then (while few examples are valid) novel
    prefixes followed by minimal draws. A compile-heavy test that runs one or two examples
    would see the smallest model, the smallest batch and the first option of every list in
    every run. This last draw is 0 in exactly those examples, so they are rejected before any
    compile and the examples that run are drawn at random -- a new one each run, replayed from
    hypothesis' database (or the ``@reproduce_failure`` line a failure prints) until it passes.
    """
    assume(data.draw(st.integers(0, 255), label="not the simplest example") != 0)


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
def prompt_batches(draw, max_batch=3, ragged=True, images=(1, 2), max_text=12, min_batch=1,
                   min_images=1, total_images=None):
    """``make_inputs`` keywords: ``min_batch``-``max_batch`` rows, each with its own text lengths
    (0-12 before, 1-12 after the images, so every prompt length occurs) and, when ``ragged``, its
    own number of images (0 = a text-only row; at least ``min_images`` images in the batch, at
    least one row with an image); padding on a drawn side plus 0-3 extra pads per row.

    ``total_images``: exactly that many images in the batch, spread over the rows (as many rows
    as that needs, at least ``min_batch``). Dynamo specializes a compiled LLaVA on its image count
    (transformers' ``get_image_features`` makes a list of the images) and on sizes 1: batches
    drawn with ``min_batch=2`` and one ``total_images`` of 2 or more are served by one dynamic
    graph."""
    if total_images is not None:
        rows_per_image = [n for n in images if total_images % n == 0 and total_images // n
                          >= min_batch] if not ragged else []
        if not ragged:   # every row holds the same number of images
            n_img = draw(st.sampled_from(rows_per_image))
            counts = [n_img] * (total_images // n_img)
        else:
            most = max(images)
            need = -(-total_images // most)
            batch = draw(st.integers(max(min_batch, need), max(max_batch, need)))
            counts = [0] * batch
            for _ in range(total_images):
                row = draw(st.sampled_from([r for r in range(batch) if counts[r] < most]))
                counts[row] += 1
    else:
        batch = draw(st.integers(min_batch, max_batch))
        uniform = draw(st.sampled_from(images))
        per_row = ragged and batch > 1 and draw(st.booleans())
        counts = [draw(st.sampled_from((0,) + tuple(images))) if per_row else uniform
                  for _ in range(batch)]
        if not any(counts):
            counts[0] = uniform
        if sum(counts) < min_images:
            counts[0] += min_images - sum(counts)
    rows = [(draw(st.integers(0, max_text)), draw(st.integers(1, max_text)), n) for n in counts]
    batch = len(rows)
    return dict(rows=rows, side=draw(st.sampled_from(["left", "right"])),
                pad=tuple(draw(st.lists(st.integers(0, 3), min_size=batch, max_size=batch))),
                seed=draw(st.integers(0, 99)), tiles=draw(st.sampled_from([None, 2, 3])))


def keeps(per_image: int):
    """``budget`` (incl. 1, V-1, V, more than V) or ``ratio`` options."""
    V = per_image
    return st.one_of(
        st.sampled_from([1, 2, V // 3 + 1, V - 1, V, V + 5, 2 * V]).map(lambda b: {"budget": max(1, b)}),
        st.sampled_from([0.05, 0.11, 0.25, 0.5, 1.0]).map(lambda r: {"ratio": r}))


@st.composite
def model_specs(draw, layers=(2, 4), image_sizes=(16, 24, 32), strategies=("default", "full"),
                vision_layers=(1, 3)):
    """A tiny LLaVA drawn as a user's config varies: head dim 8-32, 1-8 query heads with any
    grouped-query ratio that divides them (multi-query included), 2-4 decoder layers (odd and
    even; each layer costs Inductor compile time), either vision feature strategy (``full``: the CLS token is a visual token), 1-3
    vision layers (methods that read the tower's internals need 2: ``attach`` reads layer -2),
    the image grid (2x2 to 4x4 patches)."""
    kv = draw(st.sampled_from([1, 1, 2, 3, 4]))
    heads = kv * draw(st.sampled_from([1, 2, 3, 4]))
    head_dim = draw(st.sampled_from([8, 12, 16, 32]))
    hidden = heads * head_dim
    return TinySpec(hidden=hidden, heads=heads, kv_heads=kv, layers=draw(st.integers(*layers)),
                    intermediate=draw(st.sampled_from([hidden, 2 * hidden + 8])),
                    vision_layers=draw(st.integers(*vision_layers)),
                    image_size=draw(st.sampled_from(image_sizes)),
                    strategy=draw(st.sampled_from(strategies)),
                    seed=draw(st.integers(0, 10_000)))


def _layer(draw, spec, lo=1):
    return draw(st.integers(lo, spec.layers - 1))


@st.composite
def method_cases(draw, method, spec):
    """``(options, oracle Pruning)`` for ``method`` on ``spec``: a keep rule from :func:`keeps`
    and the method's own options drawn over their ranges. Options carry no ``inner_backend``."""
    from vtp_compile.testing.oracle_pruning import Pruning
    V = spec.visual_tokens
    keep = draw(keeps(V))
    if method == "chain":           # an encoder stage, then a layer stage with its own budget
        first = draw(st.sampled_from(["divprune", "random", "cdpruner"]))
        b1, b2 = draw(st.integers(1, V + 2)), draw(st.integers(1, V + 2))
        layer = _layer(draw, spec)
        opts = {"method": "chain", "stages": [{"method": first, "budget": b1},
                                              {"method": "fastv", "budget": b2, "layer": layer}]}
        return opts, Pruning("chain", chain=(Pruning(first, budget=b1),
                                             Pruning("fastv", budget=b2, layer=layer)))
    if method == "dstp":
        layer, tau = _layer(draw, spec), draw(st.sampled_from([0.0, 0.2, 1.0]))
        reserve = draw(st.sampled_from([None, 0, 2, V]))
        by = draw(st.sampled_from(["coverage", "score"]))
        opts = {"method": "dstp", **keep, "layer": layer, "tau": tau, "reserve_by": by,
                **({"reserve": reserve} if reserve is not None else {})}
        return opts, Pruning("fastv", **keep, layer=layer, dstp=(reserve, by, tau))
    params, extra = {}, {}
    if method in ("fastv", "dart", "nuwa"):
        params["layer"] = _layer(draw, spec)
    if method == "dart":
        params["pivots"] = draw(st.integers(1, 4))
    if method == "acgr":
        site = draw(st.sampled_from(["layer", "encoder"]))
        params.update(site=site, tau=draw(st.sampled_from([0.0, 0.3, 100.0])),
                      m=draw(st.integers(1, 4)), iters=draw(st.integers(0, 3)), merge=draw(st.booleans()))
        if site == "layer":
            params["layer"] = _layer(draw, spec)
    if method == "random":
        params["seed"] = draw(st.integers(0, 9))
    if method == "cdpruner":
        params["theta"] = draw(st.sampled_from([0.0, 0.5, 1.0]))
    if method == "visionzip":
        params["contextual"] = draw(st.sampled_from([0.0, 0.15625, 0.5]))
        params["score"] = draw(st.sampled_from(["cls", "received"]))
    if method == "sparsevlm":
        params["recycle"] = draw(st.booleans())
    if method == "pdrop" and spec.layers >= 3 and draw(st.booleans()):
        params["layers"] = sorted(draw(st.sets(st.integers(1, spec.layers - 1), min_size=1, max_size=2)))
        extra["layers"] = tuple(params["layers"])
    if method == "alvts":
        params.update(layer=_layer(draw, spec), rank=draw(st.integers(1, 4)))
    if method in ("vidcom2", "dycoke", "fastvid"):   # an image is a frame of its own (kernels/frames.py)
        params["min_per_frame"] = draw(st.integers(0, 2))
    if method == "fastvid":
        params.update(cuts=draw(st.integers(0, 2)), context=draw(st.sampled_from([0.0, 0.4, 1.0])),
                      anchor_every=draw(st.integers(1, 3)))
        extra["tau"] = 0.9
    if method == "vidcom2":
        params["per_frame"] = draw(st.sampled_from(["unique", "even", "off"]))
    return {"method": method, **keep, **params}, Pruning(method, **keep, **{**params, **extra})


def varied(strategy):
    """``strategy`` without hypothesis' simplest examples (see :func:`not_the_simplest`), for
    compile-heavy ``@given(...)`` tests that run one or two examples."""
    return st.tuples(strategy, st.integers(0, 255)).filter(lambda t: t[1] != 0).map(lambda t: t[0])
