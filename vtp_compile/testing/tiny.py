"""Tiny LLaVA models and inputs, built offline from configs (random weights, seeded)."""
from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass(frozen=True)
class TinySpec:
    """Shape of a tiny LLaVA. ``hidden`` must be divisible by ``heads``; ``heads`` by ``kv_heads``."""
    hidden: int = 64
    layers: int = 3
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 96
    image_size: int = 32
    patch: int = 8
    vocab: int = 128
    vision_hidden: int = 32
    vision_layers: int = 2
    max_positions: int = 1024
    seed: int = 0
    strategy: str = "default"     # vision_feature_select_strategy ("full": the CLS token is a visual token)

    @property
    def image_token_id(self) -> int:
        return self.vocab - 1

    @property
    def visual_tokens(self) -> int:
        return (self.image_size // self.patch) ** 2 + (self.strategy == "full")


def tiny_llava(spec: TinySpec = TinySpec()):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    torch.manual_seed(spec.seed)
    vc = CLIPVisionConfig(hidden_size=spec.vision_hidden, intermediate_size=2 * spec.vision_hidden,
                          num_hidden_layers=spec.vision_layers, num_attention_heads=2,
                          image_size=spec.image_size,
                          patch_size=spec.patch, projection_dim=spec.vision_hidden)
    tc = LlamaConfig(hidden_size=spec.hidden, intermediate_size=spec.intermediate,
                     num_hidden_layers=spec.layers, num_attention_heads=spec.heads,
                     num_key_value_heads=spec.kv_heads, vocab_size=spec.vocab,
                     max_position_embeddings=spec.max_positions, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    cfg = LlavaConfig(vision_config=vc, text_config=tc, image_token_id=spec.image_token_id,
                      vision_feature_layer=-2, vision_feature_select_strategy=spec.strategy)
    cfg._attn_implementation = "sdpa"
    model = LlavaForConditionalGeneration(cfg).eval()
    # random init gives near-uniform logits; sharpen so greedy decoding has clear winners
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)
    model.generation_config.pad_token_id = 0
    # random weights may pick the image token (which would splice a phantom image position on the
    # next step) or EOS (which ends rows early); generation never emits special tokens
    model.generation_config.suppress_tokens = [0, 1, 2, spec.image_token_id]
    return model


def make_inputs(spec: TinySpec, batch: int = 1, prefix: int = 3, suffix: int = 4,
                images: int = 1, pad: tuple[int, ...] | None = None, seed: int = 0,
                text_only: bool = False, tiles: int | None = None, side: str = "left",
                rows: list[tuple[int, int, int]] | None = None) -> dict:
    """``input_ids`` = [prefix text][<image> x V per image, text between images][suffix], padded.

    ``rows``: one ``(prefix, suffix, images)`` per row (rows may differ in length and number of
    images, 0 = text-only); default: ``batch`` rows of ``(prefix, suffix, images)``
    (``text_only``: 0 images). Rows are padded to the longest on ``side`` ("left" or "right")
    with attention_mask 0, plus ``pad[b]`` extra pads on row ``b``.
    ``tiles``: build each image from patch-sized tiles drawn from that many random prototypes
    (redundant visual tokens, like a mostly uniform background); default: i.i.d. noise.
    ``pixel_values`` holds every image of every row, in row order.
    """
    g = torch.Generator().manual_seed(seed)
    V = spec.visual_tokens
    if rows is None:
        rows = [(prefix, suffix, 0 if text_only else images)] * batch
    pad = tuple(pad) if pad is not None else (0,) * len(rows)
    bodies = []
    for pre, suf, n_img in rows:
        toks = [int(t) for t in torch.randint(3, spec.vocab - 1, (pre,), generator=g)]
        for i in range(n_img):
            if i:
                toks.append(int(torch.randint(3, spec.vocab - 1, (1,), generator=g)))
            toks += [spec.image_token_id] * V
        toks += [int(t) for t in torch.randint(3, spec.vocab - 1, (suf,), generator=g)]
        bodies.append(toks)
    width = max(len(t) + p for t, p in zip(bodies, pad))
    ids, masks = [], []
    for toks in bodies:
        p = width - len(toks)
        if side == "left":
            ids.append([0] * p + toks)
            masks.append([0] * p + [1] * len(toks))
        else:
            ids.append(toks + [0] * p)
            masks.append([1] * len(toks) + [0] * p)
    out = {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(masks)}
    n = sum(r[2] for r in rows)
    if n:
        side_px = spec.image_size // spec.patch
        if tiles:
            protos = torch.randn(tiles, 3, spec.patch, spec.patch, generator=g)
            pick = torch.randint(0, tiles, (n, side_px, side_px), generator=g)
            px = protos[pick]                                   # [n, side, side, 3, p, p]
            out["pixel_values"] = px.permute(0, 3, 1, 4, 2, 5).reshape(
                n, 3, side_px * spec.patch, side_px * spec.patch)
        else:
            out["pixel_values"] = torch.randn(n, 3, spec.image_size, spec.image_size, generator=g)
    return out
