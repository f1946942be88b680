"""Tiny random-weight VLMs of many families, and matching inputs, built offline from configs.

No processor or tokenizer file is needed: :func:`make_inputs` lays the placeholder tokens out with
each family's own arithmetic (anyres grids and newline rows, Qwen's merged patch grids, tiles and
their separator tokens, Pixtral's break tokens, ...) and builds every extra input the model's
``forward`` reads.

    >>> model = build_model("qwen2_vl")
    >>> rows = [RowSpec(3, 4, (ImageSpec(64, 96),)), RowSpec(5, 2, ())]      # one image, text only
    >>> inputs = make_inputs("qwen2_vl", model, rows)
    >>> model(**inputs).logits.shape[:2] == inputs["input_ids"].shape
    True
    >>> visual_positions("qwen2_vl", model, inputs).sum()                   # 24 = (64/16)*(96/16)
    tensor(24)

Every family shares one token table (:data:`TOKENS`): vocabulary 256, pad 0, bos 1, eos 2, text
tokens in ``[3, 192)``, special and placeholder tokens in ``[192, 256)``; ``generate`` is told to
never emit the specials. Rows may hold clips too (:class:`VideoSpec`, on the families of
:data:`VIDEO_FAMILIES`), after their images, laid out as each family's processor writes them. A family is one :class:`FamilySpec` row in :data:`FAMILIES`: its config
(as keyword dicts), the model class, and one of seven layouts (how an image becomes placeholder
tokens and pixel tensors).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch

VOCAB = 256
TEXT_LO, TEXT_HI = 3, 192                     # random text tokens are drawn from [TEXT_LO, TEXT_HI)
PAD, BOS, EOS = 0, 1, 2
TOKENS = {                                    # special tokens, one table for every family
    "image": 255, "video": 254, "start": 253, "end": 252, "boi": 251, "eoi": 250,
    "img_break": 249, "img_end": 248, "fake_image": 247, "global_image": 246, "newline": 245,
    "tile_x": 244, "tile_y": 243, "image_start": 242, "image_end": 241, "image_tag": 240,
    "row_col": 200,                           # Idefics3 <row_{i+1}_col_{j+1}> = 200 + 6*i + j
}


@dataclasses.dataclass(frozen=True)
class ImageSpec:
    """One image, ``height`` x ``width`` pixels (``None``: the family's default size).

    What the size means follows what the family's processor would hand the model:
    fixed-size towers (LLaVA, PaliGemma, Gemma 3) ignore it (the processor resizes to the tower's
    size); anyres (LLaVA-NeXT/OneVision) keep it as ``image_sizes`` (the original size);
    Qwen/GLM round it to the merged patch grid (like ``smart_resize``); Pixtral rounds it up to
    the merged patch size; tiled towers (Idefics3, SmolVLM, InternVL, Llama 4) take it as the
    resized canvas and cut ``ceil(h / tile) x ceil(w / tile)`` tiles (+1 global tile if > 1).
    """
    height: int | None = None
    width: int | None = None


@dataclasses.dataclass(frozen=True)
class VideoSpec:
    """One clip of ``frames`` frames, ``height`` x ``width`` pixels (``None``: the family's default
    size), laid out as the family's processor would write it (see :data:`VIDEO_FAMILIES`):

    * Qwen2-VL / Qwen2.5-VL: ``<|vision_start|>`` + one run of ``t * h * w / merge^2`` video
      tokens + ``<|vision_end|>``, ``t = ceil(frames / temporal_patch_size)``
      (``pixel_values_videos``, ``video_grid_thw``; Qwen2.5-VL ``second_per_grid_ts``:
      ``temporal_patch_size / fps`` with ``fps`` :data:`VIDEO_FPS`);
    * Qwen3-VL / Qwen3.5: per temporal patch, the timestamp text (``<0.5 seconds>``: here
      :data:`TIMESTAMP_TOKENS` random text tokens) + ``<|vision_start|>`` + ``h * w / merge^2``
      video tokens + ``<|vision_end|>``;
    * GLM-4V: ``<|begin_of_video|>`` + per temporal patch ``<|begin_of_image|>`` + the frame's
      *image* tokens + ``<|end_of_image|>`` + its timestamp text, then ``<|end_of_video|>``
      (``mm_token_type_ids`` 2 inside the video);
    * LLaVA-OneVision: ``frames * ceil(g/2)^2 + 1`` video tokens (bilinear-pooled frames, one
      newline feature after the clip); LLaVA-NeXT-Video: ``frames * (g/stride)^2`` (average
      pooled, no newline);
    * InternVL: per frame ``Frame{i}: <img>`` + one tile's image tokens + ``</img>``, frames
      joined by a newline, every frame a one-tile image in ``pixel_values``; SmolVLM: an intro
      text, then per frame ``Frame from MM:SS:`` + a one-tile image; labels and intro are text.
    """
    frames: int = 4
    height: int | None = None
    width: int | None = None


@dataclasses.dataclass(frozen=True)
class RowSpec:
    """One prompt: ``prefix`` text tokens, the images, then the videos (one text token between two
    media), ``suffix``."""
    prefix: int = 3
    suffix: int = 4
    images: tuple[ImageSpec, ...] = (ImageSpec(),)
    videos: tuple[VideoSpec, ...] = ()


@dataclasses.dataclass(frozen=True)
class FamilySpec:
    """One family: how to build it and how its inputs are laid out.

    ``config`` holds the composite config's keyword arguments (sub-configs as dicts with their
    ``model_type``); ``text_key``/``vision_key`` name the sub-config dicts so ``layers`` and
    ``layer_pattern`` can be applied; ``layout`` is one of ``_LAYOUTS``.
    """
    model_class: str
    config_class: str
    config: dict
    layout: str
    default_size: tuple[int, int]
    layers: int = 3
    layer_pattern: tuple[str, ...] | None = None   # repeated to ``layers`` -> text_config.layer_types
    wrap: tuple[str, str] | None = None            # TOKENS names around each image's tokens
    token_type_ids: str | None = None              # "image" (1 on image tokens) or "zeros"
    text_key: str = "text_config"
    vision_key: str = "vision_config"
    randomize: tuple[str, ...] = ()                # zero-initialised parameters to draw at random
    fixups: tuple[str, ...] = ()                   # names in _FIXUPS: work-arounds for transformers bugs
    notes: str = ""


def _llama(**kw):
    return {"model_type": "llama", **_TEXT, **kw}


_TEXT = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
             head_dim=16, vocab_size=VOCAB, max_position_embeddings=4096,
             pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS, tie_word_embeddings=False)
_CLIP = dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
             num_attention_heads=2, image_size=32, patch_size=8, projection_dim=32)
_SIGLIP = dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
               num_attention_heads=2, image_size=32, patch_size=8)
_QWEN_VISION = dict(depth=2, hidden_size=32, out_hidden_size=64, intermediate_size=64, num_heads=2,
                    patch_size=8, spatial_merge_size=2, temporal_patch_size=2)
_QWEN_TOKENS = dict(image_token_id=TOKENS["image"], video_token_id=TOKENS["video"],
                    vision_start_token_id=TOKENS["start"], vision_end_token_id=TOKENS["end"])
_ANYRES_PINPOINTS = [[32, 64], [64, 32], [64, 64]]

# families whose transformers model takes video (VideoSpec in a RowSpec), and how: "videos"
# (pixel_values_videos, the model's own video path: a second splice after the images') or
# "frames" (the processor passes frames as images with text labels: one splice)
VIDEO_FAMILIES: dict[str, str] = {
    "qwen2_vl": "videos", "qwen2_5_vl": "videos", "qwen3_vl": "videos", "qwen3_5": "videos",
    "glm4v": "videos", "llava_onevision": "videos", "llava_next_video": "videos",
    "internvl": "frames", "smolvlm": "frames",
}
TIMESTAMP_TOKENS = 3      # text tokens of one timestamp ("<0.5 seconds>", GLM-4V's "1", SmolVLM's label)
VIDEO_FPS = 4.0           # Qwen2.5-VL: second_per_grid_ts = temporal_patch_size / fps

FAMILIES: dict[str, FamilySpec] = {
    "llava": FamilySpec(
        "LlavaForConditionalGeneration", "LlavaConfig",
        dict(vision_config=_CLIP, text_config=_llama(), vision_feature_layer=-2,
             vision_feature_select_strategy="default"),
        layout="fixed", default_size=(32, 32), notes="CLIP 32px/8 -> 16 tokens (CLS dropped)"),
    "llava_next": FamilySpec(
        "LlavaNextForConditionalGeneration", "LlavaNextConfig",
        dict(vision_config=_CLIP, text_config=_llama(), vision_feature_layer=-2,
             vision_feature_select_strategy="default", image_grid_pinpoints=_ANYRES_PINPOINTS),
        layout="anyres", default_size=(32, 32),
        notes="anyres: base 16 + unpadded grid + one newline per grid row; 32x32 -> 36, 32x64 -> 52"),
    "llava_next_video": FamilySpec(
        "LlavaNextVideoForConditionalGeneration", "LlavaNextVideoConfig",
        dict(vision_config=_CLIP, text_config=_llama(), vision_feature_layer=-2,
             vision_feature_select_strategy="default", image_grid_pinpoints=_ANYRES_PINPOINTS,
             image_token_index=TOKENS["image"], video_token_index=TOKENS["video"]),
        layout="anyres", default_size=(32, 32),
        notes="LLaVA-NeXT's images; video frames average-pooled (stride 2): 4 tokens per frame, no newline"),
    "llava_onevision": FamilySpec(
        "LlavaOnevisionForConditionalGeneration", "LlavaOnevisionConfig",
        dict(vision_config=_SIGLIP, text_config={"model_type": "qwen2", **_TEXT}, vision_feature_layer=-1,
             vision_feature_select_strategy="full", image_grid_pinpoints=[[32, 32]] + _ANYRES_PINPOINTS,
             vision_aspect_ratio="anyres_max_9", video_token_id=TOKENS["video"]),
        layout="anyres", default_size=(32, 32),
        notes="anyres for single-image rows; rows with several images: 16 + 1 newline per image"),
    "qwen2_vl": FamilySpec(
        "Qwen2VLForConditionalGeneration", "Qwen2VLConfig",
        dict(vision_config=dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=8,
                                spatial_merge_size=2, temporal_patch_size=2),
             text_config=dict(_TEXT, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                      "mrope_section": [2, 3, 3]}),
             **_QWEN_TOKENS),
        layout="qwen", default_size=(64, 64), wrap=("start", "end"),
        notes="(h/16)*(w/16) tokens; positions [3|4, B, L] from mm_token_type_ids + image_grid_thw"),
    "qwen2_5_vl": FamilySpec(
        "Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLConfig",
        dict(vision_config=dict(_QWEN_VISION, window_size=32, fullatt_block_indexes=[1]),
             text_config=dict(_TEXT, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                      "mrope_section": [2, 3, 3]}),
             **_QWEN_TOKENS),
        layout="qwen", default_size=(64, 64), wrap=("start", "end"),
        notes="window attention in the tower (window 2x2 merged patches), layer 1 full"),
    "qwen3_vl": FamilySpec(
        "Qwen3VLForConditionalGeneration", "Qwen3VLConfig",
        dict(vision_config=dict(_QWEN_VISION, num_position_embeddings=64, deepstack_visual_indexes=[0, 1]),
             text_config=dict(_TEXT, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                      "mrope_section": [4, 2, 2], "mrope_interleaved": True}),
             **_QWEN_TOKENS),
        layout="qwen", default_size=(64, 64), wrap=("start", "end"),
        notes="deepstack: tower layers 0 and 1 are added again at visual positions of decoder layers 0, 1"),
    "qwen3_5": FamilySpec(
        "Qwen3_5ForConditionalGeneration", "Qwen3_5Config",
        dict(vision_config=dict(_QWEN_VISION, num_position_embeddings=64),
             text_config=dict(_TEXT, linear_conv_kernel_dim=4, linear_key_head_dim=16, linear_value_head_dim=16,
                              linear_num_key_heads=2, linear_num_value_heads=4,
                              rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                               "partial_rotary_factor": 0.5, "mrope_section": [2, 1, 1],
                                               "mrope_interleaved": True}),
             **_QWEN_TOKENS),
        layout="qwen", default_size=(64, 64), wrap=("start", "end"), layers=4,
        layer_pattern=("linear_attention", "full_attention"),
        notes="Gated DeltaNet (conv + recurrent state) layers alternate with full-attention layers"),
    "glm4v": FamilySpec(
        "Glm4vForConditionalGeneration", "Glm4vConfig",
        dict(vision_config=dict(_QWEN_VISION, image_size=32),
             text_config={k: v for k, v in _TEXT.items() if k != "head_dim"}
             | {"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5,
                                    "mrope_section": [2, 1, 1]}},
             image_token_id=TOKENS["image"], video_token_id=TOKENS["video"], image_start_token_id=TOKENS["boi"],
             image_end_token_id=TOKENS["eoi"], video_start_token_id=TOKENS["start"],
             video_end_token_id=TOKENS["end"]),
        layout="qwen", default_size=(64, 64), wrap=("boi", "eoi"),
        notes="Qwen2-VL layout with <|begin_of_image|>/<|end_of_image|>; partial rotary"),
    "gemma3": FamilySpec(
        "Gemma3ForConditionalGeneration", "Gemma3Config",
        dict(vision_config=dict(_SIGLIP, patch_size=4, vision_use_head=False),
             text_config=dict(_TEXT, model_type="gemma3_text", sliding_window=8, query_pre_attn_scalar=16,
                              rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                                               "full_attention": {"rope_type": "default", "rope_theta": 100000.0}}),
             mm_tokens_per_image=16, boi_token_index=TOKENS["boi"], eoi_token_index=TOKENS["eoi"],
             tie_word_embeddings=False),
        layout="fixed", default_size=(32, 32), wrap=("boi", "eoi"), token_type_ids="image", layers=4,
        layer_pattern=("sliding_attention", "full_attention"), randomize=("mm_input_projection_weight",),
        notes="64 patches avg-pooled to 16; sliding window 8; image block bidirectional (token_type_ids)"),
    "paligemma": FamilySpec(
        "PaliGemmaForConditionalGeneration", "PaliGemmaConfig",
        dict(vision_config=dict(_SIGLIP, projection_dim=64),
             text_config=dict(_TEXT, model_type="gemma"), projection_dim=64, hidden_size=64, vocab_size=VOCAB,
             tie_word_embeddings=False),
        layout="fixed", default_size=(32, 32), token_type_ids="zeros",
        notes="the processor puts images first (use prefix=0); token_type_ids 0 = bidirectional prefix"),
    "idefics3": FamilySpec(
        "Idefics3ForConditionalGeneration", "Idefics3Config",
        dict(vision_config=dict(model_type="idefics3_vision", hidden_size=32, intermediate_size=64,
                                num_hidden_layers=2, num_attention_heads=2, image_size=48, patch_size=8),
             text_config=_llama(), scale_factor=2, pad_token_id=PAD),
        layout="idefics", default_size=(48, 48),
        notes="tile 48px/8 = 36 patches, pixel shuffle 2 -> 9 tokens per tile; >1 tile adds a global tile"),
    "smolvlm": FamilySpec(
        "SmolVLMForConditionalGeneration", "SmolVLMConfig",
        dict(vision_config=dict(model_type="smolvlm_vision", hidden_size=32, intermediate_size=64,
                                num_hidden_layers=2, num_attention_heads=2, image_size=48, patch_size=8),
             text_config=_llama(), scale_factor=2, pad_token_id=PAD),
        layout="idefics", default_size=(48, 48), notes="same layout as Idefics3"),
    "internvl": FamilySpec(
        "InternVLForConditionalGeneration", "InternVLConfig",
        dict(vision_config=dict(model_type="internvl_vision", hidden_size=32, intermediate_size=64,
                                num_hidden_layers=2, num_attention_heads=2, image_size=[32, 32], patch_size=[4, 4]),
             text_config={"model_type": "qwen2", **_TEXT}, image_seq_length=16, downsample_ratio=0.5,
             vision_feature_layer=-1, vision_feature_select_strategy="default", tie_word_embeddings=False),
        layout="tiles", default_size=(32, 32), wrap=("start", "end"),
        notes="tile 32px/4 = 64 patches, pixel shuffle 0.5 -> 16 tokens per tile; <img> ... </img>"),
    "mistral3": FamilySpec(
        "Mistral3ForConditionalGeneration", "Mistral3Config",
        dict(vision_config=dict(model_type="pixtral", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=2, head_dim=16, image_size=64, patch_size=4),
             # MistralConfig's own default window is 4096; Mistral 3.x checkpoints have none
             text_config=dict(_TEXT, model_type="mistral", sliding_window=None), spatial_merge_size=2,
             vision_feature_layer=-1, tie_word_embeddings=False),
        layout="pixtral", default_size=(32, 32),
        notes="(h/8)*(w/8) tokens, [IMG_BREAK] after each row of merged patches, [IMG_END] last"),
    "llama4": FamilySpec(
        "Llama4ForConditionalGeneration", "Llama4Config",
        dict(vision_config=dict(hidden_size=32, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                                image_size=32, patch_size=4, pixel_shuffle_ratio=0.5, projector_input_dim=32,
                                projector_output_dim=32, vision_output_dim=32),
             text_config=dict(_TEXT, intermediate_size=64, intermediate_size_mlp=128, num_local_experts=4,
                              num_experts_per_tok=1, interleave_moe_layer_step=2, no_rope_layer_interval=2,
                              attention_chunk_size=16),
             boi_token_index=TOKENS["image_start"], eoi_token_index=TOKENS["image_end"]),
        layout="tiles", default_size=(32, 32), layers=4, fixups=("llama4_output",),
        notes="MoE every 2nd layer, chunked attention (chunk 16) in RoPE layers, NoPE every 2nd layer; "
              "tile 32px/4 -> 16 tokens per tile"),
}


# ----------------------------------------------------------------------------------------- build

def _llama4_output(model):
    """transformers 5.24: ``Llama4ForConditionalGeneration.forward`` reads ``outputs.image_outputs``
    from its language model's ``MoeCausalLMOutputWithPast``, which has no such field, so every
    ``return_dict`` call raises ``AttributeError``. Give this instance's language-model output the
    attribute (``None``; the image outputs are not needed here). Instance-local, no class is patched."""
    def hook(module, args, kwargs, output):
        if not hasattr(output, "image_outputs"):
            setattr(output, "image_outputs", None)
        return output
    model.language_model.register_forward_hook(hook, with_kwargs=True)


_FIXUPS = {"llama4_output": _llama4_output}


def build_model(name: str, seed: int = 0, layers: int | None = None, **overrides):
    """A tiny ``eval()`` model of family ``name`` with SDPA attention and seeded random weights.

    ``layers``: decoder layers (default: the family's, 3 or 4); families with a layer pattern
    (Gemma 3 sliding/full, Qwen3.5 linear/full) repeat it to that depth. ``overrides``: a key of
    the composite config's table entry replaces it, ``text_config=`` / ``vision_config=`` dicts are
    merged into those sub-configs, any other key goes to the text config (``sliding_window=12``).
    The LM head is multiplied by 8 so greedy decoding has clear winners, and ``generate`` never
    emits pad/bos/eos or any special token (they would splice phantom images or end rows early).
    """
    import transformers

    spec = FAMILIES[name]
    cfg_kw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in spec.config.items()}
    text = cfg_kw[spec.text_key]
    for key, value in overrides.items():
        if key in (spec.text_key, spec.vision_key):
            cfg_kw[key].update(value)
        elif key in cfg_kw and not isinstance(cfg_kw[key], dict):
            cfg_kw[key] = value
        else:
            text[key] = value
    n = layers if layers is not None else text.get("num_hidden_layers", spec.layers)
    text["num_hidden_layers"] = n
    if spec.layer_pattern and "layer_types" not in overrides:
        text["layer_types"] = [spec.layer_pattern[i % len(spec.layer_pattern)] for i in range(n)]
    cfg = getattr(transformers, spec.config_class)(**cfg_kw)
    cfg.image_token_id = TOKENS["image"]
    text_cfg = cfg.get_text_config()
    text_cfg.pad_token_id, text_cfg.bos_token_id, text_cfg.eos_token_id = PAD, BOS, EOS
    cfg._attn_implementation = "sdpa"

    torch.manual_seed(seed)
    model = getattr(transformers, spec.model_class)(cfg).eval()
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if spec.randomize and pname.endswith(spec.randomize):
                p.normal_(0.0, 0.02)                                 # e.g. Gemma 3's projector starts at 0
        model.get_output_embeddings().weight.mul_(8.0)
    for fix in spec.fixups:
        _FIXUPS[fix](model)
    gc = model.generation_config
    gc.pad_token_id, gc.bos_token_id, gc.eos_token_id = PAD, BOS, EOS
    gc.suppress_tokens = [PAD, BOS, EOS] + list(range(TEXT_HI, VOCAB))
    return model


# ------------------------------------------------------------------------------------- layouts
# A layout turns one image into (token ids, pixel payload) and a batch's payloads into model inputs.

def _tokens(image_count: int, wrap=None) -> list[int]:
    body = [TOKENS["image"]] * image_count
    return [TOKENS[wrap[0]], *body, TOKENS[wrap[1]]] if wrap else body


def _fixed_image(spec, cfg, g):
    """Fixed-size tower: the processor resizes every image to the tower's size."""
    side = cfg.vision_config.image_size
    count = (side // cfg.vision_config.patch_size) ** 2
    if getattr(cfg, "mm_tokens_per_image", None):                    # Gemma 3 pools to this count
        count = cfg.mm_tokens_per_image
    return _tokens(count, spec.wrap), torch.randn(3, side, side, generator=g)


def _anyres_count(cfg, h, w, multi: bool) -> tuple[int, int]:
    """(placeholder tokens, crops incl. the base crop) of one anyres image, as the model computes them."""
    from transformers.image_processing_utils import select_best_resolution

    side = cfg.vision_config.image_size
    grid = side // cfg.vision_config.patch_size                      # feature rows/cols of one crop
    base = grid * grid                                               # CLS is dropped ("default") or absent
    aspect = getattr(cfg, "vision_aspect_ratio", None)               # OneVision only
    if multi and aspect is not None:                                 # OneVision, several images per row:
        return base + 1, 1                                           # base crop + one newline
    best_h, best_w = select_best_resolution([h, w], cfg.image_grid_pinpoints)
    cur_h, cur_w = grid * (best_h // side), grid * (best_w // side)
    if w / h > cur_w / cur_h:                                        # unpad_image
        cur_h -= 2 * ((cur_h - int(round(h * (cur_w / w), 7))) // 2)
    else:
        cur_w -= 2 * ((cur_w - int(round(w * (cur_h / h), 7))) // 2)
    feats, rows = cur_h * cur_w, cur_h
    if aspect is not None:                                           # OneVision interpolates big grids down
        ratio = math.sqrt(cur_h * cur_w / (int(aspect.strip("anyres_max_")) * grid ** 2))
        if ratio > 1.1:
            feats, rows = int(cur_h // ratio) * int(cur_w // ratio), int(cur_h // ratio)
    return base + feats + rows, (best_h // side) * (best_w // side) + 1


def _qwen_grid(cfg, h, w) -> tuple[int, int]:
    """Patch grid (rows, cols) after rounding to the merged patch size, like ``smart_resize``."""
    unit = cfg.vision_config.patch_size * cfg.vision_config.spatial_merge_size
    hh, ww = max(unit, round(h / unit) * unit), max(unit, round(w / unit) * unit)
    p = cfg.vision_config.patch_size
    return hh // p, ww // p


def _tile_grid(tile: int, h: int, w: int) -> int:
    """Tiles of a canvas: ``ceil`` grid, plus one global tile when there is more than one."""
    n = math.ceil(h / tile) * math.ceil(w / tile)
    return n + 1 if n > 1 else 1


def _image_tokens_and_pixels(name, spec, cfg, img: ImageSpec, multi: bool, g):
    """Token ids of one image and its pixel payload (layout-specific)."""
    h, w = img.height or spec.default_size[0], img.width or spec.default_size[1]
    lay = spec.layout
    if lay == "fixed":
        return _fixed_image(spec, cfg, g)
    if lay == "anyres":
        count, crops = _anyres_count(cfg, h, w, multi)
        side = cfg.vision_config.image_size
        return _tokens(count), (torch.randn(crops, 3, side, side, generator=g), (h, w))
    if lay == "qwen":
        gh, gw = _qwen_grid(cfg, h, w)
        vc = cfg.vision_config
        count = gh * gw // vc.spatial_merge_size ** 2
        flat = torch.randn(gh * gw, vc.in_channels * vc.temporal_patch_size * vc.patch_size ** 2, generator=g)
        return _tokens(count, spec.wrap), (flat, (1, gh, gw))
    if lay == "idefics":
        tile = cfg.vision_config.image_size
        per_tile = (tile // cfg.vision_config.patch_size) ** 2 // cfg.scale_factor ** 2
        rows, cols = math.ceil(h / tile), math.ceil(w / tile)
        img_run = [TOKENS["image"]] * per_tile
        glob = [TOKENS["fake_image"], TOKENS["global_image"], *img_run, TOKENS["fake_image"]]
        if rows * cols == 1:
            toks, n_tiles = glob, 1
        else:
            toks = []
            for i in range(rows):
                for j in range(cols):
                    toks += [TOKENS["fake_image"], TOKENS["row_col"] + 6 * i + j, *img_run]
                toks.append(TOKENS["newline"])
            toks = toks + [TOKENS["newline"]] + glob
            n_tiles = rows * cols + 1
        return toks, torch.randn(n_tiles, 3, tile, tile, generator=g)
    if lay == "tiles":
        vc = cfg.vision_config
        tile = vc.image_size[0] if isinstance(vc.image_size, (list, tuple)) else vc.image_size
        patch = vc.patch_size[0] if isinstance(vc.patch_size, (list, tuple)) else vc.patch_size
        n_tiles = _tile_grid(tile, h, w)
        if name == "internvl":
            per_tile = int((tile // patch) ** 2 * cfg.downsample_ratio ** 2)
            return _tokens(per_tile * n_tiles, spec.wrap), torch.randn(n_tiles, 3, tile, tile, generator=g)
        per_tile = int((tile // patch) ** 2 * vc.pixel_shuffle_ratio ** 2)   # Llama 4
        rows, cols = math.ceil(h / tile), math.ceil(w / tile)
        toks = [TOKENS["image_start"]]
        if rows * cols > 1:
            for i in range(rows):
                for j in range(cols):
                    toks += [TOKENS["image"]] * per_tile
                    if j < cols - 1:
                        toks.append(TOKENS["tile_x"])
                toks.append(TOKENS["tile_y"])
        toks += [TOKENS["image_tag"], *[TOKENS["image"]] * per_tile, TOKENS["image_end"]]
        return toks, torch.randn(n_tiles, 3, tile, tile, generator=g)
    if lay == "pixtral":
        unit = cfg.vision_config.patch_size * cfg.spatial_merge_size
        cap = cfg.vision_config.image_size
        hh, ww = (min(cap, max(unit, math.ceil(x / unit) * unit)) for x in (h, w))
        toks = []
        for _ in range(hh // unit):
            toks += [TOKENS["image"]] * (ww // unit) + [TOKENS["img_break"]]
        toks[-1] = TOKENS["img_end"]
        return toks, (torch.randn(3, hh, ww, generator=g), (hh, ww))
    raise ValueError(f"unknown layout {lay!r}")


def _video_tokens_and_pixels(name, spec, cfg, vid: VideoSpec, g, text):
    """Token ids of one clip, their ``mm_token_type_ids`` (2 on the clip's visual tokens), and its
    payload: ``("video", ...)`` for the model's video inputs, ``("frames", tiles)`` for frames
    passed as images. ``text(n)``: ``n`` random text tokens (timestamps, frame labels)."""
    if name not in VIDEO_FAMILIES:
        raise ValueError(f"{name}: its transformers model takes no video (VIDEO_FAMILIES)")
    h, w = vid.height or spec.default_size[0], vid.width or spec.default_size[1]
    V = TOKENS["video"]
    if spec.layout == "qwen":
        gh, gw = _qwen_grid(cfg, h, w)
        vc = cfg.vision_config
        t = math.ceil(vid.frames / vc.temporal_patch_size)
        per_frame = gh * gw // vc.spatial_merge_size ** 2
        flat = torch.randn(t * gh * gw, vc.in_channels * vc.temporal_patch_size * vc.patch_size ** 2, generator=g)
        payload = ("video", (flat, (t, gh, gw)))
        if name in ("qwen2_vl", "qwen2_5_vl"):                       # one run for the whole clip
            toks = [TOKENS["start"], *[V] * (t * per_frame), TOKENS["end"]]
            return toks, [2 if x == V else 0 for x in toks], payload
        toks = []
        if name == "glm4v":                                          # frames of image tokens
            toks.append(TOKENS["start"])
            for _ in range(t):
                toks += [TOKENS["boi"], *[TOKENS["image"]] * per_frame, TOKENS["eoi"], *text(TIMESTAMP_TOKENS)]
            toks.append(TOKENS["end"])
            return toks, [2 if x == TOKENS["image"] else 0 for x in toks], payload
        for _ in range(t):                                           # Qwen3-VL, Qwen3.5
            toks += [*text(TIMESTAMP_TOKENS), TOKENS["start"], *[V] * per_frame, TOKENS["end"]]
        return toks, [2 if x == V else 0 for x in toks], payload
    if spec.layout == "anyres":
        side = cfg.vision_config.image_size
        grid = side // cfg.vision_config.patch_size
        if name == "llava_onevision":                                # bilinear to ceil(g/2), + newline
            count = vid.frames * math.ceil(grid / 2) ** 2 + 1
        else:                                                        # LLaVA-NeXT-Video: avg pool
            count = vid.frames * (grid // cfg.spatial_pool_stride) ** 2
        return [V] * count, [0] * count, ("video", torch.randn(vid.frames, 3, side, side, generator=g))
    if name == "internvl":
        vc = cfg.vision_config
        tile = vc.image_size[0] if isinstance(vc.image_size, (list, tuple)) else vc.image_size
        patch = vc.patch_size[0] if isinstance(vc.patch_size, (list, tuple)) else vc.patch_size
        per_tile = int((tile // patch) ** 2 * cfg.downsample_ratio ** 2)
        toks = []
        for i in range(vid.frames):
            toks += ([*text(1)] if i else []) + [*text(TIMESTAMP_TOKENS - 1)] + _tokens(per_tile, spec.wrap)
        return toks, [0] * len(toks), ("frames", torch.randn(vid.frames, 3, tile, tile, generator=g))
    if name == "smolvlm":
        tile = cfg.vision_config.image_size
        per_tile = (tile // cfg.vision_config.patch_size) ** 2 // cfg.scale_factor ** 2
        toks = text(4)                                               # "You are provided ... frames"
        for _ in range(vid.frames):
            toks += [*text(TIMESTAMP_TOKENS), TOKENS["fake_image"], TOKENS["global_image"],
                     *[TOKENS["image"]] * per_tile, TOKENS["fake_image"]]
        return toks, [0] * len(toks), ("frames", torch.randn(vid.frames, 3, tile, tile, generator=g))
    raise ValueError(f"no video layout for {name}")


def _video_inputs(name, spec, cfg, clips: list[Any]) -> dict:
    """The model's video inputs from the clips' payloads, batch order."""
    if not clips:
        return {}
    if spec.layout == "qwen":
        out = {"pixel_values_videos": torch.cat([p for p, _ in clips]),
               "video_grid_thw": torch.tensor([list(t) for _, t in clips])}
        if name == "qwen2_5_vl":
            tps = cfg.vision_config.temporal_patch_size
            out["second_per_grid_ts"] = torch.tensor([tps / VIDEO_FPS] * len(clips))
        return out
    frames = {c.shape[0] for c in clips}
    if len(frames) != 1:
        raise ValueError(f"{name}: pixel_values_videos is one tensor; every clip needs the same frame count")
    return {"pixel_values_videos": torch.stack(clips)}


def _pixel_inputs(spec, cfg, rows_payloads: list[list[Any]]) -> dict:
    """Batch the per-image payloads of every row into the model's vision inputs."""
    flat = [p for row in rows_payloads for p in row]
    if not flat:
        return {}
    lay = spec.layout
    if lay in ("fixed", "tiles"):
        return {"pixel_values": torch.cat([p if p.dim() == 4 else p[None] for p in flat])}
    if lay == "anyres":
        most = max(p[0].shape[0] for p in flat)
        px = torch.zeros(len(flat), most, *flat[0][0].shape[1:])
        for i, (crops, _) in enumerate(flat):
            px[i, : crops.shape[0]] = crops
        out = {"pixel_values": px, "image_sizes": torch.tensor([list(s) for _, s in flat])}
        if hasattr(cfg, "vision_aspect_ratio"):                     # OneVision
            out["batch_num_images"] = torch.tensor([len(r) for r in rows_payloads])
        return out
    if lay == "qwen":
        return {"pixel_values": torch.cat([p for p, _ in flat]),
                "image_grid_thw": torch.tensor([list(t) for _, t in flat])}
    if lay == "idefics":
        tiles = [torch.cat(row) if row else None for row in rows_payloads]
        most = max(t.shape[0] for t in tiles if t is not None)
        side = flat[0].shape[-1]
        px = torch.zeros(len(tiles), most, 3, side, side)
        mask = torch.zeros(len(tiles), most, side, side, dtype=torch.bool)
        for b, t in enumerate(tiles):
            if t is not None:
                px[b, : t.shape[0]], mask[b, : t.shape[0]] = t, True
        return {"pixel_values": px, "pixel_attention_mask": mask}
    if lay == "pixtral":
        mh, mw = max(p.shape[1] for p, _ in flat), max(p.shape[2] for p, _ in flat)
        px = torch.zeros(len(flat), 3, mh, mw)
        for i, (p, _) in enumerate(flat):
            px[i, :, : p.shape[1], : p.shape[2]] = p
        return {"pixel_values": px, "image_sizes": torch.tensor([list(s) for _, s in flat])}
    raise ValueError(f"unknown layout {lay!r}")


def make_inputs(name: str, model, rows: list[RowSpec], padding_side: str = "left", seed: int = 0) -> dict:
    """Inputs for ``model(**inputs)`` and ``model.generate(**inputs)``: one row per ``RowSpec``.

    Rows are padded to the longest with ``pad_token_id`` (attention_mask 0) on ``padding_side``.
    Besides ``input_ids``/``attention_mask``: the family's pixel inputs (only if some row has an
    image), its video inputs (only if some row has a clip: ``pixel_values_videos`` and, Qwen/GLM,
    ``video_grid_thw``, Qwen2.5-VL ``second_per_grid_ts``; InternVL's and SmolVLM's frames join
    ``pixel_values``), ``mm_token_type_ids`` (Qwen/GLM: 1 on image tokens, 2 on a clip's visual
    tokens) and ``token_type_ids`` (Gemma 3: 1 on image tokens; PaliGemma: zeros, i.e. the whole
    prompt is the bidirectional prefix).
    """
    spec, cfg = FAMILIES[name], model.config
    g = torch.Generator().manual_seed(seed)

    def text(n):
        return torch.randint(TEXT_LO, TEXT_HI, (n,), generator=g).tolist()

    seqs, types, payloads, clips = [], [], [], []
    for row in rows:
        toks, pay = text(row.prefix), []
        typ = [0] * len(toks)
        for i, img in enumerate(row.images):
            if i:
                toks += text(1)
                typ.append(0)
            t, p = _image_tokens_and_pixels(name, spec, cfg, img, len(row.images) > 1, g)
            toks += t
            typ += [1 if x == TOKENS["image"] else 0 for x in t]
            pay.append(p)
        for i, vid in enumerate(row.videos):
            if i or row.images:
                toks += text(1)
                typ.append(0)
            t, ty, (kind, p) = _video_tokens_and_pixels(name, spec, cfg, vid, g, text)
            toks += t
            typ += ty
            (pay if kind == "frames" else clips).append(p)
        tail = text(row.suffix)
        seqs.append(toks + tail)
        types.append(typ + [0] * len(tail))
        payloads.append(pay)
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), PAD, dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    mm = torch.zeros(len(seqs), width, dtype=torch.long)
    for b, s in enumerate(seqs):
        sl = slice(width - len(s), width) if padding_side == "left" else slice(0, len(s))
        ids[b, sl], mask[b, sl] = torch.tensor(s, dtype=torch.long), 1
        mm[b, sl] = torch.tensor(types[b], dtype=torch.long)
    out = {"input_ids": ids, "attention_mask": mask, **_pixel_inputs(spec, cfg, payloads),
           **_video_inputs(name, spec, cfg, clips)}
    is_image = (ids == TOKENS["image"]).long()
    if spec.layout == "qwen":
        out["mm_token_type_ids"] = mm
    if spec.token_type_ids == "image":
        out["token_type_ids"] = is_image
    elif spec.token_type_ids == "zeros":
        out["token_type_ids"] = torch.zeros_like(ids)
    return out


def visual_positions(name: str, model, inputs: dict) -> torch.Tensor:
    """Bool ``[B, L]``: the positions the model splices visual features into (its placeholder
    mask): image tokens and, where the family has one, video tokens (never timestamps, frame
    labels or the vision start/end tokens, which are text)."""
    del name
    ids = inputs["input_ids"]
    out = ids == model.config.image_token_id
    video = getattr(model.config, "video_token_id", None)
    if video is not None:
        out = out | (ids == video)
    return out


def visual_counts(name: str, model, inputs: dict) -> list[int]:
    """Visual tokens per row (rows differ with image counts and sizes)."""
    return visual_positions(name, model, inputs).sum(-1).tolist()


__all__ = ["FAMILIES", "FamilySpec", "ImageSpec", "RowSpec", "TOKENS", "VIDEO_FAMILIES", "VideoSpec",
           "build_model", "make_inputs", "visual_counts", "visual_positions"]
