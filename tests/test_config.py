import pytest
import torch

from vtp_compile.config import KeepRule, PruneConfig
from vtp_compile.methods.registry import method_names


def test_defaults_for_every_method():
    for name in method_names():
        cfg = PruneConfig.from_options({"method": name})
        assert cfg.method == name
        assert cfg.keep.ratio is not None  # documented default: ratio 1/9


@pytest.mark.parametrize("opts,match", [
    ({"method": "nope"}, "available: .*fastv"),
    ({"method": "fastv", "bogus": 1}, "valid options: .*budget"),
    ({"budget": -3}, "positive int"),
    ({"budget": 0}, "positive int"),
    ({"budget": 2.5}, "positive int"),
    ({"budget": 4, "ratio": 0.5}, "not both"),
    ({"ratio": 0}, r"\(0, 1\]"),
    ({"ratio": 1.5}, r"\(0, 1\]"),
    ({"inner_backend": "nope"}, "inductor"),
    ({"mode": "fast"}, "reduce-overhead"),
    ({"mode": "max-autotune", "inner_backend": "eager"}, "needs inner_backend"),
    ({"layer": 0}, "layer"),
    ({"method": "random", "layer": 2}, "valid options"),
])
def test_bad_options_raise_value_error_naming_valid_ones(opts, match):
    with pytest.raises(ValueError, match=match):
        PruneConfig.from_options(opts)


def test_caller_dict_is_not_mutated():
    opts = {"method": "fastv", "budget": 8, "layer": 1, "inductor": {"max_autotune": False}}
    snapshot = {k: (dict(v) if isinstance(v, dict) else v) for k, v in opts.items()}
    PruneConfig.from_options(opts)
    assert opts == snapshot


def test_keep_rule_is_integer_ceil():
    from fractions import Fraction
    r = KeepRule(ratio=Fraction(11, 100))
    assert [r.count(n) for n in (1, 9, 10, 100, 576)] == [1, 1, 2, 11, 64]
    assert KeepRule(budget=64).count(10) == 64  # capped by the visual count at the site


def test_layer_beyond_depth_is_a_value_error():
    from vtp_compile.testing.tiny import TinySpec, make_inputs, tiny_llava
    spec = TinySpec(layers=3)
    model, inputs = tiny_llava(spec), make_inputs(spec)
    model(**inputs)
    fast = torch.compile(model, backend="vtp", options={"method": "fastv", "layer": 3, "inner_backend": "eager"})
    with pytest.raises(Exception) as info:
        fast(**inputs)
    err = info.value
    chain = [err] + [e for e in (err.__cause__, err.__context__) if e is not None]
    assert any(isinstance(e, ValueError) and "[1, 2]" in str(e) for e in chain), repr(err)
