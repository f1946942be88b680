"""vLLM's HF-format InternVL (``InternVLForConditionalGeneration``, run by vLLM's InternS1 class)
with the plugin: an image's ``V`` visual tokens are all its tiles' features (1, 3, 4 or 5 tiles
of 16 here), the cut run keeps ``<img>``/``</img>`` around it, positions are consecutive.
Greedy tokens equal transformers' with the kept features (no log-probabilities: vLLM compiles
their gather with Inductor, a minute of CPU)."""
from __future__ import annotations

import pytest
import torch

from vtp_compile.serving.vllm import options
from vtp_compile.serving.vllm.selection import select_image

from .internvl_support import IMAGE
from .support import examples, greedy, request

pytestmark = pytest.mark.vllm
TOKENS = 5
PER_TILE = 16
# (width, height) -> tiles: 2x2 + thumbnail, 2x1 + thumbnail, 1x2 + thumbnail, one, 3x1 + thumbnail
SIZES = {(112, 112): 5, (112, 56): 3, (56, 112): 3, (56, 56): 1, (168, 56): 4}
CASES = [({"method": "divprune", "budget": 12}, (112, 112)),
         ({"method": "random", "ratio": 0.25}, (112, 56)),
         ({"method": "cdpruner", "budget": 10}, (168, 56)),
         ({"method": "acgr", "site": "encoder", "budget": 9, "merge": False}, (56, 112))]


def _image(i, size):
    ex = examples(5)[i]
    return ex, ex.image.resize(size)


def _assert_same(out, ids, ref):
    assert list(out.prompt_token_ids) == ids
    assert list(out.outputs[0].token_ids) == ref


def test_support_table_is_what_is_tested():
    from vtp_compile.serving.vllm.support import CHECKED
    assert set(CHECKED["internvl"]) == {o["method"] for o, _ in CASES}


def test_unpruned_matches_transformers(engine_internvl, tiny_internvl):
    ex, img = _image(0, (112, 112))
    prompt = IMAGE + " " + ex.question
    out = engine_internvl.generate([request(prompt, [img])], greedy(TOKENS))[0]
    feats = tiny_internvl.features(img)
    assert feats.shape[0] == SIZES[(112, 112)] * PER_TILE
    ids, ref = tiny_internvl.reference(prompt, [feats], TOKENS)
    _assert_same(out, ids, ref)


@pytest.mark.parametrize("opts,size", CASES, ids=lambda x: x["method"] if isinstance(x, dict) else "x".join(map(str, x)))
def test_kept_indices_and_tokens(engine_internvl, tiny_internvl, record, opts, size):
    import vtp_compile
    ex, img = _image(1, size)
    prompt = IMAGE + " " + ex.question
    out = engine_internvl.generate([request(prompt, [img], opts)], greedy(TOKENS))[0]
    rec = record()
    feats = tiny_internvl.features(img)
    V = SIZES[size] * PER_TILE
    assert rec[0]["visual"] == feats.shape[0] == V
    ex_ = vtp_compile.explain(tiny_internvl.model, dict(tiny_internvl.hf_inputs(prompt, [img])), opts)
    kept = ex_.sites[0].kept_visual_index[0].tolist()
    assert rec[0]["kept"] == kept and len(kept) == options.parse(opts).n_keep(V)
    kept_feats = [feats[torch.tensor(kept)]]
    ids, ref = tiny_internvl.reference(prompt, kept_feats, TOKENS)
    tok = tiny_internvl.processor.tokenizer
    start, end = tok.convert_tokens_to_ids(["<img>", "</img>"])
    assert ids[1:len(kept) + 3] == [start] + [tiny_internvl.image_token] * len(kept) + [end]
    _assert_same(out, ids, ref)


def test_batch_of_tile_counts_and_budgets_and_keep_all(engine_internvl, tiny_internvl, record):
    """One batch: five sizes (1 to 5 tiles) at different budgets, one without vtp, one keep-all,
    and a prompt with two images of different tile counts (each pruned to its own budget)."""
    cases = []
    for i, size in enumerate(SIZES):
        ex, img = _image(i, size)
        opts = None if i == 2 else {"method": "divprune", "budget": 6 + 2 * i}
        cases.append((IMAGE + " " + ex.question, [img], opts))
    ex, img = _image(0, (112, 56))
    cases.append((IMAGE + " " + ex.question, [img], {"method": "divprune", "ratio": 1.0}))
    ex, img = _image(3, (56, 56))
    cases.append((f"{IMAGE} {IMAGE} " + ex.question, [img, _image(4, (168, 56))[1]],
                  {"method": "random", "budget": 8}))
    outs = engine_internvl.generate([request(p, ims, o) for p, ims, o in cases], greedy(TOKENS))
    assert len(record()) == 7      # every image with a vtp option (keep-all too); the plain one none
    for (prompt, images, opts), out in zip(cases, outs):
        spec = options.parse(opts)
        kept = [tiny_internvl.features(im) if spec is None else select_image(spec, tiny_internvl.features(im))[1]
                for im in images]
        _assert_same(out, *tiny_internvl.reference(prompt, kept, TOKENS))


def test_refused_methods(engine_internvl):
    ex, img = _image(0, (112, 56))
    prompt = IMAGE + " " + ex.question
    for method in ("visionzip", "nuwa"):
        with pytest.raises(ValueError, match="tile by tile.*methods that run here: random, divprune"):
            engine_internvl.generate([request(prompt, [img], {"method": method, "budget": 8})], greedy(2))
    with pytest.raises(ValueError, match="reads each token's video frame"):
        engine_internvl.generate([request(prompt, [img], {"method": "fastvid", "budget": 8})], greedy(2))


def test_videos_run_unpruned(engine_internvl, tiny_internvl, record):
    """vLLM's InternVL also takes videos (per frame ``Frame{i}: <img>`` + one tile's tokens +
    ``</img>``): the plugin leaves them unpruned, with or without a ``vtp`` option. An image
    beside a video is pruned, and a prompt-reading method's text around it leaves the video's
    slots out (its frame labels and markers are text, as on the transformers path)."""
    import numpy as np
    exs = examples(5)
    clip = np.stack([np.asarray(e.image) for e in exs[:4]])
    prompt = "<video> " + exs[0].question
    plain, pruned = engine_internvl.generate(
        [{"prompt": prompt, "multi_modal_data": {"video": clip}},
         {"prompt": prompt, "multi_modal_data": {"video": clip},
          "mm_processor_kwargs": {"vtp": {"method": "divprune", "budget": 8}}}], greedy(TOKENS))
    assert record() == []
    assert list(pruned.prompt_token_ids) == list(plain.prompt_token_ids)
    assert list(pruned.outputs[0].token_ids) == list(plain.outputs[0].token_ids)
    video = tiny_internvl.processor.tokenizer.convert_tokens_to_ids("<video>")
    assert list(plain.prompt_token_ids).count(video) == 4 * PER_TILE

    opts = {"method": "cdpruner", "budget": 10}
    img = exs[1].image.resize((112, 56))
    out = engine_internvl.generate([{"prompt": f"{IMAGE} <video> " + exs[0].question,
                                     "multi_modal_data": {"image": img, "video": clip},
                                     "mm_processor_kwargs": {"vtp": opts}}], greedy(2))[0]
    rec = record()
    ids = list(out.prompt_token_ids)
    assert ids.count(tiny_internvl.image_token) == 10 and ids.count(video) == 4 * PER_TILE
    first = ids.index(tiny_internvl.image_token)
    emb = tiny_internvl.model.get_input_embeddings()
    with torch.no_grad():
        before, after = (emb(torch.tensor([t for t in part if t != video])).float()
                         for part in (ids[:first], ids[first + 10:]))
    kept, _ = select_image(options.parse(opts), tiny_internvl.features(img), before=before, after=after)
    assert len(rec) == 1 and rec[0]["visual"] == 3 * PER_TILE and rec[0]["kept"] == kept.tolist()
