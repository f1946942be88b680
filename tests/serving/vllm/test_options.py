"""The ``vtp`` option dict: same keys and keep rule as the transformers path; clear refusals.
Needs no vLLM (runs in the main suite too)."""
from __future__ import annotations

import math

import pytest

from vtp_compile.config import KeepRule, PruneConfig
from vtp_compile.serving.vllm import options, tower


def test_off_without_the_entry():
    assert options.from_mm_kwargs(None) is None
    assert options.from_mm_kwargs({"num_crops": 4}) is None


@pytest.mark.parametrize("opts,V,k", [
    ({"method": "divprune", "budget": 64}, 576, 64),
    ({"method": "divprune", "budget": 700}, 576, 576),
    ({"method": "random", "ratio": 0.1}, 576, 58),      # ceil(57.6)
    ({"method": "random", "ratio": 1 / 9}, 576, 64),
    ({"method": "divprune"}, 196, 22),                  # the default ratio 1/9: ceil(21.8)
    ({"method": "cdpruner", "budget": 12, "theta": 0.7}, 196, 12),
    ({"method": "nuwa", "budget": 64}, 576, 112),        # stage 1: ceil(1.75 * 64) anchors
    ({"method": "acgr", "site": "encoder", "budget": 16}, 196, 16),
])
def test_keep_rule_is_vtps(opts, V, k):
    spec = options.parse(opts)
    assert spec.n_keep(V) == k
    cfg = PruneConfig.from_options(opts)
    if opts["method"] != "nuwa":
        assert k == min(cfg.keep.count(V), V)
    assert isinstance(spec.site.keep, KeepRule)


def test_ratio_is_integer_ceil():
    spec = options.parse({"method": "random", "ratio": 0.3})
    for V in range(1, 700):
        assert spec.n_keep(V) == min(V, math.ceil(V * 3 / 10))


@pytest.mark.parametrize("method", ["fastv", "pdrop", "sparsevlm", "alvts", "dstp", "dart", "chain"])
def test_layer_site_methods_are_refused_naming_what_works(method):
    with pytest.raises(ValueError) as e:
        options.parse({"method": method})
    msg = str(e.value)
    assert f"{method!r} cannot run in vLLM" in msg
    for ok in options.SERVED:
        assert ok in msg


def test_dycoke_stage_2_is_refused():
    assert options.parse({"method": "dycoke", "budget": 8}).site.name == "dycoke"
    with pytest.raises(ValueError, match="leave 'kv_keep' unset"):
        options.parse({"method": "dycoke", "budget": 8, "kv_keep": 0.2})


def test_acgr_at_a_layer_is_refused_with_the_encoder_hint():
    with pytest.raises(ValueError, match="site"):
        options.parse({"method": "acgr", "budget": 16})
    assert options.parse({"method": "dcp", "site": "encoder"}).method == "acgr"


@pytest.mark.parametrize("opts,match", [
    ({"method": "nope"}, "available"),
    ({"method": "divprune", "budget": 0}, "positive int"),
    ({"method": "divprune", "budget": 8, "ratio": 0.5}, "either"),
    ({"method": "divprune", "theta": 0.5}, "valid options"),
    ({"method": "divprune", "mode": "max-autotune"}, "torch.compile"),
    ({"method": "cdpruner", "theta": 2}, "theta"),
    ("{not json", "JSON"),
    (42, "dict"),
])
def test_bad_options_name_valid_ones(opts, match):
    with pytest.raises(ValueError, match=match):
        options.parse(opts)


@pytest.mark.parametrize("opts,match", [
    ({"method": "vidcom2", "per_frame": "most"}, r"one of \['off', 'even', 'unique'\]"),
    ({"method": "dycoke", "per_frame": "even"}, "min_per_frame"),
    ({"method": "fastvid", "min_per_frame": -2}, "min_per_frame"),
    ({"method": "fastvid", "context": 2}, "context"),
    ({"method": "divprune", "per_frame": "even"}, "per_frame"),
])
def test_bad_frame_options_are_clear(opts, match):
    with pytest.raises(ValueError, match=match):
        options.parse(opts)


@pytest.mark.parametrize("method", ["vidcom2", "dycoke", "fastvid"])
def test_video_methods_are_served_where_frames_are_known(method):
    spec = options.parse({"method": method, "budget": 16})
    assert spec.reads_frames and not spec.text and not spec.internals
    with pytest.raises(ValueError) as e:
        options.refuse_frames(spec, "LlavaForConditionalGeneration")
    msg = str(e.value)
    assert "Qwen2_5_VLForConditionalGeneration" in msg and "Qwen2VLForConditionalGeneration" in msg
    assert "divprune" in msg
    options.refuse_frames(options.parse({"method": "random", "per_frame": "even"}), "Llava")


def test_null_clears_an_engine_ratio():
    """vLLM merges a request's dict into the engine's: 'ratio': None drops the engine's ratio."""
    spec = options.parse({"method": "divprune", "ratio": None, "budget": 32})
    assert spec.n_keep(576) == 32


def test_json_round_trip():
    spec = options.parse({"method": "random", "budget": 5, "seed": 2})
    assert options.parse(spec.to_json()) == spec


def test_tower_check_refuses_unbuilt_layers():
    """vLLM builds a CLIP tower up to vision_feature_layer (-2: all but the last layer)."""
    vz, nuwa = options.parse({"method": "visionzip"}), options.parse({"method": "nuwa"})
    tower.check(vz, 23, 24)              # reads layer 22 (-2): built
    tower.check(nuwa, 24, 24)
    with pytest.raises(ValueError, match="upper half"):
        tower.check(nuwa, 23, 24)
    with pytest.raises(ValueError, match="does not build"):
        tower.check(options.parse({"method": "visionzip", "vision_layer": -1}), 23, 24)
