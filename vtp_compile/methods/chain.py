"""Chains: several methods in one config, applied in order, each with its own budget.

``{"method": "chain", "stages": [{"method": "divprune", "budget": 128},
{"method": "fastv", "budget": 32, "layer": 2}]}``: every stage is a config of its own (method,
``budget`` or ``ratio``, the method's options; see that method) and acts on the visual tokens the
previous stages kept; a ``budget`` counts kept tokens, a ``ratio`` is a fraction of what reaches
the stage (a multi-stage method's own schedule still counts from the original visual count).
Stages must act in depth order: at most one encoder-site stage, first, then layer-site stages
whose layers increase. Methods that route (``alvts``) or carry a reserve to decode (``dstp``)
cannot be chained. ``{"method": "chain"}`` alone is DivPrune to a third, then FastV to a third
of that (1/9 overall).
"""
from __future__ import annotations

from ..errors import OptionError
from ..sites import EncoderSite, LayerSite, ReserveSite
from .base import Method
from .options import MethodOptions, method_options, opt
from .registry import get_method, register


@method_options
class ChainOptions(MethodOptions):
    stages: tuple = opt(({"method": "divprune", "ratio": 1 / 3}, {"method": "fastv", "ratio": 1 / 3}),
                        "stage configs in depth order (an encoder-site method, then layer-site ones), each with its own budget/ratio")

    def check(self):
        Chain.stage_configs(None, self)


@register
class Chain(Method):
    """Chain: an encoder-site method, then layer-site methods, each with its own budget."""
    name = "chain"
    paper = "(composition of the stages' papers)"
    # alone: DivPrune to a third at the encoder, then FastV to a third of that (1/9 overall, the
    # documented default ratio)
    options = ChainOptions
    takes_budget = False

    def stage_configs(self, params) -> list:
        from ..config import PruneConfig
        stages = params["stages"]
        if not isinstance(stages, (list, tuple)) or len(stages) < 2 or \
                not all(isinstance(s, dict) for s in stages):
            raise OptionError("vtp: chain option 'stages' must be a list of at least two stage "
                              "configs, e.g. [{\"method\": \"divprune\", \"budget\": 128}, "
                              "{\"method\": \"fastv\", \"budget\": 32}]")
        out = []
        for i, st in enumerate(stages):
            if st.get("method") in (None, "chain"):
                raise OptionError(f"vtp: chain stage {i + 1} must name its method (not 'chain')")
            bad = {"inner_backend", "inductor", "inductor_config", "mode"} & set(st)
            if bad:
                raise OptionError(f"vtp: chain stage {i + 1} may not set {sorted(bad)}; set them "
                                  "on the chain config")
            try:
                out.append(PruneConfig.from_options(st))
            except OptionError as e:
                raise OptionError(f"vtp: chain stage {i + 1}: {str(e).removeprefix('vtp: ')}") from None
        return out

    def needs_vision(self, cfg) -> bool:
        return any(get_method(c.method).needs_vision(c) for c in self.stage_configs(cfg.params))

    def sites(self, cfg, num_layers):
        out, last = [], -1
        for i, sc in enumerate(self.stage_configs(cfg.params)):
            sites = get_method(sc.method).sites(sc, num_layers)
            for s in sites:
                if isinstance(s, ReserveSite) or not isinstance(s, (EncoderSite, LayerSite)):
                    raise OptionError(f"vtp: chain stage {i + 1} ({sc.method!r}) cannot be chained: "
                                      "only encoder-site and layer-site methods can")
                where = s.layer if isinstance(s, LayerSite) else 0
                if where <= last:
                    raise OptionError(f"vtp: chain stage {i + 1} ({sc.method!r}) acts at "
                                      f"{'layer %d' % where if where else 'the encoder'}, not after "
                                      f"the previous stage (layer {last}); order the stages by depth")
                last = where
            out += sites
        return out
