"""A family-agnostic oracle: pruning as masks and skips on the model's own eager forward.

It shares no code with the graph rewrite. For any family transformers ships, it runs the
model's own ``forward`` (or ``generate`` without a cache, which re-runs the whole sequence at
every step) with two kinds of hooks, installed for the call and removed after it:

* an attention function registered in transformers' ``AttentionInterface`` (it wraps SDPA) that
  sees every decoder layer's query and key (after RoPE and q/k norms, as the model computes
  them) and adds key masks;
* forward hooks on the decoder layers.

What it computes, for a site at layer K with the kept visual tokens chosen per row:

* every attention layer from K on: no query sees a removed token's key (removed = the row's
  visual tokens that were not kept, and its padding), and a removed token skips the layer
  (its hidden state leaves the layer unchanged): the compacted model's computation for every
  kept token, whatever the family's masks say (causal, sliding windows in positions,
  bidirectional image blocks);
* generated tokens see no removed key in any attention layer (the compacted cache);
* layers without attention (linear attention, Qwen3.5) run on every token: the semantics vtp
  gives hybrid models.

The selection itself is re-derived here from the method definitions (METHODS.md): FastV and
DCP-Prune from the recorded query and keys of layer K-1; random, DivPrune and DCP-Prune's encoder
site from the spliced embedding entering layer 0.

ALVTS (``method="alvts"``) routes per layer instead of pruning for good: at every decoder layer
``i >= layer`` its low-rank selector (rebuilt from that layer's ``q_proj``/``k_proj`` weights, q
bias and ``input_layernorm`` weight as full ``D x D`` matrices truncated by SVD to ``rank``:
testing/oracle_alvts.py) scores the visual tokens from the hidden state entering layer ``i``; the
top k go through layer ``i``, the others have their keys masked in layer ``i`` only and skip it.
Generated tokens see layer ``max(i, layer)``'s routed set at layer ``i`` (layers before the first
routed one cache the first routed layer's set).
"""
from __future__ import annotations

import contextlib
import math

import torch

from . import oracle_alvts, oracle_baselines, oracle_dcp, oracle_nuwa, oracle_video
from .oracle_baselines import _top, last_real as _last_real
from .oracle_pruning import Pruning, Stage

__all__ = ["Pruning", "Stage", "masked_forward", "masked_generate", "decoder_layers"]

NAME = "vtp_oracle"


class _Run:
    """State of one oracle call: the prompt, the selections, what each layer recorded."""

    def __init__(self, pruning: Pruning, visual: torch.Tensor, real: torch.Tensor, num_layers: int,
                 frames: torch.Tensor | None = None):
        self.p = pruning
        # [B, P] each visual position's frame (families.frame_ids); by default every run of
        # consecutive visual positions is one frame (an image)
        self.frames = oracle_video.runs(visual.bool()) if frames is None else frames
        self.stages = pruning.stages(num_layers)
        self.plans: dict = {}        # FastVID: per row, context token -> the tokens merged into it
        self.visual, self.real = visual.bool(), real.bool()      # [B, P] prompt masks
        self.prompt_len = visual.shape[1]
        self.removed_by: list[torch.Tensor] = []                 # per selected stage: [B, P] removed so far
        self.kept_by: list[list[list[int]]] = []                 # per selected stage: kept visual positions
        self.layer = -1                                          # the decoder layer running
        self.attended = False                                    # it called attention
        self.records: dict = {}      # layer -> (q, k, mask, scale) as that layer attended
        self.reserve = None          # DSTP: reserve positions per row
        self.recycled: dict = {}     # SparseVLM v1: stage -> per row (representatives, members)
        self.hist: list = []         # DSTP: active positions per row after each step
        self.dstp_layer = None
        self.inputs: dict = {}
        self.vision: list = []       # VisionZip: per row (dominant scores, keys) of its visual tokens
        self.nuwa: list = []         # Nüwa: per row (anchor scores, upper features) of its visual tokens
        self.grid = 0                # Nüwa: the patch grid's side, or (rows, cols)
        self.targets: dict = {}      # VisionZip: per row, the contextual targets' positions
        self.routes: dict = {}       # ALVTS: layer -> per row, the routed visual positions
        self.route_rm: dict = {}     # ALVTS: layer -> [B, P] not routed through that layer
        self.text_cfg = None         # ALVTS: the text config (head counts)

    def read_vision(self, model, pixel_values, grid_thw=None) -> None:
        """VisionZip's (or Nüwa's) vision internals, split into the rows in splice order."""
        if grid_thw is not None and pixel_values is not None and self.visual.any():
            self._read_qwen_vision(model, pixel_values, grid_thw)
            return
        if self.p.method == "nuwa" and pixel_values is not None and self.visual.any():
            tower = model.model.vision_tower
            if hasattr(getattr(tower, "vision_model", tower).embeddings, "class_embedding"):
                if getattr(model.config, "vision_feature_select_strategy", None) != "default":
                    raise NotImplementedError("the mask oracle's Nüwa reads CLS towers with 'default'")
                score, upper = oracle_nuwa.internals(model, pixel_values)
            else:
                score, upper = oracle_nuwa.received_internals(model, pixel_values)
            score, upper = score.reshape(-1), upper.reshape(-1, upper.shape[-1])
            self.grid = tower.config.image_size // tower.config.patch_size
            at = 0
            for b in range(self.visual.shape[0]):
                n = int(self.visual[b].sum())
                self.nuwa.append((score[at:at + n].tolist(), upper[at:at + n]))
                at += n
            return
        p = next((st.p or self.p for st in self.stages if st.rule == "visionzip"), None)
        if p is None or pixel_values is None or not self.visual.any():
            return
        dom, keys = oracle_baselines.visionzip_internals(model, pixel_values, p.score,
                                                         -2 if p.vision_layer is None else p.vision_layer)
        at = 0
        for b in range(self.visual.shape[0]):
            n = int(self.visual[b].sum())
            self.vision.append((dom[at:at + n].tolist(), keys[at:at + n]))
            at += n

    def _read_qwen_vision(self, model, pixel_values, grid_thw) -> None:
        """Qwen-style towers: per merged token (oracle_nuwa.qwen_internals), for Nüwa (summed
        received attention) or VisionZip (``score``: "cls" = summed, "received" = mean)."""
        p = self.p if self.p.method == "nuwa" else \
            next((st.p or self.p for st in self.stages if st.rule == "visionzip"), None)
        if p is None:
            return
        layer = -1 if p.vision_layer is None else p.vision_layer
        summed, received, upper, keys, self.grid = oracle_nuwa.qwen_internals(model, pixel_values,
                                                                              grid_thw, layer)
        if p.method == "nuwa" and self.grid is None:
            raise NotImplementedError("the mask oracle's Nüwa reads images of one size")
        dom = received if p.score == "received" and p.method != "nuwa" else summed
        at = 0
        for b in range(self.visual.shape[0]):
            n = int(self.visual[b].sum())
            if p.method == "nuwa":
                self.nuwa.append((summed[at:at + n].tolist(), upper[at:at + n]))
            else:
                self.vision.append((dom[at:at + n].tolist(), keys[at:at + n]))
            at += n

    @property
    def kept(self):
        """The finally kept visual positions per row (None before the first selection); ALVTS:
        ``{layer: per row routed visual positions}``."""
        if self.p.method == "alvts":
            return self.routes
        return self.kept_by[-1] if self.kept_by else None

    # ---- ALVTS -------------------------------------------------------------------------------
    def route(self, i: int, layer, hidden: torch.Tensor) -> None:
        """ALVTS at decoder layer ``i``: each row's top-k visual tokens by the selector of
        ``layer`` (the module) on ``hidden`` (entering it), ties by lower index."""
        heads, kv = self.text_cfg.num_attention_heads, self.text_cfg.num_key_value_heads
        rank = dict(self.p.rank)[i] if isinstance(self.p.rank, tuple) else self.p.rank
        factors, scale = oracle_alvts.lowrank(layer, heads, kv, rank)
        bias = oracle_alvts.bias_terms(layer, heads, kv)
        kept = []
        for b in range(hidden.shape[0]):
            pos = torch.nonzero(self.visual[b]).flatten().tolist()
            if not pos:
                kept.append([])
                continue
            scores = oracle_alvts.selector(hidden[b, :self.prompt_len], pos, factors, scale,
                                           _last_real(self.real[b]), bias)
            kept.append([pos[j] for j in sorted(_top(scores, min(len(pos), self.p.n_keep(len(pos)))))])
        removed = ~self.real.clone() | self.visual
        for b in range(len(kept)):
            removed[b, kept[b]] = False
        self.routes[i], self.route_rm[i] = kept, removed

    def _removed_sets(self):
        """``(prompt, generated)``: the prompt positions the current layer hides from prompt
        queries and from generated queries (None: none)."""
        if self.p.method == "alvts":
            return self.route_rm.get(self.layer), self.route_rm.get(max(self.layer, self.p.layer))
        return self.removed_at(self.layer), self.removed

    @property
    def removed(self):
        return self.removed_by[-1] if self.removed_by else None

    def pending(self, layer: int, own: bool):
        """The stage that selects at ``layer`` now, if any (stages select in order)."""
        n = len(self.removed_by)
        if n < len(self.stages) and self.stages[n].layer == layer and self.stages[n].own == own \
                and self.visual.any():
            return self.stages[n]
        return None

    def removed_at(self, layer: int):
        """Prompt positions removed before ``layer`` (None: none yet)."""
        out = None
        for st, rm in zip(self.stages, self.removed_by):
            if st.layer <= layer:
                out = rm
        return out

    # ---- selection -------------------------------------------------------------------------
    def select(self, stage: "Stage", hidden: torch.Tensor, record=None) -> None:
        """Choose each row's kept visual tokens at ``stage`` (``hidden``: entering its layer;
        ``record``: the attention inputs it scores with)."""
        p, B = stage.p or self.p, hidden.shape[0]
        prev = self.removed
        kept, reserve = [], [[] for _ in range(B)]
        recycled = [([], []) for _ in range(B)]
        for b in range(B):
            allpos = torch.nonzero(self.visual[b]).flatten().tolist()
            pos = [q for q in allpos if prev is None or not bool(prev[b, q])]
            V = len(pos)
            if V == 0:
                kept.append([])
                continue
            k = min(V, stage.count(V, len(allpos)))
            feats = hidden[b, pos]
            rule = stage.rule
            scores = None
            frame = [int(self.frames[b, q]) for q in pos]
            if rule in oracle_video.RULES:        # the video methods: frame-aware selections
                sel, self.plans[b] = oracle_video.select(rule, feats, frame, pos, k, p)
            elif rule == "random":
                x = [math.sin(j * 12.9898 + b * 78.233 + p.seed * 37.719) * 43758.5453 for j in range(V)]
                scores = [v - math.floor(v) for v in x]
                sel = _top(scores, k)
            elif rule == "divprune":
                sel = oracle_baselines.divprune_select(feats, k)
            elif rule == "dart":
                sel = self._dart(b, hidden, record, pos, k, p.pivots)
            elif rule == "nuwa":
                sel = oracle_nuwa.anchors(self.nuwa[b][0], k, self.grid, p.region)
            elif rule == "visionzip":
                dom, keys = self.vision[b]
                dominant, targets = oracle_baselines.visionzip_select(dom, k, p.contextual)
                sel = dominant + targets
                self.targets[b] = [pos[i] for i in targets]
            elif rule == "cdpruner":
                text = [i for i in range(hidden.shape[1]) if bool(self.real[b, i]) and not bool(self.visual[b, i])]
                after = [i for i in text if i > pos[0]]
                sel = oracle_baselines.cdpruner_select(feats, hidden[b, after or text], k, p.theta)
            elif rule == "sparsevlm":
                scores = self._rater_attention(b, record, pos)
                sel = _top(scores, k)
                if p.recycle:   # v1: the next best are recycled into cluster representatives
                    order = _top(scores, V)
                    n_rec, n_clu = oracle_baselines.sparsevlm_recycle_count(V - k)
                    reps, members = order[k:k + n_clu], order[k + n_clu:k + n_rec]
                    sel = sel + reps
                    recycled[b] = ([pos[i] for i in reps], [pos[i] for i in members])
            elif rule in ("fastv", "pdrop") or (rule == "acgr" and p.site == "layer"):
                probs = self._last_token_attention(b, record)
                scores = [probs[i] for i in pos]
                sel = (oracle_dcp.dcp_select(feats, scores, k, p.tau, p.iters) if rule == "acgr"
                       else _top(scores, k))
            else:   # acgr at the encoder: the last token's embedding against each visual one
                last = _last_real(self.real[b])
                D = feats.shape[-1]
                scores = (feats.float() @ hidden[b, last].float() / math.sqrt(D)).softmax(0).tolist()
                sel = oracle_dcp.dcp_select(feats, scores, k, p.tau, p.iters)
            if p.per_frame != "off" and rule in ("random", "fastv", "pdrop"):
                if p.per_frame != "even":
                    raise ValueError(f"the oracle spreads {rule} over frames evenly only")
                sel = oracle_video.apportion(scores, frame, pos, k, p.min_per_frame, oracle_video.sizes(frame))
            kept.append([pos[i] for i in sorted(sel)])
            if p.dstp is not None and stage is self.stages[-1]:
                reserve[b] = [pos[i] for i in sorted(self._reserve(feats, sel, k, V, scores if rule in ('fastv', 'pdrop') else None))]
        removed = ~self.real.clone() if prev is None else prev.clone()
        for b in range(B):
            removed[b] |= self.visual[b]
            removed[b, kept[b]] = False
            removed[b, reserve[b]] = False
        self.kept_by.append(kept)
        self.removed_by.append(removed)
        self.recycled[self.stages.index(stage)] = recycled
        if p.dstp is not None and stage is self.stages[-1]:
            self.reserve = reserve
            self.hist = [kept]
            self.dstp_layer = stage.layer

    def _reserve(self, feats, sel: list[int], k: int, V: int, scores) -> list[int]:
        """DSTP's reserve (indices into the stage's visual tokens): farthest points from the
        active set ``sel`` in the stage's input hidden states, or the next best by score."""
        reserve, reserve_by, _ = self.p.dstp
        r = min(k if reserve is None else reserve, V - k)
        rest = [i for i in range(V) if i not in sel]
        if reserve_by == "coverage":
            return oracle_baselines.cover_reserve(feats, list(sel), rest, r)
        if scores is None:
            raise NotImplementedError("the oracle ranks a score reserve for fastv/pdrop only")
        return _top(scores, k + r)[k:]

    def rescore(self, record) -> None:
        """DSTP at a decode step: the newest query re-scores active ∪ reserve (head-mean
        softmax over the columns it may see plus the reserve); a shift above tau swaps."""
        q, k, _, scale = record
        S = q.shape[2]
        if S <= self.prompt_len or len(self.hist) != S - self.prompt_len:
            return
        tau = self.p.dstp[2]
        new = []
        for b in range(q.shape[0]):
            act = self.hist[-1][b]
            cand = sorted(set(self.hist[0][b]) | set(self.reserve[b]))
            if not cand:
                new.append(act)
                continue
            allowed = torch.ones(S, dtype=torch.bool)
            allowed[:self.prompt_len] = self.real[b] & ~self.visual[b]
            allowed[cand] = True
            qh = q[b, :, S - 1].float()
            kh = k[b].float().repeat_interleave(q.shape[1] // k.shape[1], 0)
            probs = (torch.einsum("hd,hsd->hs", qh, kh) * scale).masked_fill(~allowed, float("-inf"))
            probs = probs.softmax(-1).mean(0).tolist()
            best = sorted(cand, key=lambda j: (-probs[j], j))[:len(self.hist[0][b])]
            shift = 1 - sum(probs[j] for j in act) / max(sum(probs[j] for j in best), 1e-30)
            new.append(sorted(best) if shift > tau else act)
        self.hist.append(new)

    def _rater_attention(self, b: int, record, pos: list[int]) -> list[float]:
        """SparseVLM: the attention row ``b``'s raters pay each of ``pos`` (head mean, then
        rater mean), from the recorded q/k of the scoring layer; raters from the input
        embeddings against the visual tokens still kept."""
        q, k, mask, scale = record
        S = k.shape[2]
        real = [i for i in range(S) if bool(self.real[b, i])]
        text = [i for i in real if not bool(self.visual[b, i])]
        after = [i for i in text if i > max(pos)]
        raters = oracle_baselines.sparsevlm_raters(self.embeds[b], pos, after or text)
        kh = k[b].float().repeat_interleave(q.shape[1] // k.shape[1], 0)
        total = [0.0] * len(pos)
        for r in raters:
            logits = torch.einsum("hd,hsd->hs", q[b, :, r].float(), kh) * scale
            if mask is None:
                allowed = torch.arange(S) <= r
            else:
                m = mask[b if mask.shape[0] > 1 else 0, 0, r]
                allowed = m if m.dtype == torch.bool else m > float("-inf")
            allowed = allowed & self.real[b, :S]
            probs = logits.masked_fill(~allowed, float("-inf")).softmax(-1).mean(0)
            for j, p in enumerate(pos):
                total[j] += float(probs[p]) / len(raters)
        return total

    def _dart(self, b: int, hidden, record, pos: list[int], k: int, pivots: int) -> list[int]:
        """DART's selection (indices into ``pos``) from the recorded keys of layer K-1."""
        _, keys, _, _ = record
        S = keys.shape[2]
        norms = keys[b].float().abs().sum(dim=(0, 2)).tolist()
        real = [i for i in range(S) if bool(self.real[b, i])]
        text = [i for i in real if not bool(self.visual[b, i])]
        last = max(pos)
        kept = oracle_baselines.dart_select(norms, hidden[b].float(), pos, [i for i in text if i > last],
                                            text, k, pivots)
        return [pos.index(q) for q in kept]

    def merge(self, stage: "Stage", hidden: torch.Tensor) -> torch.Tensor:
        """DCP-Prune's ACGR: removed visual tokens fold into their most similar kept ones (at
        every forward: generated tokens see the merged kept tokens)."""
        if stage.rule == "sparsevlm" and (stage.p or self.p).recycle:
            return oracle_baselines.sparsevlm_recycle_merge(hidden, self.recycled[self.stages.index(stage)])
        p = stage.p or self.p
        if stage.rule == "fastvid":  # context tokens take in the rest of their segment
            out = hidden.clone()
            for b, plan in self.plans.items():
                pos = torch.nonzero(self.visual[b]).flatten().tolist()
                out[b, pos] = oracle_video.fastvid_merge(hidden[b, pos], plan, p.beta)
            return out
        if stage.rule == "nuwa":     # collectors become alignment-weighted means of their image
            out = hidden.clone()
            for b, kept in enumerate(self.kept_by[self.stages.index(stage)]):
                pos = torch.nonzero(self.visual[b]).flatten().tolist()
                if not pos or len(kept) == len(pos):
                    continue
                score, upper = self.nuwa[b]
                chosen = [pos.index(q) for q in kept]
                order = oracle_nuwa.anchor_order(score, len(chosen), self.grid, p.region)
                out[b, pos] = oracle_nuwa.aggregate(hidden[b, pos], upper, chosen, self.grid, p.distance,
                                                    p.pillars, order)
            return out
        if stage.rule == "visionzip":
            if not p.merge:
                return hidden
            out = hidden.clone()
            for b, kept in enumerate(self.kept_by[self.stages.index(stage)]):
                pos = torch.nonzero(self.visual[b]).flatten().tolist()
                if self.targets.get(b):
                    out[b, pos] = oracle_baselines.visionzip_merge(
                        hidden[b, pos], self.vision[b][1], [pos.index(q) for q in kept],
                        [pos.index(q) for q in self.targets[b]])
            return out
        if stage.rule != "acgr" or not p.merge:
            return hidden
        out = hidden.clone()
        for b, kept in enumerate(self.kept_by[self.stages.index(stage)]):
            pos = torch.nonzero(self.visual[b]).flatten().tolist()
            if len(kept) < len(pos):
                sel = [pos.index(q) for q in kept]
                out[b, pos] = oracle_dcp.acgr_merge(hidden[b, pos], sel, p.m).to(hidden.dtype)
        return out

    def last_record(self, layer: int):
        """The last attention layer's inputs before ``layer``."""
        before = [i for i in self.records if i < layer]
        if not before:
            raise ValueError(f"no attention layer before layer {layer}")
        return self.records[max(before)]

    def _last_token_attention(self, b: int, record) -> list[float]:
        """Head-mean softmax of row ``b``'s last real query over the keys it may attend to, as
        the model computed q and k (``record``)."""
        q, k, mask, scale = record
        last = _last_real(self.real[b])
        qh = q[b, :, last].float()                                   # [H, D]
        kh = k[b].float().repeat_interleave(q.shape[1] // k.shape[1], 0)   # [H, S, D]
        logits = torch.einsum("hd,hsd->hs", qh, kh) * scale
        S = kh.shape[1]
        if mask is None:
            allowed = torch.arange(S) <= last
        else:
            m = mask[b if mask.shape[0] > 1 else 0, 0, last]
            allowed = m if m.dtype == torch.bool else m > float("-inf")
        allowed = allowed & self.real[b, :S]
        return logits.masked_fill(~allowed, float("-inf")).softmax(-1).mean(0).tolist()

    # ---- masks -------------------------------------------------------------------------------
    def mask(self, q_len: int, S: int, mask, device):
        """The attention mask of the current layer with removed keys hidden, or None (as is)."""
        prompt_rm, gen_rm = self._removed_sets()
        if gen_rm is None:
            return None
        B = gen_rm.shape[0]
        q_pos = torch.arange(S - q_len, S, device=device)            # query positions (no cache)
        P = min(self.prompt_len, S)
        blocked = torch.zeros(B, q_len, S, dtype=torch.bool, device=device)
        gen = q_pos >= self.prompt_len                               # generated queries
        blocked[:, gen, :P] = gen_rm[:, None, :P]                    # the compacted cache: final set
        if prompt_rm is not None:
            blocked[:, ~gen, :P] = prompt_rm[:, None, :P]
        if self.reserve is not None:
            self._dstp_mask(blocked, q_pos, gen, P)
        blocked &= ~(q_pos[:, None] == torch.arange(S, device=device)[None, :])[None]   # never all-masked
        if mask is None:
            base = torch.ones(q_len, S, dtype=torch.bool, device=device).tril(S - q_len)[None, None]
        elif mask.dtype == torch.bool:
            base = mask
        else:
            base = mask > float("-inf")
        return base & ~blocked[:, None]

    def _dstp_mask(self, blocked, q_pos, gen, P) -> None:
        """Prompt queries from the DSTP site on never see the reserve (unless they are one);
        the token fed at decode step s sees the active set A[s-1] before the site, A[s] from
        it on, and no other visual token."""
        after = self.layer >= self.dstp_layer
        for b in range(blocked.shape[0]):
            res = torch.zeros(P, dtype=torch.bool)
            res[[j for j in self.reserve[b] if j < P]] = True
            if after:
                rows = (~gen).nonzero().flatten()
                for i in rows.tolist():
                    if not res[int(q_pos[i])]:
                        blocked[b, i, :P] |= res
            for i in gen.nonzero().flatten().tolist():
                g = int(q_pos[i]) - self.prompt_len
                step = g + 1 if after else g
                act = torch.zeros(P, dtype=torch.bool)
                act[[j for j in self.hist[step][b] if j < P]] = True
                blocked[b, i, :P] = (~self.real[b, :P]) | (self.visual[b, :P] & ~act)

    def skip(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        """Prompt positions removed before this layer leave it unchanged."""
        removed = self._removed_sets()[0]
        if removed is None or not self.attended:
            return after
        P = min(self.prompt_len, after.shape[1])
        out = after.clone()
        rm = torch.zeros(after.shape[:2], dtype=torch.bool, device=after.device)
        rm[:, :P] = removed[:, :P]
        out[rm] = before[rm].to(after.dtype)
        return out


_ACTIVE: _Run | None = None


def _attention(module, query, key, value, attention_mask, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    run = _ACTIVE
    if run is not None:
        run.attended = True
        scale = kwargs.get("scaling") or query.shape[-1] ** -0.5
        stage = run.pending(run.layer, own=True)
        if stage is not None:       # scores with this layer's own q/k, then prunes before it
            eff = run.mask(query.shape[2], key.shape[2], attention_mask, query.device)
            eff = attention_mask if eff is None else eff
            run.select(stage, run.inputs[run.layer], (query.detach(), key.detach(), eff, scale))
        elif run.reserve is not None and run.stages[-1].own and run.layer == run.dstp_layer:
            run.rescore((query.detach(), key.detach(), None, scale))
        new = run.mask(query.shape[2], key.shape[2], attention_mask, query.device)
        run.records[run.layer] = (query.detach(), key.detach(),
                                  attention_mask if new is None else new, scale)
        if new is not None:
            attention_mask = new
            kwargs["is_causal"] = False
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def _register():
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask
    AttentionInterface.register(NAME, _attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)


def decoder_layers(model) -> torch.nn.ModuleList:
    """The language model's decoder layers (the longest ModuleList under the text model)."""
    n = model.config.get_text_config().num_hidden_layers
    lists = [m for name, m in model.named_modules() if isinstance(m, torch.nn.ModuleList)
             and len(m) == n and "vision" not in name and "visual" not in name]
    if not lists:
        raise ValueError(f"no decoder layer list of length {n} in {type(model).__name__}")
    return lists[0]


@contextlib.contextmanager
def _hooked(model, run: _Run):
    global _ACTIVE
    _register()
    cfg = model.config.get_text_config()
    old_impl = cfg._attn_implementation
    handles = []
    for i, layer in enumerate(decoder_layers(model)):
        def pre(mod, args, kwargs, i=i):
            run.layer, run.attended = i, False
            hidden = args[0] if args else kwargs["hidden_states"]
            merged = False
            for stage in run.stages:
                if stage.layer != i or stage.own or not run.visual.any():
                    continue
                if run.pending(i, own=False) is stage:
                    run.select(stage, hidden, run.last_record(i) if i else None)
                elif run.reserve is not None and stage is run.stages[-1] and i == run.dstp_layer:
                    run.rescore(run.last_record(i))
                hidden, merged = run.merge(stage, hidden), True
            if merged:
                args, kwargs = ((hidden, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": hidden})
            if run.p.method == "alvts" and i >= run.p.layer and i not in run.routes \
                    and run.visual.any():
                run.route(i, mod, hidden)
            run.inputs[i] = hidden
            if i == 0:
                run.embeds = hidden.detach()
            return args, kwargs

        def post(mod, args, kwargs, out, i=i):
            before = run.inputs.pop(i)
            if isinstance(out, tuple):
                return (run.skip(before, out[0]), *out[1:])
            return run.skip(before, out)

        handles.append(layer.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(layer.register_forward_hook(post, with_kwargs=True))
    cfg._attn_implementation = NAME
    _ACTIVE = run
    try:
        yield run
    finally:
        _ACTIVE = None
        cfg._attn_implementation = old_impl
        for h in handles:
            h.remove()


@torch.no_grad()
def masked_forward(model, inputs: dict, visual: torch.Tensor, pruning: Pruning,
                   frames: torch.Tensor | None = None):
    """Logits ``[B, L, vocab]`` of the pruned model, and the kept visual positions per row.
    ``visual``: the prompt's visual-position mask ``[B, L]`` (the splice mask); ``frames``: each
    visual position's frame (families.frame_ids), for the frame-aware selections."""
    real = inputs.get("attention_mask", torch.ones_like(visual, dtype=torch.long))
    run = _Run(pruning, visual, real, len(decoder_layers(model)), frames)
    run.text_cfg = model.config.get_text_config()
    run.read_vision(model, inputs.get("pixel_values"), inputs.get("image_grid_thw"))
    with _hooked(model, run):
        logits = model(**inputs).logits
    return logits, run.kept


@torch.no_grad()
def masked_generate(model, inputs: dict, visual: torch.Tensor, pruning: Pruning,
                    max_new_tokens: int = 4, frames: torch.Tensor | None = None):
    """Greedy tokens ``[B, new]``, per-step top-2 logit margins (for recognising near ties) and
    the kept visual positions, by ``generate`` without a cache: every step re-runs the whole
    sequence, the selection made at the first step stays."""
    real = inputs.get("attention_mask", torch.ones_like(visual, dtype=torch.long))
    run = _Run(pruning, visual, real, len(decoder_layers(model)), frames)
    run.text_cfg = model.config.get_text_config()
    run.read_vision(model, inputs.get("pixel_values"), inputs.get("image_grid_thw"))
    with _hooked(model, run):
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                             use_cache=False, output_scores=True, return_dict_in_generate=True)
    scores = torch.stack([s.float() for s in out.scores], 1)          # [B, new, vocab], processed
    top2 = scores.topk(2, dim=-1).values
    return out.sequences[:, visual.shape[1]:], top2[..., 0] - top2[..., 1], run.kept
