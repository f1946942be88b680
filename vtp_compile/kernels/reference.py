"""Readable PyTorch references for the token-selection ops.

These are the semantics every fast path (Triton on CUDA) is tested against, and the
implementation used on CPU.
"""
from __future__ import annotations

import math

import torch


def attn_row_scores(q: torch.Tensor, k: torch.Tensor, key_mask: torch.Tensor | None,
                    scale: float, query_index: int = -1) -> torch.Tensor:
    """Head-mean attention paid by one query row to every key.

    ``score[b, s] = mean_h softmax_s(scale * q[b, h, query_index] . k[b, h // rep, s] + bias[b, s])``

    q: ``[B, H, Lq, D]``; k: ``[B, Hkv, S, D]`` with ``H % Hkv == 0`` (GQA); key_mask: ``None``,
    a bool ``[B or 1, S]`` (True = may attend) or an additive float ``[B or 1, S]``.
    Returns float32 ``[B, S]``.
    """
    B, H, _, D = q.shape
    hkv = k.shape[1]
    qr = q[:, :, query_index, :].float()                       # [B, H, D]
    kk = k.float()
    if hkv != H:
        kk = kk.repeat_interleave(H // hkv, dim=1)
    logits = torch.einsum("bhd,bhsd->bhs", qr, kk) * scale     # [B, H, S]
    if key_mask is not None:
        km = key_mask.expand(B, logits.shape[-1])
        if km.dtype == torch.bool:
            logits = logits.masked_fill(~km[:, None, :], float("-inf"))
        else:
            logits = logits + km[:, None, :].float()
    return torch.softmax(logits, dim=-1).mean(dim=1)


def select_keep(scores: torch.Tensor, visual_mask: torch.Tensor, n_visual: int,
                n_keep: int) -> torch.Tensor:
    """Positions to keep, ascending: every non-visual position plus the ``n_keep`` visual
    positions with the highest score (ties: lower position first).

    scores: ``[B, L]``; visual_mask: bool ``[B, L]`` with exactly ``n_visual`` True per row.
    Returns int64 ``[B, L - n_visual + min(n_keep, n_visual)]``.
    """
    B, L = visual_mask.shape
    counts = visual_mask.sum(dim=1)
    if not bool((counts == n_visual).all()):
        raise ValueError(
            f"vtp: every prompt in a batch must hold the same number of visual tokens; "
            f"got {counts.tolist()} (expected {n_visual} each). Batch prompts with the same "
            f"number of images, or run them separately.")
    n_keep = min(n_keep, n_visual)
    width = L - n_visual + n_keep
    if n_keep == n_visual:
        return torch.arange(L, device=scores.device).expand(B, L).contiguous()
    # rank visual tokens by score (stable: equal scores keep position order), keep the best
    finite = torch.nan_to_num(scores.float(), nan=-3e38, neginf=-3e38).clamp(min=-3e38)
    key = torch.where(visual_mask, finite, torch.full_like(finite, float("-inf")))
    order = torch.sort(key, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(L, device=scores.device).expand(B, L))
    keep = (~visual_mask) | (rank < n_keep)
    idx = torch.nonzero(keep, as_tuple=False)[:, 1].view(B, width)
    return idx


def gather_seq(x: torch.Tensor, idx: torch.Tensor, dim: int, batch_dim: int = 0) -> torch.Tensor:
    """``x`` with dimension ``dim`` indexed per batch row by ``idx`` ``[B, L']``.

    ``x`` may broadcast over batch (size 1 at ``batch_dim``); the result has size B there.
    """
    dim = dim % x.dim()
    batch_dim = batch_dim % x.dim()
    B = idx.shape[0]
    if x.shape[batch_dim] != B:
        shape = list(x.shape)
        shape[batch_dim] = B
        x = x.expand(shape)
    # move batch to 0 and the sequence dim to 1, gather, move back
    perm = [batch_dim, dim] + [d for d in range(x.dim()) if d not in (batch_dim, dim)]
    xp = x.permute(perm)
    ix = idx.view(B, idx.shape[1], *([1] * (xp.dim() - 2))).expand(B, idx.shape[1], *xp.shape[2:])
    out = torch.gather(xp, 1, ix)
    inv = [perm.index(d) for d in range(x.dim())]
    return out.permute(inv).contiguous()


def scatter_seq(base: torch.Tensor, src: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``base`` ``[B, L, ...]`` with rows ``idx`` ``[B, L']`` along dim 1 replaced by ``src``."""
    B, Lp = idx.shape
    ix = idx.view(B, Lp, *([1] * (src.dim() - 2))).expand_as(src)
    return base.scatter(1, ix, src.to(base.dtype))


def divprune_scores(features: torch.Tensor, n_keep: int) -> torch.Tensor:
    """Greedy max-min diversity (distance 1 - cosine) per sample.

    The first pick is the token with the largest nearest-neighbour distance; each next pick
    maximises its distance to the nearest already-picked token. Returns ``[B, V]`` float32 where
    picked tokens score ``n_keep - pick_order`` (> 0) and the rest -1, so the top ``n_keep``
    scores are exactly the picks.
    """
    B, V, _ = features.shape
    n_keep = min(int(n_keep), V)
    f = torch.nn.functional.normalize(features.float(), dim=-1)
    dist = 1.0 - f @ f.transpose(1, 2)                         # [B, V, V]
    out = torch.full((B, V), -1.0, dtype=torch.float32, device=features.device)
    if n_keep <= 0:
        return out
    eye = torch.eye(V, dtype=torch.bool, device=features.device)
    nn_dist = dist.masked_fill(eye, float("inf")).amin(dim=-1)  # [B, V]
    if V == 1:
        nn_dist = torch.zeros_like(nn_dist)
    rows = torch.arange(B, device=features.device)
    pick = nn_dist.argmax(dim=-1)
    chosen = torch.zeros(B, V, dtype=torch.bool, device=features.device)
    mind = torch.full((B, V), float("inf"), device=features.device)
    for t in range(n_keep):
        chosen[rows, pick] = True
        out[rows, pick] = float(n_keep - t)
        mind = torch.minimum(mind, dist[rows, pick])
        pick = mind.masked_fill(chosen, float("-inf")).argmax(dim=-1)
    return out


def check_left_padded(mask: torch.Tensor, mask4d: torch.Tensor) -> torch.Tensor:
    """Validate a decode step's 2-D attention mask after a pruned prefill; returns ``mask4d``.

    Once prompt tokens were evicted from the cache, transformers builds the decode mask
    ``mask4d`` from the first ``key_len`` columns of the 2-D mask. That is exact for left padding (each row
    ``0…0 1…1``, the removed columns were all 1) and wrong otherwise, so any other row shape is
    an error, never a silent wrong answer.
    """
    if mask.shape[-1] > mask4d.shape[-1]:
        allowed = mask.bool() if mask.dtype != torch.bool else mask
        flat = allowed.reshape(-1, mask.shape[-1]).to(torch.int8)
        if bool((flat[:, 1:] < flat[:, :-1]).any()):
            raise ValueError(
                "vtp: decoding after a pruned prefill needs left padding (padding_side='left'); "
                "this attention mask has padding after real tokens")
    return mask4d.clone()


# ---- DCP-Prune (ACGR + TATCS) ------------------------------------------------------------------
def topk_mask(scores: torch.Tensor, valid: torch.Tensor, k: int) -> torch.Tensor:
    """Bool ``[B, N]``: the ``k`` valid entries of each row with the highest score (ties: lower
    index first). ``k`` larger than a row's valid count keeps all of them."""
    B, N = scores.shape
    key = torch.where(valid, scores.float(), torch.full_like(scores, float("-inf"), dtype=torch.float32))
    order = torch.sort(key, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(N, device=scores.device).expand(B, N))
    return valid & (rank < k)


def _masked_moments(x: torch.Tensor, m: torch.Tensor):
    w = m.to(x.dtype)[..., None]
    n = w.sum(1).clamp(min=1.0)
    mu = (x * w).sum(1) / n
    var = (((x - mu[:, None]) ** 2) * w).sum(1) / n
    return mu, var.sqrt()


def dist_consistency(features: torch.Tensor, valid: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """κ per row: how far the kept tokens' feature distribution is from all valid tokens'.

    ``κ = ||μ_f - μ_k|| / ||μ_f|| + | ||σ_f|| - ||σ_k|| | / ||σ_f||`` with per-channel mean μ and
    (population) standard deviation σ over the valid (``f``) and kept (``k``) rows of
    ``features`` ``[B, N, D]``. Returns float32 ``[B]``; lower means more consistent.
    """
    x = features.double()      # float32 leaves ~1e-7 of spurious spread on identical rows
    mu_f, sd_f = _masked_moments(x, valid)
    mu_k, sd_k = _masked_moments(x, kept & valid)
    eps = 1e-6
    first = (mu_f - mu_k).norm(dim=-1) / (mu_f.norm(dim=-1) + eps)
    second = (sd_f.norm(dim=-1) - sd_k.norm(dim=-1)).abs() / (sd_f.norm(dim=-1) + eps)
    return (first + second).float()


def cluster_select_scores(features: torch.Tensor, scores: torch.Tensor, valid: torch.Tensor,
                          k: int, iters: int) -> torch.Tensor:
    """TATCS: cluster the valid rows into ``k`` groups and favour each group's best-scored row.

    Spherical k-means on ``features`` ``[B, N, D]`` (cosine), initialised with the ``k`` best
    rows by ``scores`` (in score order), ``iters`` assignment/update rounds (an empty cluster
    keeps its centroid); then in each non-empty cluster the member with the highest score is
    picked. Returns float32 ``[B, N]``: ``2 + score`` for picks (scores are probabilities in
    [0, 1]), ``score`` for other valid rows, ``-inf`` for invalid ones, so the top ``k`` are the
    picks, topped up by score when clusters came out empty.
    """
    B, N, _ = features.shape
    s = scores.float()
    k = max(1, min(int(k), N))
    f = torch.nn.functional.normalize(features.float(), dim=-1)
    key = torch.where(valid, s, torch.full_like(s, float("-inf")))
    init = torch.sort(key, dim=1, descending=True, stable=True).indices[:, :k]      # [B, k]
    cent = torch.gather(f, 1, init[..., None].expand(B, k, f.shape[-1]))           # [B, k, D]
    vmask = valid[..., None].float()
    for it in range(iters + 1):
        assign = torch.einsum("bnd,bkd->bnk", f, cent).argmax(-1)                 # [B, N]
        onehot = torch.nn.functional.one_hot(assign, k).float() * vmask           # [B, N, k]
        if it == iters:
            break
        sums = torch.einsum("bnk,bnd->bkd", onehot, f)
        count = onehot.sum(1)[..., None]
        cent = torch.where(count > 0, torch.nn.functional.normalize(sums, dim=-1), cent)
    member = onehot.bool()                                                          # [B, N, k]
    best = torch.where(member, key[..., None], torch.full_like(onehot, float("-inf"))).argmax(1)
    nonempty = member.any(1)                                                        # [B, k]
    # several empty clusters may point at the same row: count picks, do not overwrite
    picked = (torch.zeros(B, N, device=features.device)
              .scatter_add(1, best, nonempty.float()) > 0)
    return torch.where(picked, key + 2.0, key)


def anchor_merge(hidden: torch.Tensor, visual_mask: torch.Tensor, keep_mask: torch.Tensor,
                 m: int) -> torch.Tensor:
    """ACGR: every removed visual row sends its features to its ``m`` most similar kept rows.

    For a context row ``c`` (visual, not kept), its top-``m`` anchors ``a`` (visual and kept) by
    cosine similarity (ties: lower position first) get weights ``w_ca = softmax_a(cos(x_c, x_a))``; each anchor becomes
    ``(x_a + Σ_c w_ca x_c) / (1 + Σ_c w_ca)``. Other rows are returned unchanged.
    ``hidden`` ``[B, L, D]``, masks bool ``[B, L]``.
    """
    B, L, D = hidden.shape
    x = hidden.float()
    f = torch.nn.functional.normalize(x, dim=-1)
    anchors = visual_mask & keep_mask
    contexts = visual_mask & ~keep_mask
    sim = f @ f.transpose(1, 2)                                        # [B, L(c), L(a)]
    sim = sim.masked_fill(~anchors[:, None, :], float("-inf"))
    m = max(1, min(int(m), L))
    vals, idx = torch.sort(sim, dim=-1, descending=True, stable=True)  # ties: lower index
    vals, idx = vals[..., :m], idx[..., :m]                             # [B, L, m]
    w = torch.softmax(vals, dim=-1).nan_to_num(0.0)                     # rows with no anchor: 0
    w = w * contexts[..., None].float()
    W = torch.zeros(B, L, L, device=hidden.device).scatter_add(2, idx, w)   # [B, c, a]
    num = x + W.transpose(1, 2) @ x
    den = 1.0 + W.sum(1)[..., None]
    return torch.where(anchors[..., None], num / den, x).to(hidden.dtype)


# ---- DSTP ---------------------------------------------------------------------------------------
def shift_columns(state, S: int, device) -> torch.Tensor:
    """``[B, S]`` bool: the cache columns a decode step may attend to (non-visual or active;
    every column after the prompt). ``state`` None: all of them."""
    if state is None:
        return torch.ones(1, S, dtype=torch.bool, device=device)
    B, P = state.visual.shape
    cols = torch.ones(B, S, dtype=torch.bool, device=device)
    cols[:, :P] = (~state.visual | state.active).to(device)
    return cols


def shift_update(state, q: torch.Tensor, k: torch.Tensor, mask_row: torch.Tensor | None,
                 scale: float, cols: torch.Tensor) -> torch.Tensor:
    """Re-score active ∪ reserve with the current query; swap the active set on a large shift.

    Scores: head-mean softmax of ``q_last · k`` over the columns this step may see plus the
    reserve. ``shift = 1 - mass(active) / mass(best k)``; rows with shift > tau take the best k
    as their active set (``state`` is updated). Returns the columns the layers from the site on
    attend to, ``[B, S]``.
    """
    if state is None:
        return cols.clone()
    B, P = state.visual.shape
    S = k.shape[2]
    vis = torch.zeros(B, S, dtype=torch.bool, device=q.device)
    vis[:, :P] = state.visual.to(q.device)
    active = cols.expand(B, S) & vis
    allowed = cols.expand(B, S) | vis
    if mask_row is not None:
        mr = mask_row.expand(B, S)
        allowed = allowed & (mr if mr.dtype == torch.bool else mr > float("-inf"))
    probs = attn_row_scores(q, k, allowed, scale, -1)                  # [B, S]
    best = topk_mask(probs, vis, state.k)
    mass_active = (probs * active).sum(-1)
    mass_best = (probs * best).sum(-1)
    shift = 1.0 - mass_active / mass_best.clamp(min=1e-30)
    swap = shift > state.tau
    new_active = torch.where(swap[:, None], best, active)
    state.active = new_active[:, :P].clone()
    state.steps += 1
    state.swaps += int(swap.sum())
    return ~vis | new_active | (torch.arange(S, device=q.device) >= P)


# ---- Nüwa ---------------------------------------------------------------------------------------
def _grid_coords(V: int, grid_h: int, grid_w: int, device):
    """Per visual index of a row (images of ``grid_h*grid_w`` tokens back to back): image, row, col."""
    N = grid_h * grid_w
    i = torch.arange(V, device=device)
    local = i % N
    return i // N, local // grid_w, local % grid_w


def nuwa_anchor_scores(cls_attn: torch.Tensor, n_keep: int, grid_h: int, grid_w: int,
                       region: int) -> torch.Tensor:
    """Nüwa separation: ``[B, V]`` scores whose top ``n_keep`` are the anchors.

    Each image's patch grid is cut into ``region x region`` blocks; the top
    ``n = ceil(n_keep / blocks per row)`` tokens of each block by CLS attention (ties: lower
    index) are candidates. The score is minus the rank in the order (candidate first, CLS
    attention descending, index ascending), exact in float32, so the top ``n_keep`` are the
    best candidates (then, only if blocks are too small to supply them, the best others).
    """
    B, V = cls_attn.shape
    s = cls_attn.float()
    img, r, c = _grid_coords(V, grid_h, grid_w, s.device)
    per_row = -(-grid_w // region)
    block = (img * (-(-grid_h // region)) + r // region) * per_row + c // region     # [V]
    n_blocks = int(block.max()) + 1 if V else 1
    n = -(-int(n_keep) // n_blocks)
    idx = torch.arange(V, device=s.device)
    sj, si = s[:, None, :], s[:, :, None]                                            # [B, i, j]
    better = (sj > si) | ((sj == si) & (idx[None, :] < idx[:, None]))               # j before i
    cand = ((better & (block[None, :] == block[:, None])).sum(-1)) < n              # [B, V]
    cj, ci = cand[:, None, :], cand[:, :, None]
    before = (cj & ~ci) | ((cj == ci) & better)
    return -before.sum(-1).float()


def nuwa_aggregate(hidden: torch.Tensor, visual_mask: torch.Tensor, keep_mask: torch.Tensor,
                   scores: torch.Tensor, upper: torch.Tensor, grid_h: int, grid_w: int,
                   distance: float, pillars: float) -> torch.Tensor:
    """Nüwa aggregation on the spliced embedding ``hidden`` ``[B, L, D]``.

    Anchors (visual and kept) are ranked by ``scores`` ``[B, L]``; the top
    ``ceil(pillars * anchors)`` are pillars and stay as they are. Every other anchor ``i`` becomes
    ``Σ_j W_ij x_j / Σ_j W_ij`` over the visual tokens ``j`` of its own image, with
    ``W_ij = ReLU(cos(u_i, u_j)) * (1 - min(d_ij / d_max, 1))``: ``u`` the vision tower's
    upper-layer features ``[B, V, Dv]``, ``d`` the patch-grid distance and
    ``d_max = sqrt(distance * ((grid_h-1)^2 + (grid_w-1)^2))`` (``W_ii = 1``). A row whose
    visual tokens are all anchors is returned unchanged.
    """
    B, L, D = hidden.shape
    out = hidden.clone()
    V = upper.shape[1]
    if V == 0:
        return out
    img, r, c = _grid_coords(V, grid_h, grid_w, hidden.device)
    d = ((r[:, None] - r[None, :]).float() ** 2 + (c[:, None] - c[None, :]).float() ** 2).sqrt()
    d_max = math.sqrt(distance * ((grid_h - 1) ** 2 + (grid_w - 1) ** 2))
    prox = 1.0 - (d / d_max).clamp(max=1.0) if d_max > 0 else (d == 0).float()
    prox = prox * (img[:, None] == img[None, :]).float()                         # [V, V]
    u = torch.nn.functional.normalize(upper.float(), dim=-1)
    for b in range(B):
        pos = torch.nonzero(visual_mask[b]).flatten()
        if pos.numel() != V:
            raise ValueError(f"vtp nuwa: row {b} has {pos.numel()} visual tokens, the vision "
                             f"internals {V}")
        kept = keep_mask[b, pos]
        anchors = torch.nonzero(kept).flatten()
        if anchors.numel() in (0, V):
            continue        # nothing removed: nothing to recover (keep-all is the identity)
        # anchors ascend by position, so a stable sort breaks score ties towards the lower one
        order = torch.sort(scores[b, pos[anchors]].float(), descending=True, stable=True).indices
        collectors = anchors[order[math.ceil(pillars * anchors.numel()):]]
        if collectors.numel() == 0:
            continue
        W = torch.relu(u[b, collectors] @ u[b].T) * prox[collectors]             # [C, V]
        W[torch.arange(collectors.numel(), device=W.device), collectors] = 1.0   # self-weight 1
        x = hidden[b, pos].float()
        out[b, pos[collectors]] = ((W @ x) / W.sum(-1, keepdim=True)).to(hidden.dtype)
    return out
