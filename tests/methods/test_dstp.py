"""DSTP's options: defaults, validation, and the site it wraps around its base."""
import pytest

from vtp_compile.config import PruneConfig
from vtp_compile.methods.registry import get_method
from vtp_compile.sites import ReserveSite


def test_defaults_wrap_fastv_at_layer_2():
    cfg = PruneConfig.from_options({"method": "dstp", "budget": 64})
    (site,) = get_method("dstp").sites(cfg, 32)
    assert isinstance(site, ReserveSite)
    assert (site.layer, site.reserve, site.tau, site.keep.budget) == (2, None, 0.2, 64)


@pytest.mark.parametrize("bad, match", [
    ({"base": "random"}, "'base' must be one of"),
    ({"tau": 1.5}, "'tau' must be a number in"),
    ({"reserve": -1}, "'reserve' must be an int >= 0"),
    ({"layer": 0}, "'layer' must be an int >= 1"),
    ({"active": 3}, "valid options"),
])
def test_bad_options_are_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        PruneConfig.from_options({"method": "dstp", "budget": 16, **bad})
