"""ALVTS's options: defaults, validation, one RouteSite per layer from L0 on."""
import pytest

from vtp_compile.config import PruneConfig
from vtp_compile.methods.registry import get_method
from vtp_compile.sites import RouteSite


def test_defaults_route_every_layer_from_2():
    cfg = PruneConfig.from_options({"method": "alvts", "ratio": 0.11})
    sites = get_method("alvts").sites(cfg, 6)
    assert [s.layer for s in sites] == [2, 3, 4, 5] and all(isinstance(s, RouteSite) for s in sites)
    assert cfg.params == {"layer": 2, "rank": "auto", "rank_cap": 16, "consistency": 0.9}


@pytest.mark.parametrize("bad, match", [
    ({"rank": 0}, "'rank' must be an int >= 1"),
    ({"rank": "full"}, "'rank' must be an int >= 1"),
    ({"consistency": 0}, "'consistency' must be in"),
    ({"rank_cap": 0}, "'rank_cap' must be an int >= 1"),
])
def test_bad_options_are_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        PruneConfig.from_options({"method": "alvts", "budget": 16, **bad})


def test_layer_beyond_depth_names_the_range():
    cfg = PruneConfig.from_options({"method": "alvts", "budget": 16, "layer": 6})
    with pytest.raises(ValueError, match=r"\[0, 5\]"):
        get_method("alvts").sites(cfg, 6)
