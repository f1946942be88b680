"""--model_args of lmms-eval --model vtp: parsing, chains, validation before loading.

Needs no lmms-eval (runs in the main suite too)."""
import pytest

from vtp_compile import OptionError
from vtp_compile.integrations.lmms_eval.model_args import (
    check_depth, coerce, parse_model_args)

P = {"pretrained": "/ckpt"}


def test_method_and_options_become_vtp_options():
    a = parse_model_args({**P, "method": "fastv", "budget": 64, "layer": 3, "batch_size": 8})
    assert a.options == {"method": "fastv", "budget": 64, "layer": 3}
    assert a.settings["batch_size"] == 8 and a.settings["pretrained"] == "/ckpt"
    assert a.method_label == "fastv:layer=3" and a.budget == 64


def test_strings_are_coerced_like_lmms_eval_and_json():
    a = parse_model_args({**P, "method": "pdrop", "ratio": "0.25", "layers": "[1,2,3]"})
    assert a.options == {"method": "pdrop", "ratio": 0.25, "layers": [1, 2, 3]}
    assert coerce("true") is True and coerce("12") == 12 and coerce("x") == "x"
    with pytest.raises(ValueError, match="not valid JSON"):
        coerce("[1,")


def test_none_and_missing_method_are_the_unpruned_baseline():
    assert parse_model_args(P).options is None
    none = parse_model_args({**P, "method": "none", "inner_backend": "eager"})
    assert none.options is None and none.unpruned_backend == "eager"
    assert none.method_label == "none" and none.budget is None
    with pytest.raises(ValueError, match="takes no pruning options"):
        parse_model_args({**P, "method": "none", "budget": 16})


def test_chain_flat_syntax_equals_json_stages():
    flat = parse_model_args({**P, "method": "divprune+fastv", "stage1.budget": 128,
                             "stage2.budget": 32, "stage2.layer": 2})
    js = parse_model_args({**P, "method": "chain", "stages":
                           '[{"method":"divprune","budget":128},{"method":"fastv","budget":32,"layer":2}]'})
    assert flat.options == js.options == {"method": "chain", "stages": [
        {"method": "divprune", "budget": 128}, {"method": "fastv", "budget": 32, "layer": 2}]}
    named = parse_model_args({**P, "method": "chain", "stage1.method": "divprune",
                              "stage1.budget": 128, "stage2.method": "fastv", "stage2.budget": 32,
                              "stage2.layer": 2})
    assert named.options == flat.options


@pytest.mark.parametrize("args, match", [
    ({"method": "fastvv"}, "unknown method 'fastvv'; available: .*fastv"),
    ({"method": "fastv", "budget": 0}, "'budget' must be a positive int"),
    ({"method": "fastv", "budget": 8, "ratio": 0.5}, "not both"),
    ({"method": "fastv", "lyer": 2}, r"unknown option\(s\) \['lyer'\].*valid options"),
    ({"method": "fastv", "stage1.budget": 3}, "configure a chain"),
    ({"method": "chain", "stage1.method": "divprune", "stage3.method": "fastv"}, "missing \\[2\\]"),
    ({"method": "divprune+fastv", "stage2.layer": 0}, "chain stage 2"),
    ({"method": "fastv", "inner_backend": "nope"}, "unknown inner_backend 'nope'; valid"),
    ({"method": "fastv", "mode": "fast"}, "unknown mode 'fast'; valid"),
    ({"method": "dstp", "mode": "reduce-overhead"}, "cannot run under CUDA graphs"),
    ({"method": "fastv", "dtype": "fp8"}, "unknown dtype 'fp8'; valid"),
    ({"method": "fastv", "batch_size": 0}, "batch_size must be an int >= 1"),
    ({"method": "fastv", "foo.bar": 1}, "unknown model_args key 'foo.bar'; wrapper keys"),
    ({"method": "fastv", "prompt": "{image}"}, "must contain {question}"),
])
def test_bad_options_raise_value_error_naming_the_valid_ones(args, match):
    with pytest.raises(ValueError, match=match):
        parse_model_args({**P, **args})


def test_pretrained_is_required():
    with pytest.raises(ValueError, match="needs pretrained=PATH"):
        parse_model_args({"method": "fastv"})


def test_inductor_patches_flat_and_json():
    a = parse_model_args({**P, "method": "fastv", "inductor.max_autotune": "false",
                          "inductor": '{"freezing": true}'})
    assert a.options["inductor"] == {"freezing": True, "max_autotune": False}


def test_processor_keys_are_passed_to_the_processor():
    a = parse_model_args({**P, "method": "fastv", "processor.max_pixels": 1605632})
    assert a.processor_kwargs == {"max_pixels": 1605632} and "processor.max_pixels" not in a.options


def test_depth_is_checked_against_the_checkpoint_config():
    check_depth({"method": "fastv", "layer": 3}, 4)
    with pytest.raises(ValueError, match="layer 4 is out of range; this model has 4 decoder layers"):
        check_depth({"method": "fastv", "layer": 4}, 4)
    with pytest.raises(ValueError, match="out of range"):
        check_depth({"method": "chain", "stages": [{"method": "divprune", "budget": 8},
                                                   {"method": "fastv", "budget": 4, "layer": 9}]}, 4)
    check_depth(None, 4)


def test_importing_vtp_compile_imports_no_lmms_eval():
    import subprocess
    import sys
    code = ("import sys, vtp_compile, vtp_compile.integrations.lmms_eval, "
            "vtp_compile.integrations.lmms_eval.model_args, vtp_compile.integrations.lmms_eval.results, "
            "vtp_compile.integrations.lmms_eval.manifest, vtp_compile.cli.main; "
            "assert not [m for m in sys.modules if m.split('.')[0] == 'lmms_eval'], 'lmms_eval imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
