"""vLLM's LLaVA-OneVision (anyres, ``anyres_max_9``) with the plugin: each image's packed features
are the ``V`` visual tokens, as on the transformers path (positions: consecutive, as LLaVA's)."""
from __future__ import annotations

import pytest
import torch

from vtp_compile.serving.vllm import options
from vtp_compile.serving.vllm.selection import select_image

from .support import examples, greedy, request

pytestmark = pytest.mark.vllm
TOKENS = 5
SIZES = [(112, 112), (112, 56), (56, 112), (56, 56)]
CASES = [{"method": "divprune", "budget": 12}, {"method": "cdpruner", "budget": 10}]


def _image(i):
    ex = examples(4)[i]
    return ex, ex.image.resize(SIZES[i])


def test_support_table_is_what_is_tested():
    from vtp_compile.serving.vllm.support import CHECKED
    assert set(CHECKED["llava_onevision"]) == {o["method"] for o in CASES}


@pytest.mark.parametrize("i,opts", list(enumerate(CASES)), ids=lambda x: x["method"] if isinstance(x, dict) else f"size{SIZES[x]}")
def test_kept_indices_and_tokens(engine_ov, tiny_ov, record, i, opts):
    import vtp_compile
    ex, img = _image(i)
    prompt = "<image> " + ex.question
    out = engine_ov.generate([request(prompt, [img], opts)], greedy(TOKENS))[0]
    rec = record()
    feats = tiny_ov.features(img)
    assert rec[0]["visual"] == feats.shape[0]
    ex_ = vtp_compile.explain(tiny_ov.model, dict(tiny_ov.hf_inputs(prompt, [img])), opts)
    kept = ex_.sites[0].kept_visual_index[0].tolist()
    assert rec[0]["kept"] == kept
    ids, ref = tiny_ov.reference(prompt, [feats[torch.tensor(kept)]], TOKENS)
    assert list(out.prompt_token_ids) == ids
    assert list(out.outputs[0].token_ids) == ref


def test_batch_of_sizes_and_budgets_and_keep_all(engine_ov, tiny_ov):
    cases = []
    for i in range(4):
        ex, img = _image(i)
        cases.append(("<image> " + ex.question, [img], None if i == 2 else {"method": "divprune", "budget": 6 + 4 * i}))
    ex, img = _image(0)
    cases.append(("<image> " + ex.question, [img], {"method": "divprune", "ratio": 1.0}))
    outs = engine_ov.generate([request(p, ims, o) for p, ims, o in cases], greedy(TOKENS))
    for (prompt, images, opts), out in zip(cases, outs):
        spec = options.parse(opts)
        kept = [tiny_ov.features(im) if spec is None else select_image(spec, tiny_ov.features(im))[1]
                for im in images]
        ids, ref = tiny_ov.reference(prompt, kept, TOKENS)
        assert list(out.prompt_token_ids) == ids
        assert list(out.outputs[0].token_ids) == ref


def test_vision_internals_methods_are_refused(engine_ov):
    ex, img = _image(0)
    with pytest.raises(ValueError, match="packs anyres"):
        engine_ov.generate([request("<image> " + ex.question, [img], {"method": "visionzip", "budget": 8})],
                           greedy(2))
