"""One image: score its features with the method's own score function, keep, merge.

The transformers path hands an :class:`~vtp_compile.sites.EncoderSite`'s ``score`` and
``merge`` the spliced embedding of a batch row; here the row is built from one image: its ``V``
projected features (``visual_mask`` True), with the prompt's token embeddings before and after
it for the methods that read the prompt (CDPruner: the text after the image; DCP-Prune's encoder
site: the last prompt token). Selection is :func:`vtp_compile.kernels.select.keep_mask` (top
``n_keep`` by score, ties to the lower position), the same op the graph pass uses, so for the
same features and options the kept indices are the transformers path's.
"""
from __future__ import annotations

import torch

from ...kernels.select import keep_mask


def select_image(spec, feats: torch.Tensor, ctx=None, before: torch.Tensor | None = None,
                 after: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(kept [k] int64, out [k, D])``: the indices (ascending) of the kept tokens among the
    image's ``V`` and their features in position order (merged by the method's merge, if any).

    ``feats`` ``[V, D]``; ``ctx``: the site's vision internals (``EncoderSite.context``), one
    image; ``before``/``after`` ``[T, D]``: prompt token embeddings around the image.
    """
    site = spec.site
    V, D = feats.shape
    k = spec.n_keep(V)
    if k >= V and site.merge is None:
        return torch.arange(V, device=feats.device), feats
    parts = [t.to(feats.dtype) for t in (before, feats, after) if t is not None and t.numel()]
    hidden = torch.cat(parts, 0)[None] if len(parts) > 1 else feats[None]
    L = hidden.shape[1]
    start = before.shape[0] if before is not None else 0
    vis = torch.zeros(1, L, dtype=torch.bool, device=feats.device)
    vis[0, start:start + V] = True
    live = torch.ones_like(vis)
    x = {"hidden": hidden, "visual_mask": vis, "live": live,
         "qpos": torch.full((1,), L - 1, dtype=torch.long, device=feats.device),
         "n_keep": torch.full((1,), k, dtype=torch.long, device=feats.device)}
    if site.context:
        x["ctx"] = ctx
    scores = site.score(x)
    kept_mask = keep_mask(scores, vis, live, x["n_keep"]) & vis
    if site.merge is not None:
        hidden = site.merge({"hidden": hidden, "visual_mask": vis, "keep_mask": kept_mask,
                             "scores": scores, **({"ctx": ctx} if site.context else {})})
    pos = kept_mask[0].nonzero().flatten()
    return pos - start, hidden[0, pos].to(feats.dtype)
