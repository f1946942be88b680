"""FastV's prefill written out by hand for one LLaVA row, for ``benchmarks/compile_time.py``.

What Inductor alone compiles when the pruning is in the model's own code instead of inserted by
vtp: the layers before the site at the prompt length, a FastV-like selection (the last query's
attention to the visual keys, at the site layer's input), the layers after it at the kept
width, a static number here (``L - V + budget``). Its compile time is the floor for any compiler
of a pruned graph with two sequence widths: Inductor generates each layer kernel once per width.

Only compile time is measured with it: it returns the kept tokens' logits (not the prompt's
shape), builds no KV cache, assumes one row without padding and the image in one piece, and
scores with the site layer's own projections (vtp's FastV reads layer ``K - 1``'s attention).
"""
from __future__ import annotations

import math

import torch
from torch import nn


class FastVByHand(nn.Module):
    def __init__(self, llava: nn.Module, layer: int, budget: int):
        super().__init__()
        self.llava, self.layer, self.budget = llava, layer, budget
        self.image_token_id = llava.config.image_token_id

    def forward(self, input_ids, attention_mask=None, pixel_values=None):
        lm = self.llava.model.language_model
        h = self.llava.model.get_input_embeddings()(input_ids)
        feats = self.llava.model.get_image_features(pixel_values=pixel_values, return_dict=True).pooler_output
        feats = torch.cat(list(feats), 0).to(h.dtype)
        is_vis = input_ids == self.image_token_id
        h = h.masked_scatter(is_vis.unsqueeze(-1), feats)
        L, V = input_ids.shape[1], feats.shape[0]
        pos = torch.arange(L, device=h.device).unsqueeze(0)
        cos, sin = lm.rotary_emb(h, pos)
        for layer in lm.layers[: self.layer]:
            h = layer(h, attention_mask=None, position_embeddings=(cos, sin), position_ids=pos)
        keep = self._keep(lm.layers[self.layer], h, cos, sin, is_vis, L - V + self.budget)
        h, cos, sin = (t.gather(1, keep.unsqueeze(-1).expand(-1, -1, t.shape[-1])) for t in (h, cos, sin))
        for layer in lm.layers[self.layer:]:
            h = layer(h, attention_mask=None, position_embeddings=(cos, sin), position_ids=keep)
        return self.llava.lm_head(lm.norm(h))

    @staticmethod
    def _keep(layer, h, cos, sin, is_vis, width):
        """Positions kept, in order: every non-visual one and the visual ones the last query
        attends to most (mean over heads), ``width`` in all."""
        att = layer.self_attn
        x = layer.input_layernorm(h)
        B, L, _ = x.shape
        d = att.head_dim
        q = att.q_proj(x[:, -1:]).view(B, 1, -1, d).transpose(1, 2)
        k = att.k_proj(x).view(B, L, -1, d).transpose(1, 2)
        k = k.repeat_interleave(q.shape[1] // k.shape[1], 1)
        c, s = cos.unsqueeze(1), sin.unsqueeze(1)

        def rot(t):
            return torch.cat((-t[..., d // 2:], t[..., : d // 2]), -1)
        q = q * c[:, :, -1:] + rot(q) * s[:, :, -1:]
        k = k * c + rot(k) * s
        probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), -1).mean(1)[:, 0]   # [B, L]
        score = torch.where(is_vis, probs, torch.full_like(probs, float("inf")))
        return score.topk(width, -1).indices.sort(-1).values
