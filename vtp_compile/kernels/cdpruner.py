"""``cdpruner_scores``: CDPruner's conditional DPP, greedy MAP by incremental Cholesky, per row."""
from __future__ import annotations

import torch

from .registry import decomposed, triton_kernel
from .divprune import visual_layout

EPS = 1e-6


def relevance_weights(vis: torch.Tensor, valid: torch.Tensor, text: torch.Tensor,
                      text_mask: torch.Tensor, theta: float) -> torch.Tensor:
    """``q [B, V]``: each visual token's relevance to the instruction, as the kernel weights.

    ``r_i`` = mean over the instruction tokens ``t`` of ``cos(v_i, e_t)``, min-max normalised over
    the row's visual tokens (``(r - min) / (max - min + 1e-6)``); then ``q = exp(alpha r)``,
    ``alpha = theta / (2 (1 - theta))`` (``theta = 1``: ``q = r``). ``theta = 0``: ``q = 1``
    (similarity alone). A row without instruction tokens has ``r = 0``."""
    v = torch.nn.functional.normalize(vis.float(), dim=-1)
    t = torch.nn.functional.normalize(text.float(), dim=-1)
    cos = (v @ t.transpose(1, 2)) * text_mask[:, None, :].float()              # [B, V, T]
    r = cos.sum(-1) / text_mask.sum(1, keepdim=True).clamp(min=1).float()
    lo = r.masked_fill(~valid, float("inf")).amin(1, keepdim=True)
    hi = r.masked_fill(~valid, float("-inf")).amax(1, keepdim=True)
    r = torch.where(valid, (r - lo) / (hi - lo + EPS), torch.zeros_like(r))
    if theta == 1.0:
        return r
    return torch.exp((theta / (2.0 * (1.0 - theta))) * r)


def dpp_greedy(kernel: torch.Tensor, valid: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Greedy MAP of a DPP with kernel ``[B, V, V]``, ``k [B]`` picks per row (fast greedy MAP,
    Chen et al. 2018): each step picks the largest marginal gain ``d_j^2 = det(L_{S+j}) /
    det(L_S)`` (ties: lower index), kept up to date by one Cholesky row per pick:
    ``e = (L_j - C^T c_j) / d_j``, ``d^2 -= e^2``. Returns ``[B, V]`` float32: the ``t``-th pick
    scores ``k[b] - t``, every other token -1. A gain at or below ``1e-12`` (the kernel's rank is
    spent) adds no Cholesky row: later picks follow the gains as they are.

    A Triton kernel on CUDA (:mod:`.triton.cdpruner`, with why); this reference on CPU."""
    B, V, _ = kernel.shape
    dev = kernel.device
    L = kernel.float()
    kmax = int(k.max()) if B and V else 0
    rows = torch.arange(B, device=dev)
    d2 = torch.diagonal(L, dim1=1, dim2=2).clone().masked_fill(~valid, float("-inf"))
    C = torch.zeros(B, max(kmax, 1), V, dtype=torch.float32, device=dev)
    out = torch.full((B, V), -1.0, dtype=torch.float32, device=dev)
    for t in range(kmax):
        act = t < k
        j = d2.argmax(-1)                                                        # [B]
        dj = d2[rows, j]
        ok = act & (dj > 1e-12)
        proj = (C[:, :t] * C[rows, :t, j][..., None]).sum(1) if t else torch.zeros_like(d2)
        e = (L[rows, j] - proj) / torch.sqrt(torch.where(ok, dj, torch.ones_like(dj)))[:, None]
        e = torch.where(ok[:, None], e, torch.zeros_like(e))
        C[:, t] = e
        d2 = d2 - e * e
        out[rows[act], j[act]] = (k[act] - t).float()
        d2[rows[act], j[act]] = float("-inf")
    return out


def dpp_kernel(hidden: torch.Tensor, visual_mask: torch.Tensor, live: torch.Tensor,
               vidx: torch.Tensor, valid: torch.Tensor, theta: float) -> torch.Tensor:
    """``[B, V, V]`` float32: the conditional DPP kernel ``diag(q) S diag(q)`` over the visual
    tokens at ``vidx`` ``[B, V]`` (``valid`` marks the real ones; padding reads position 0)."""
    B, L, D = hidden.shape
    dev = hidden.device
    V = vidx.shape[1]
    vis = torch.gather(hidden.float(), 1, vidx[..., None].expand(B, V, D))
    text = live & ~visual_mask
    pos = torch.arange(L, device=dev)
    first = torch.where(visual_mask, pos, torch.full_like(pos, L)).amin(1, keepdim=True)
    after = text & (pos > first)
    instr = torch.where(after.any(1, keepdim=True), after, text)
    q = relevance_weights(vis, valid, hidden, instr, theta)
    f = torch.nn.functional.normalize(vis, dim=-1)
    eye = torch.eye(V, dtype=torch.bool, device=dev)
    S = (f @ f.transpose(1, 2)).masked_fill(eye, 1.0)        # cos(v, v) = 1 exactly: equal gains tie
    return q[:, :, None] * S * q[:, None, :]


def _spread(out_v: torch.Tensor, vidx: torch.Tensor, valid: torch.Tensor, L: int) -> torch.Tensor:
    """``[B, L]``: the per-visual-token scores ``out_v`` at their positions, -1 elsewhere."""
    B = out_v.shape[0]
    out = torch.full((B, L + 1), -1.0, dtype=torch.float32, device=out_v.device)
    out = out.scatter(1, torch.where(valid, vidx, torch.full_like(vidx, L)), out_v)
    return out[:, :L].contiguous()


def cdpruner_scores(hidden: torch.Tensor, visual_mask: torch.Tensor, live: torch.Tensor,
                    n_keep: torch.Tensor, theta: float) -> torch.Tensor:
    """CDPruner on the spliced embedding ``hidden`` ``[B, L, D]``: the DPP kernel
    ``L = diag(q) S diag(q)`` over each row's visual tokens, ``S`` their cosine similarity and
    ``q`` their relevance (:func:`relevance_weights`) to the row's instruction: its live text
    tokens after its first visual token (all its live text tokens if none follows). Row ``b``
    picks ``min(n_keep[b], V_b)`` by :func:`dpp_greedy`; returns ``[B, L]`` float32 scores whose
    top ``n_keep[b]`` are the picks (pick order, then -1)."""
    vidx, valid = visual_layout(visual_mask)
    vidx = torch.where(valid, vidx, torch.zeros_like(vidx))
    kernel = dpp_kernel(hidden, visual_mask, live, vidx, valid, theta)
    k = torch.minimum(n_keep.to(hidden.device).long(), valid.sum(1))
    return _spread(dpp_greedy(kernel, valid, k), vidx, valid, hidden.shape[1])


def cdpruner_scores_decomposed(hidden: torch.Tensor, visual_mask: torch.Tensor, live: torch.Tensor,
                               n_keep: torch.Tensor, theta: float) -> torch.Tensor:
    """:func:`cdpruner_scores` as Inductor compiles it: the kernel matrix is plain tensor math
    (decomposed: gathers, one batched matmul, elementwise weights, which Inductor fuses), the
    greedy MAP stays the op ``vtp::dpp_greedy`` (a Triton kernel on CUDA). Every shape is static:
    each row's visual positions come first in a width-``L`` layout (a stable sort of "not
    visual") instead of the reference's compacted width (a host read)."""
    B, L, _ = hidden.shape
    dev = hidden.device
    order = torch.sort((~visual_mask).to(torch.uint8), dim=1, stable=True).indices   # [B, L]
    valid = torch.arange(L, device=dev)[None, :] < visual_mask.sum(1)[:, None]
    kernel = dpp_kernel(hidden, visual_mask, live, order, valid, theta)
    k = torch.minimum(n_keep.to(dev).long(), valid.sum(1))
    return _spread(torch.ops.vtp.dpp_greedy(kernel, valid, k), order, valid, L)


@torch.library.custom_op("vtp::dpp_greedy", mutates_args=())
def _dpp_greedy(kernel: torch.Tensor, valid: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    return dpp_greedy(kernel, valid, k)


@_dpp_greedy.register_fake
def _(kernel, valid, k):
    return kernel.new_empty(valid.shape, dtype=torch.float32)


@torch.library.custom_op("vtp::cdpruner_scores", mutates_args=())
def _cdpruner_scores(hidden: torch.Tensor, visual_mask: torch.Tensor, live: torch.Tensor,
                     n_keep: torch.Tensor, theta: float) -> torch.Tensor:
    return cdpruner_scores(hidden, visual_mask, live, n_keep, theta)


@_cdpruner_scores.register_fake
def _(hidden, visual_mask, live, n_keep, theta):
    return hidden.new_empty(visual_mask.shape, dtype=torch.float32)


# ---- how these ops lower (kernels/registry.py) ----------------------------------------
decomposed("cdpruner_scores", cdpruner_scores_decomposed)   # calls the Triton op dpp_greedy
triton_kernel("dpp_greedy", "CDPruner's greedy DPP MAP: one Cholesky row per pick, sequential per row")

@torch.library.register_kernel("vtp::dpp_greedy", "cuda")
def _dpp_greedy_cuda(kernel, valid, k):
    from .triton.cdpruner import dpp_greedy   # on the first CUDA call: importing vtp_compile never imports triton
    return dpp_greedy(kernel, valid, k)
