"""DCP-Prune's options: defaults, validation, and the sites they produce."""
import pytest

from vtp_compile.config import PruneConfig
from vtp_compile.sites import EncoderSite, LayerSite


def test_defaults_give_a_layer_site_with_merge():
    cfg = PruneConfig.from_options({"method": "acgr", "budget": 16})
    (site,) = _sites(cfg)
    assert isinstance(site, LayerSite) and site.layer == 2 and site.merge is not None
    assert cfg.params == {"site": "layer", "layer": 2, "tau": 0.3, "m": 3, "iters": 5, "merge": True}


def _sites(cfg):
    from vtp_compile.methods.registry import get_method
    return get_method(cfg.method).sites(cfg, 32)


def test_encoder_site_without_merge():
    cfg = PruneConfig.from_options({"method": "dcp", "ratio": 0.1, "site": "encoder", "merge": False})
    (site,) = _sites(cfg)
    assert isinstance(site, EncoderSite) and site.merge is None and cfg.method == "acgr"


@pytest.mark.parametrize("bad, match", [
    ({"site": "decoder"}, "'site' must be one of"),
    ({"tau": -1}, "'tau' must be a number >= 0"),
    ({"m": 0}, "'m' must be an int >= 1"),
    ({"iters": 1.5}, "'iters' must be an int >= 0"),
    ({"merge": "yes"}, "'merge' must be True or False"),
    ({"clusters": 4}, "valid options"),
])
def test_bad_options_are_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        PruneConfig.from_options({"method": "acgr", "budget": 16, **bad})
