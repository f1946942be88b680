"""Typed method options: one frozen dataclass per method, validated when built; the README's
options table is generated from them."""
import dataclasses
from pathlib import Path

import pytest

from vtp_compile import options_table
from vtp_compile.config import PruneConfig
from vtp_compile.errors import OptionError
from vtp_compile.methods.options import MethodOptions
from vtp_compile.methods.registry import get_method, method_names

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.mark.parametrize("name", method_names())
def test_every_method_has_typed_documented_options(name):
    cls = get_method(name).options
    assert issubclass(cls, MethodOptions) and dataclasses.is_dataclass(cls)
    built = cls()                                  # the defaults are valid
    assert dict(built) == cls.defaults() == dict(get_method(name).defaults)
    for opt, typ, _, doc in cls.table():
        assert typ and doc, f"{name}.{opt} has no type or meaning"
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(built, "x", 1)
    cfg = PruneConfig.from_options({"method": name})
    assert type(cfg.params) is cls


@pytest.mark.parametrize("options, message", [
    ({"method": "fastv", "layer": 0}, "'layer' must be an int >= 1"),
    ({"method": "dart", "pivots": 1.5}, "'pivots' must be an int >= 1"),
    ({"method": "cdpruner", "theta": 2}, r"'theta' must be a number in \[0, 1\]"),
    ({"method": "alvts", "consistency": 0}, r"'consistency' must be in \(0, 1\]"),
    ({"method": "acgr", "site": "middle"}, "'site' must be one of"),
    ({"method": "acgr", "merge": 1}, "'merge' must be True or False"),
    ({"method": "nuwa", "pillars": -0.1}, "'pillars' must be a number"),
    ({"method": "pdrop", "layers": [3, 2]}, "strictly increasing"),
    ({"method": "sparsevlm", "layers": [1, 2, 3, 4]}, "1-3"),
    ({"method": "visionzip", "score": "max"}, "'score' must be one of"),
    ({"method": "dstp", "base": "divprune"}, "'base' must be a layer-site method"),
    ({"method": "chain", "stages": [{"method": "fastv"}]}, "at least two stage"),
    ({"method": "fastv", "inductor": {}, "inductor_config": {}}, "not both"),
])
def test_a_bad_value_fails_when_the_options_are_built(options, message):
    with pytest.raises(OptionError, match=message):
        PruneConfig.from_options(options)


def test_options_read_as_attributes_and_as_a_mapping():
    p = PruneConfig.from_options({"method": "dstp", "tau": 0.5}).params
    assert p.tau == p["tau"] == 0.5 and p.get("base") == "fastv" and "reserve" in p


def test_inductor_config_and_its_alias():
    a = PruneConfig.from_options({"method": "fastv", "inductor_config": {"freezing": True}})
    b = PruneConfig.from_options({"method": "fastv", "inductor": {"freezing": True}})
    assert a.inductor_config == b.inductor_config == {"freezing": True}


def test_the_readme_options_table_is_generated_from_the_options():
    assert not options_table.update(README, check=True), \
        "README's options table is stale: python -m vtp_compile.options_table"
    text = README.read_text()
    for name in method_names():
        for opt in get_method(name).options.names():
            assert f"| `{name}` | `{opt}` |" in text
