"""vtp_compile.attach: vision internals reach the graph on both paths; eager is unchanged;
stale or missing internals are errors."""
import pytest
import torch

import vtp_compile
from vtp_compile import vision_context
from vtp_compile.testing import oracle_baselines, oracle_nuwa
from vtp_compile.testing.tiny import TinySpec, make_inputs, tiny_llava

from .helpers import compiled_logits, options, valid


def test_attach_is_idempotent_detachable_and_leaves_eager_alone():
    spec = TinySpec()
    model = tiny_llava(spec)
    inputs = make_inputs(spec, batch=2, pad=(0, 1))
    with torch.no_grad():
        ref = model(**inputs).logits
        assert vtp_compile.attach(vtp_compile.attach(model)) is model
        assert len(model._forward_pre_hooks) == 1
        torch.testing.assert_close(model(**inputs).logits, ref, atol=0, rtol=0)
        vtp_compile.detach(model)
        assert not model._forward_pre_hooks and not model.model.vision_tower._forward_hooks


def test_internals_match_the_towers_own_attentions():
    spec = TinySpec(vision_layers=3)
    model = tiny_llava(spec)
    inputs = make_inputs(spec)
    layers = model.model.vision_tower.encoder.layers
    with torch.no_grad():
        hidden = model.model.vision_tower(inputs["pixel_values"], output_hidden_states=True).hidden_states
        cls, upper, keys, received = vision_context.vision_internals(layers, hidden)
        other = vision_context.vision_internals(layers, hidden, 2)         # layer -1
    want_cls, want_upper = oracle_nuwa.internals(model, inputs["pixel_values"])
    torch.testing.assert_close(cls, want_cls, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(upper, want_upper, atol=1e-6, rtol=1e-5)
    want_rec, want_keys = oracle_baselines.visionzip_internals(model, inputs["pixel_values"], "received")
    torch.testing.assert_close(received.reshape(-1), want_rec, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(keys.reshape(-1, keys.shape[-1]), want_keys, atol=1e-6, rtol=1e-5)
    last_cls, last_keys = oracle_baselines.visionzip_internals(model, inputs["pixel_values"], "cls", -1)
    torch.testing.assert_close(other[0].reshape(-1), last_cls, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(other[2].reshape(-1, keys.shape[-1]), last_keys, atol=1e-6, rtol=1e-5)


def test_attached_other_methods_are_unchanged():
    """The carrier node is removed and what only it used is dropped: FastV is FastV."""
    spec = TinySpec()
    plain, attached = tiny_llava(spec), vtp_compile.attach(tiny_llava(spec))
    inputs = make_inputs(spec, batch=2, pad=(0, 2))
    a = compiled_logits(plain, inputs, options("fastv", budget=3, layer=1))
    torch._dynamo.reset()
    b = compiled_logits(attached, inputs, options("fastv", budget=3, layer=1))
    torch.testing.assert_close(a[valid(inputs)], b[valid(inputs)], atol=0, rtol=0)


def test_generate_records_and_the_lookup_checks_the_features(monkeypatch):
    spec = TinySpec()
    model = vtp_compile.attach(tiny_llava(spec))
    inputs = make_inputs(spec, batch=2)
    with torch.no_grad():
        model.generate(**inputs, max_new_tokens=1, do_sample=False)      # eager: records
    rec = vision_context.last_record()
    assert rec is not None and rec.cls_attn.shape == (2, spec.visual_tokens)
    ok = torch.ops.vtp.vision_lookup(rec.features, *rec.grid, rec.upper.shape[-1], rec.keys.shape[-1])
    torch.testing.assert_close(ok[1], rec.upper)
    with pytest.raises(ValueError, match="do not belong to the images of this call"):
        torch.ops.vtp.vision_lookup(rec.features + 1, *rec.grid, rec.upper.shape[-1], rec.keys.shape[-1])
    monkeypatch.setattr(vision_context._vision, "_RECORD", None)
    with pytest.raises(ValueError, match="do not belong"):
        torch.ops.vtp.vision_lookup(rec.features, *rec.grid, rec.upper.shape[-1], rec.keys.shape[-1])


def test_unsupported_models_are_clear_errors():
    model = tiny_llava(TinySpec())
    model.config.__dict__["vision_feature_select_strategy"] = "cls_only"    # past the config's validator
    with pytest.raises(ValueError, match="vision_feature_select_strategy='default'"):
        vtp_compile.attach(model)
    model.config.vision_feature_select_strategy = "full"
    model.config.vision_feature_layer = [-2, -1]
    with pytest.raises(ValueError, match="one int vision_feature_layer"):
        vtp_compile.attach(model)


def test_full_strategy_internals_keep_the_cls_column():
    """"full": the record lines up with the N+1 features per image, CLS first."""
    spec = TinySpec(strategy="full")
    model = vtp_compile.attach(tiny_llava(spec))
    inputs = make_inputs(spec, batch=2)
    with torch.no_grad():
        model.generate(**inputs, max_new_tokens=1, do_sample=False)
    rec = vision_context.last_record()
    assert rec.cls_attn.shape == (2, spec.visual_tokens) and rec.features.shape[0] == 2 * spec.visual_tokens
    want_cls, want_upper = oracle_nuwa.internals(model, inputs["pixel_values"], keep_cls=True)
    torch.testing.assert_close(rec.cls_attn, want_cls, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(rec.upper, want_upper, atol=1e-6, rtol=1e-5)
    out = torch.ops.vtp.vision_lookup(rec.features, *rec.grid, rec.upper.shape[-1], rec.keys.shape[-1], 1)
    torch.testing.assert_close(out[0], rec.cls_attn)
