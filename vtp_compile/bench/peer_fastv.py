"""The peer users run today: FastV the way research repositories implement it.

Not part of the backend: a benchmark baseline. The research code (FastV's release and the
LLaVA forks that copied it) patches the decoder loop; with transformers 5.x the same thing is
done with hooks, no modeling file edited:

* layer ``K - 1`` runs *eager* attention (its attention module gets a config copy with
  ``_attn_implementation="eager"``, and an additive mask) so that it returns its attention
  weights; a forward hook keeps the last query row, averaged over heads;
* a forward pre-hook on every layer from ``K`` on gathers, in prefill, the kept positions of
  the hidden state (at ``K`` only: later layers already get the short one), of the rotary
  ``position_embeddings``, of ``position_ids`` and of a 4-D attention mask: the text tokens
  and the ``budget`` image tokens the last token attended to most.

As in those repositories the image span is fixed ahead of time (``start``, ``length``: the
config entries FastV calls ``image_token_start_index`` / ``image_token_length``), so every
shape is static; every row of a batch has its image at that span (each row keeps its own
top-``budget``); padding is not supported.
Decode steps are untouched: layers from ``K`` on cache fewer tokens, and with no padding
transformers passes no decode mask, so each layer attends to whatever its cache holds; RoPE
positions continue from the full prompt length (layer 0's cache).

    peer = HookFastV(model, layer=2, budget=64, start=5, length=576).attach()
    model(**inputs)          # or model.generate(...), or torch.compile(model)(...)
    peer.detach()
"""
from __future__ import annotations

import copy

import torch


def decoder_layers(model):
    """The decoder's layer list of a ``*ForConditionalGeneration`` VLM."""
    lm = model.model.language_model if hasattr(model.model, "language_model") else model.model
    return lm.layers


class HookFastV:
    def __init__(self, model, layer: int, budget: int, start: int, length: int):
        layers = decoder_layers(model)
        if not 1 <= layer < len(layers):
            raise ValueError(f"layer must be in [1, {len(layers) - 1}], got {layer}")
        self.model, self.layer, self.budget = model, layer, min(budget, length)
        self.start, self.length = start, length
        self.layers = layers
        self.handles: list = []
        self.scores = None      # [B, length]: last-token attention on the image span, layer K-1
        self.keep = None        # [B, L'] kept positions per row
        self._attn_config = None

    # -- hooks ------------------------------------------------------------------------------
    def _capture(self, module, args, kwargs, output):
        weights = output[1]
        if weights is not None and weights.shape[-2] > 1:       # prefill only
            row = weights[:, :, -1, self.start:self.start + self.length]
            self.scores = row.float().mean(1)

    def _eager_mask(self, module, args, kwargs):
        """Layer K-1 runs eager attention, which needs an additive mask; with SDPA elsewhere,
        transformers passes none (causal) or a bool one."""
        hidden = args[0] if args else kwargs["hidden_states"]
        L = hidden.shape[1]
        if L <= 1:
            return None
        mask = kwargs.get("attention_mask")
        if mask is None:
            mask = torch.ones(L, L, dtype=torch.bool, device=hidden.device).tril()[None, None]
        if mask.dtype == torch.bool:
            neg = torch.finfo(hidden.dtype).min
            mask = torch.zeros(mask.shape, dtype=hidden.dtype, device=hidden.device).masked_fill(~mask, neg)
        return args, {**kwargs, "attention_mask": mask}

    def _gather(self, module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        if hidden.shape[1] <= 1:                                 # decode: untouched
            return None
        if module is self.layers[self.layer]:
            B, L = hidden.shape[:2]
            top = torch.topk(self.scores, self.budget, dim=-1).indices      # [B, budget]
            top = torch.sort(top, dim=-1).values + self.start
            dev = hidden.device
            text = torch.cat([torch.arange(self.start, device=dev),
                              torch.arange(self.start + self.length, L, device=dev)])
            keep = torch.cat([text[None, :self.start].expand(B, -1), top,
                              text[None, self.start:].expand(B, -1)], 1)
            self.keep = keep                                                   # [B, L']
            hidden = _take(hidden, keep, 1)
        keep, full = self.keep, self.keep.shape[1]
        kw = dict(kwargs)
        pe = kw.get("position_embeddings")
        if pe is not None and pe[0].shape[-2] != full:
            kw["position_embeddings"] = tuple(_take(t, keep, t.dim() - 2) for t in pe)
        pid = kw.get("position_ids")
        if pid is not None and pid.shape[-1] != full:
            kw["position_ids"] = _take(pid, keep, pid.dim() - 1)
        mask = kw.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.dim() == 4 and mask.shape[-1] != full:
            kw["attention_mask"] = _take(_take(mask, keep, 2), keep, 3, batch_dim=0)
        if args:
            return (hidden, *args[1:]), kw
        kw["hidden_states"] = hidden
        return args, kw

    # -- install ------------------------------------------------------------------------------
    def attach(self) -> "HookFastV":
        attn = self.layers[self.layer - 1].self_attn
        self._attn_config = attn.config
        eager = copy.copy(attn.config)
        eager._attn_implementation = "eager"
        attn.config = eager
        self.handles.append(attn.register_forward_hook(self._capture, with_kwargs=True))
        self.handles.append(self.layers[self.layer - 1].register_forward_pre_hook(
            self._eager_mask, with_kwargs=True))
        for lay in self.layers[self.layer:]:
            self.handles.append(lay.register_forward_pre_hook(self._gather, with_kwargs=True))
        return self

    def detach(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()
        if self._attn_config is not None:
            self.layers[self.layer - 1].self_attn.config = self._attn_config
            self._attn_config = None


def _take(t: torch.Tensor, keep: torch.Tensor, dim: int, batch_dim: int | None = None) -> torch.Tensor:
    """``t`` indexed along ``dim`` per batch row by ``keep`` ``[B, L']`` (the batch dimension is
    the one before ``dim`` unless given; size 1 there broadcasts)."""
    bd = dim - 1 if batch_dim is None else batch_dim
    shape = list(t.shape)
    shape[bd] = keep.shape[0]
    t = t.expand(shape)
    view = [1] * t.dim()
    view[bd], view[dim] = keep.shape[0], keep.shape[1]
    idx_shape = list(t.shape)
    idx_shape[dim] = keep.shape[1]
    return torch.gather(t, dim, keep.view(view).expand(idx_shape))
