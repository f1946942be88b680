"""vLLM's LLaVA-NeXT (anyres) with the plugin: each image's packed features (base tile, unpadded
grid, one newline per grid row) are the ``V`` visual tokens, as on the transformers path."""
from __future__ import annotations

import pytest
import torch

from vtp_compile.serving.vllm import options
from vtp_compile.serving.vllm.selection import select_image

from .support import examples, greedy, request

pytestmark = pytest.mark.vllm
TOKENS = 5
SIZES = [(112, 56), (56, 112), (112, 112), (56, 56)]


def _image(i):
    ex = examples(4)[i]
    return ex, ex.image.resize(SIZES[i])


def test_unpruned_matches_transformers(engine_next, tiny_next):
    ex, img = _image(0)
    prompt = "<image> " + ex.question
    out = engine_next.generate([request(prompt, [img])], greedy(TOKENS))[0]
    assert list(out.outputs[0].token_ids) == tiny_next.reference(prompt, [tiny_next.features(img)], TOKENS)[1]


CASES = [{"method": "divprune", "budget": 12}, {"method": "random", "ratio": 0.25},
         {"method": "cdpruner", "budget": 10}, {"method": "acgr", "site": "encoder", "budget": 9, "merge": False}]


def test_support_table_is_what_is_tested():
    from vtp_compile.serving.vllm.support import CHECKED
    assert set(CHECKED["llava_next"]) == {o["method"] for o in CASES}


@pytest.mark.parametrize("i,opts", [(k % 2, o) for k, o in enumerate(CASES)],
                         ids=lambda x: x["method"] if isinstance(x, dict) else f"size{SIZES[x]}")
def test_kept_indices_and_tokens(engine_next, tiny_next, record, i, opts):
    import vtp_compile
    ex, img = _image(i)
    prompt = "<image> " + ex.question
    out = engine_next.generate([request(prompt, [img], opts)], greedy(TOKENS))[0]
    rec = record()
    feats = tiny_next.features(img)
    assert rec[0]["visual"] == feats.shape[0]
    ex_ = vtp_compile.explain(tiny_next.model, dict(tiny_next.hf_inputs(prompt, [img])), opts)
    kept = ex_.sites[0].kept_visual_index[0].tolist()
    assert rec[0]["kept"] == kept
    ids, ref = tiny_next.reference(prompt, [feats[torch.tensor(kept)]], TOKENS)
    assert list(out.prompt_token_ids) == ids
    assert list(out.outputs[0].token_ids) == ref


def test_batch_of_sizes_and_budgets(engine_next, tiny_next):
    cases = []
    for i in range(4):
        ex, img = _image(i)
        cases.append(("<image> " + ex.question, [img], None if i == 2 else {"method": "divprune", "budget": 6 + 4 * i}))
    outs = engine_next.generate([request(p, ims, o) for p, ims, o in cases], greedy(TOKENS))
    for (prompt, images, opts), out in zip(cases, outs):
        spec = options.parse(opts)
        kept = [tiny_next.features(im) if spec is None else select_image(spec, tiny_next.features(im))[1]
                for im in images]
        assert [list(out.prompt_token_ids), list(out.outputs[0].token_ids)] == list(map(list, tiny_next.reference(prompt, kept, TOKENS)))


def test_vision_internals_methods_are_refused(engine_next):
    ex, img = _image(0)
    with pytest.raises(ValueError, match="packs anyres"):
        engine_next.generate([request("<image> " + ex.question, [img], {"method": "visionzip", "budget": 8})],
                             greedy(2))
    with pytest.raises(ValueError, match="reads each token's video frame"):
        engine_next.generate([request("<image> " + ex.question, [img], {"method": "fastvid", "budget": 8})],
                             greedy(2))
