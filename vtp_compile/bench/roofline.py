"""What a pruned prefill or decode step can gain at best: FLOP ratios (CPU) and a per-layer
roofline (GPU), from a decoder's shape.

Per decoder layer (``P`` weights per token: the q/k/v/o projections and the MLP; ``A`` = query
heads x head dim; ``C`` = 2 x KV heads x head dim cached per token):

* FLOPs for ``q`` query tokens over ``k`` keys, per row: ``2 P q + 4 A q k`` (attention counted
  over all ``k`` keys, as the backend's own ``SiteReport`` does; causal masking is ignored);
* bytes: the layer's weights once per call (shared by the batch), plus per row the KV cache read
  (``k C``) and written (``q C``) and the layer's input and output activations (``2 q D``).

The LM head counts as one more layer (``vocab x D`` weights) on the last token of each row. The
roofline time of a layer is ``max(FLOPs / peak FLOP/s, bytes / bandwidth)``; a call's roofline
is the sum over its layers (kernels in sequence, each bound by one resource). The vision tower
is not counted (pruning leaves it as it is).
"""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Device:
    name: str
    flops: float       # dense bf16 FLOP/s
    bandwidth: float   # bytes/s


H200 = Device("H200", 790e12, 4.3e12)    # the figures the project's issue 12 gives for an H200


@dataclasses.dataclass(frozen=True)
class DecoderShape:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    head_dim: int | None = None
    dtype_bytes: int = 2

    @property
    def hd(self) -> int:
        return self.head_dim or self.hidden // self.heads

    @property
    def weights(self) -> int:
        """P: weights per token of one layer."""
        D, hd = self.hidden, self.hd
        return D * self.heads * hd * 2 + D * self.kv_heads * hd * 2 + 3 * D * self.intermediate

    @property
    def attn_width(self) -> int:
        return self.heads * self.hd

    @property
    def kv_width(self) -> int:
        return 2 * self.kv_heads * self.hd

    @classmethod
    def from_config(cls, text_config, dtype_bytes: int = 2) -> "DecoderShape":
        c = text_config
        return cls(c.hidden_size, c.num_hidden_layers, c.num_attention_heads,
                   getattr(c, "num_key_value_heads", None) or c.num_attention_heads,
                   c.intermediate_size, c.vocab_size, getattr(c, "head_dim", None), dtype_bytes)


@dataclasses.dataclass(frozen=True)
class Cost:
    flops: float
    bytes: float

    def time(self, dev: Device) -> float:
        return max(self.flops / dev.flops, self.bytes / dev.bandwidth)


def layer_cost(s: DecoderShape, q: int, k: int, batch: int) -> Cost:
    flops = batch * (2 * s.weights * q + 4 * s.attn_width * q * k)
    by = s.weights * s.dtype_bytes + batch * s.dtype_bytes * ((k + q) * s.kv_width + 2 * q * s.hidden)
    return Cost(flops, by)


def head_cost(s: DecoderShape, batch: int) -> Cost:
    return Cost(batch * 2 * s.vocab * s.hidden,
                s.vocab * s.hidden * s.dtype_bytes + batch * s.dtype_bytes * (s.hidden + s.vocab))


def prefill_costs(s: DecoderShape, lengths: list[int], batch: int) -> list[Cost]:
    """Per layer (then the LM head) for a prefill where layer ``i`` runs on ``lengths[i]`` tokens."""
    return [layer_cost(s, n, n, batch) for n in lengths] + [head_cost(s, batch)]


def decode_costs(s: DecoderShape, cache_lengths: list[int], batch: int) -> list[Cost]:
    """Per layer (then the LM head) for one decode step over caches of ``cache_lengths[i]``."""
    return [layer_cost(s, 1, n + 1, batch) for n in cache_lengths] + [head_cost(s, batch)]


def total(costs: list[Cost], dev: Device | None = None) -> float:
    """Summed FLOPs (``dev`` None) or summed per-layer roofline seconds."""
    if dev is None:
        return sum(c.flops for c in costs)
    return sum(c.time(dev) for c in costs)


def fastv_lengths(L: int, V: int, kept: int, layer: int, n_layers: int, evict_early: bool) -> tuple[list, list]:
    """``(prefill lengths, cache lengths after prefill)`` per layer for FastV at ``layer``
    keeping ``kept`` of ``V`` visual tokens in an ``L``-token prompt. ``evict_early``: layers
    before the site cache only the kept tokens too (vtp); else they keep the full prompt (the
    research-repo hooks)."""
    short = L - V + kept
    pre = [L] * layer + [short] * (n_layers - layer)
    cache = [short if evict_early or i >= layer else L for i in range(n_layers)]
    return pre, cache
