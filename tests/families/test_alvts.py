"""ALVTS beyond LLaVA: per-layer routing on the families of ``support.EXTRA["alvts"]`` against the
mask oracle's routing (vtp_compile/testing/oracle_mask.py, ``method="alvts"``), which is itself
checked against LLaVA's hand-run routing oracle (testing/oracle_alvts.py) first."""
import re

import pytest
import torch

from vtp_compile.methods import alvts
from tests.helpers import REPORTS
from vtp_compile.testing import families as F
from vtp_compile.testing import oracle_alvts, support
from vtp_compile.testing.oracle import OracleSpec
from vtp_compile.testing.oracle_mask import Pruning, decoder_layers, masked_forward, masked_generate
from vtp_compile.testing.tiny import TinySpec, make_inputs, tiny_llava

from ..helpers import assert_tokens_match, record_case

ROWS = [F.RowSpec(3, 4, (F.ImageSpec(),)), F.RowSpec(5, 2, (F.ImageSpec(), F.ImageSpec())),
        F.RowSpec(4, 3, ())]                      # one image, two images, a text-only row
# generate and the refusals run in test_families.py::test_methods_on_every_family (one trace per
# family for every method, on weights drawn as here); the direct forward here
CASES = [(f, "forward") for f, paths in support.EXTRA["alvts"].items() if "forward" in paths]


def _setup(family, seed=4):
    model = F.build_model(family)
    draw_selector_weights(model, seed)
    inputs = F.make_inputs(family, model, ROWS, padding_side="left", seed=seed)
    return model, inputs, F.visual_positions(family, model, inputs)


@torch.no_grad()
def draw_selector_weights(model, seed):
    """The tiny models initialise q/k biases to 0 and norm weights to 1; draw them, so the q bias
    term and the norm-weight folding of the selector are exercised."""
    g = torch.Generator().manual_seed(seed)
    for layer in decoder_layers(model):
        w = layer.input_layernorm.weight
        w.copy_(1 + 0.5 * torch.randn(w.shape, generator=g))
        att = getattr(layer, "self_attn", None)      # none: a linear-attention layer
        for lin in (att.q_proj, att.k_proj) if att is not None else ():
            if lin.bias is not None:
                lin.bias.copy_(0.3 * torch.randn(lin.bias.shape, generator=g))


def _opts(rank=3):
    return {"method": "alvts", "inner_backend": "eager", "budget": 3, "layer": 1, "rank": rank}


def test_mask_oracle_routes_as_the_llava_oracle():
    """The mask oracle's ALVTS (hooks on the model's own forward) equals the LLaVA routing
    oracle (layers run by hand on the routed subsequences): logits, routes, greedy tokens."""
    spec = TinySpec(layers=4, heads=4, kv_heads=2, hidden=64, seed=2)
    model = tiny_llava(spec)
    inputs = make_inputs(spec, batch=3, pad=(0, 2, 1), prefix=2, suffix=3, seed=5)
    ids, mask, pix = inputs["input_ids"], inputs["attention_mask"], inputs["pixel_values"]
    vis = ids == spec.image_token_id
    pos = [torch.nonzero(vis[b]).flatten().tolist() for b in range(3)]
    for layer, rank in ((1, 3), (0, 2)):
        want, routes = oracle_alvts.alvts_forward(model, ids, mask, pix, OracleSpec("alvts", layer=layer, budget=5), rank)
        got, kept = masked_forward(model, inputs, vis, Pruning("alvts", budget=5, layer=layer, rank=rank))
        torch.testing.assert_close(got[mask.bool()], want[mask.bool()], atol=1e-5, rtol=1e-5)
        assert sorted(kept) == sorted(routes) == list(range(layer, spec.layers))
        assert all(kept[i] == [[pos[b][j] for j in routes[i][b]] for b in range(3)] for i in routes)
        toks, margins, _ = oracle_alvts.alvts_generate(model, ids, mask, pix, OracleSpec("alvts", layer=layer, budget=5),
                                                       rank, 3)
        got_toks, _, _ = masked_generate(model, inputs, vis, Pruning("alvts", budget=5, layer=layer, rank=rank), 3)
        assert_tokens_match(got_toks, toks, margins)
    with torch.no_grad():
        assert not torch.allclose(model(**inputs).logits[mask.bool()], got[mask.bool()], atol=1e-3)


@pytest.mark.parametrize("family,path", CASES)
def test_alvts_equals_the_routing_oracle(family, path):
    """Ragged rows (one image, two images, text only), left-padded; rank 3, routed from layer 1:
    every real position's logits."""
    model, inputs, visual = _setup(family)
    start = len(REPORTS)
    with torch.no_grad():
        model(**inputs)
        want, _ = masked_forward(model, inputs, visual, Pruning("alvts", budget=3, layer=1, rank=3))
        got = torch.compile(model, backend="vtp", options=_opts())(**inputs).logits
        real = inputs["attention_mask"].bool()
        torch.testing.assert_close(got[real], want[real], atol=1e-4, rtol=1e-4)
    reps = [r for r in REPORTS[start:] if r.phase == "prefill" and r.sites]
    n = model.config.get_text_config().num_hidden_layers
    assert reps and [s.layer for s in reps[0].sites] == list(range(1, n)), "not routed"
    record_case(f"family/alvts-{path}")


def _hidden_entering(model, inputs, i):
    with torch.no_grad():
        return model(**inputs, output_hidden_states=True).hidden_states[i]


def test_the_q_bias_term_changes_the_selection():
    """Qwen2.5-VL: without the q bias's key-linear term the selector would route other tokens
    (so the family test above checks the term)."""
    model, inputs, visual = _setup("qwen2_5_vl")
    cfg = model.config.get_text_config()
    layer, hs = decoder_layers(model)[1], _hidden_entering(model, inputs, 1)
    factors, scale = oracle_alvts.lowrank(layer, cfg.num_attention_heads, cfg.num_key_value_heads, 3)
    bias = oracle_alvts.bias_terms(layer, cfg.num_attention_heads, cfg.num_key_value_heads)
    last = inputs["input_ids"].shape[1] - 1
    pos = torch.nonzero(visual[0]).flatten().tolist()
    tops = [oracle_alvts._top(oracle_alvts.selector(hs[0], pos, factors, scale, last, c), 3) for c in (bias, None)]
    assert tops[0] != tops[1]


def test_auto_rank_compares_with_the_full_selector_including_the_q_bias():
    """``choose_rank`` with the q bias factor: the smallest rank whose top-k (with the untruncated
    bias term) agrees with the full selector's on >= 90%, by the oracle's own selector."""
    model, inputs, visual = _setup("qwen2_5_vl")
    cfg = model.config.get_text_config()
    H, KV = cfg.num_attention_heads, cfg.num_key_value_heads
    layer, hs = decoder_layers(model)[1], _hidden_entering(model, inputs, 1)
    rows, k = [0, 1], 3                                   # the rows with images
    att = layer.self_attn
    A, B, S = alvts.bilinear_factors(att.q_proj.weight, att.k_proj.weight, layer.input_layernorm.weight, H, KV)
    scale = 16 ** -0.5
    C = alvts.bias_factor(att.k_proj.weight, layer.input_layernorm.weight, att.q_proj.bias, H, KV, scale)
    qpos = torch.full((2,), hs.shape[1] - 1)
    r = alvts.choose_rank(A, B, S, scale, [(hs[rows], visual[rows], qpos, k)], cap=16, consistency=0.9, C=C)
    bias = oracle_alvts.bias_terms(layer, H, KV)

    def overlap(rank, with_bias=True):
        fr, _ = oracle_alvts.lowrank(layer, H, KV, rank)
        ff, _ = oracle_alvts.lowrank(layer, H, KV, 16)
        n = 0
        for b in rows:
            pos = torch.nonzero(visual[b]).flatten().tolist()
            c = bias if with_bias else None
            a = oracle_alvts._top(oracle_alvts.selector(hs[b], pos, fr, scale, hs.shape[1] - 1, c), k)
            f = oracle_alvts._top(oracle_alvts.selector(hs[b], pos, ff, scale, hs.shape[1] - 1, bias), k)
            n += len(set(a) & set(f))
        return n / (len(rows) * k)

    assert overlap(r) >= 0.9 or r == 16
    assert r == 1 or overlap(r - 1) < 0.9


def test_auto_rank_equals_the_routing_oracle(caplog):
    """The default ``rank="auto"`` on Qwen2.5-VL's direct forward: the oracle routes with the
    ranks the compile chose (its log line per layer)."""
    model, inputs, visual = _setup("qwen2_5_vl")
    with torch.no_grad(), caplog.at_level("INFO", logger="vtp_compile"):
        model(**inputs)
        got = torch.compile(model, backend="vtp", options=_opts("auto"))(**inputs).logits
    ranks = {}
    for rec in caplog.records:
        m = re.search(r"vtp alvts: layer (\d+) selector \d+x\d+x(\d+) \+ q bias term", rec.getMessage())
        if m:
            ranks.setdefault(int(m.group(1)), int(m.group(2)))
    assert sorted(ranks) == [1, 2] and all(1 <= r <= 16 for r in ranks.values())
    want, _ = masked_forward(model, inputs, visual, Pruning("alvts", budget=3, layer=1, rank=tuple(ranks.items())))
    real = inputs["attention_mask"].bool()
    torch.testing.assert_close(got[real], want[real], atol=1e-4, rtol=1e-4)
    record_case("family/alvts-forward")
