"""DSTP (arXiv 2604.12358): decoding-stage shift-aware pruning, wrapped around a layer-site method.

Prefill: the base method picks the *active* set (``budget``/``ratio``) at its last layer site;
a *reserve* of further visual tokens is carried through the later layers so their keys/values
exist, but no text or active token attends to them, so prefill logits equal the base method's.
Decode: at each step the current token's query scores active ∪ reserve at the base's scoring
layer (K-1, or K for bases that score with their own layer); ``shift = 1 - mass(active) /
mass(best k)``; when shift > ``tau`` the active set becomes the current top k. Every decode step
attends to the active set plus all non-visual entries only.

The reserve (our reading; the paper's code is not public), ``reserve_by``:

* ``"coverage"`` (default): greedy farthest-point picks in hidden-state cosine distance from
  the active set, so the reserve holds what the base did *not* choose (other objects, other
  regions) and a decode step can swap towards them;
* ``"score"``: the next-best tokens by the base score (more of what the base already chose;
  for a base whose score is a selection, such as DART, that is the lowest positions).
"""
from __future__ import annotations

import dataclasses

import torch

from ..errors import OptionError
from ..sites import LayerSite, ReserveSite
from .base import Method
from .options import MethodOptions, method_options, opt
from .registry import get_method, register

RESERVE_BY = ("coverage", "score")
ops = torch.ops.vtp


def coverage_score(base, reserve):
    """The base score with the coverage reserve ranked right after the active set."""
    def score(x):
        s = base(x)
        vis = x["visual_mask"] & x["live"]
        k = torch.minimum(x["n_keep"], vis.sum(1))
        active = ops.topk_mask(s, vis, k)
        r = k if reserve is None else torch.full_like(k, reserve)
        return ops.reserve_cover(x["hidden"], vis, active, r)
    score.__name__ = f"dstp_coverage_{getattr(base, '__name__', 'score')}"
    return score


@method_options
class DSTPOptions(MethodOptions):
    base: str = opt("fastv", "the layer-site method whose selection is the active set")
    layer: int | None = opt(None, "the base's layer (None: the base's default)")
    reserve: int | None = opt(None, "reserve tokens carried besides the active ones; None: as many as active")
    tau: float = opt(0.2, "swap threshold on the attention shift, in [0, 1] (0: swap whenever the best k differ, 1: never)")
    reserve_by: str = opt("coverage", "how the reserve is chosen: 'coverage' or 'score'")
    base_options: dict | None = opt(None, "the base method's own options")

    def check(self):
        bases = DSTP.bases()
        if not isinstance(self.base, str) or self.base not in bases:
            raise OptionError(f"vtp: dstp option 'base' must be a layer-site method, one of "
                              f"{sorted(bases)}, got {self.base!r}")
        self.check_int("layer", lo=1, optional=True)
        self.check_int("reserve", lo=0, optional=True)
        self.check_number("tau", 0, 1)
        self.check_choice("reserve_by", RESERVE_BY)
        DSTP.base_config(None, self, None)        # the base's own options are checked by the base


@register
class DSTP(Method):
    """DSTP: a base layer-site method plus a reserve re-scored at every decode step."""
    name = "dstp"
    paper = "arXiv 2604.12358"
    options = DSTPOptions
    no_cuda_graphs = ("its decode steps read and replace runtime state kept in Python "
                      "(vtp_compile.shift_state), which a CUDA graph replay would skip")

    @staticmethod
    def bases() -> list[str]:
        from .registry import method_names
        out = []
        for name in method_names():
            m = get_method(name)
            if name == "dstp" or m.vision_internals:
                continue
            try:
                from ..config import PruneConfig
                sites = m.sites(PruneConfig.from_options({"method": name}), 32)
            except Exception:
                continue
            if sites and all(isinstance(s, LayerSite) and type(s) is LayerSite for s in sites):
                out.append(name)
        return out

    def base_config(self, params, keep):
        from ..config import PruneConfig
        opts = dict(params["base_options"] or {})
        if not isinstance(params["base_options"] or {}, dict):
            raise OptionError("vtp: dstp option 'base_options' must be a dict of the base "
                              "method's options")
        bad = {"method", "budget", "ratio"} & set(opts)
        if bad:
            raise OptionError(f"vtp: dstp 'base_options' may not set {sorted(bad)} (the dstp "
                              "config's budget/ratio is the active set's)")
        if params["layer"] is not None:
            opts["layer"] = params["layer"]
        cfg = PruneConfig.from_options({"method": params["base"], **opts})
        return cfg if keep is None else dataclasses.replace(cfg, keep=keep)

    def sites(self, cfg, num_layers):
        p = cfg.params
        base_cfg = self.base_config(p, cfg.keep)
        base_cfg = dataclasses.replace(base_cfg, inner_backend=cfg.inner_backend,
                                       inductor_config=cfg.inductor_config)
        sites = get_method(base_cfg.method).sites(base_cfg, num_layers)
        if not sites or any(type(s) is not LayerSite for s in sites):
            raise OptionError(f"vtp: dstp needs a base whose sites are all layer sites; "
                              f"{p['base']!r} is not one (valid: {sorted(self.bases())})")
        last = sites[-1]
        score = last.score if p["reserve_by"] == "score" else coverage_score(last.score, p["reserve"])
        fields = {f.name: getattr(last, f.name) for f in dataclasses.fields(LayerSite)}
        fields.update(score=score, name="dstp" if len(sites) == 1 else f"dstp-{last.name}",
                      method="dstp")
        return [*sites[:-1], ReserveSite(**fields, reserve=p["reserve"], tau=float(p["tau"]))]
