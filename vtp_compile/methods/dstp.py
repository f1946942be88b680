"""DSTP (arXiv 2604.12358): decoding-stage shift-aware pruning, wrapped around a layer-site method.

Prefill: the base method picks the *active* set (``budget``/``ratio``); the next ``reserve``
visual tokens by the base score are carried through the later layers so their keys/values
exist, but no text or active token attends to them, so prefill logits equal the base
method's. Decode: at each step the current token's query scores active ∪ reserve at layer K-1;
``shift = 1 - mass(active) / mass(best k)``; when shift > ``tau`` the active set becomes the
current top k. Every decode step attends to the active set plus all non-visual entries only.
"""
from __future__ import annotations

from ..sites import LayerSite, ReserveSite
from .base import Method, check_int
from .registry import get_method, register
from ..errors import OptionError

BASES = ("fastv",)   # layer-site methods the oracle and the tests cover as a base


@register
class DSTP(Method):
    """DSTP: a base layer-site method plus a reserve re-scored at every decode step."""
    name = "dstp"
    paper = "arXiv 2604.12358"
    defaults = {"base": "fastv", "layer": 2, "reserve": None, "tau": 0.2}
    no_cuda_graphs = ("its decode steps read and replace runtime state kept in Python "
                      "(vtp_compile.shift_state), which a CUDA graph replay would skip")

    def validate(self, params):
        if params["base"] not in BASES:
            raise OptionError(f"vtp: dstp option 'base' must be one of {BASES}, got {params['base']!r}")
        check_int(params, "layer", lo=1)
        if params["reserve"] is not None:
            check_int(params, "reserve", lo=0)
        tau = params["tau"]
        if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not 0 <= tau <= 1:
            raise OptionError(f"vtp: option 'tau' must be a number in [0, 1], got {tau!r}")

    def sites(self, cfg, num_layers):
        p = cfg.params
        base_cfg = type(cfg)(method=p["base"], keep=cfg.keep, params={"layer": p["layer"]},
                             inner_backend=cfg.inner_backend, inductor=cfg.inductor)
        (site,) = get_method(p["base"]).sites(base_cfg, num_layers)
        assert isinstance(site, LayerSite) and site.merge is None
        return [ReserveSite(layer=site.layer, keep=site.keep, score=site.score, name="dstp",
                            method="dstp", reserve=p["reserve"], tau=float(p["tau"]))]
