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


# ---- inputs (testing/family_inputs.py: one job per file) ------------------------------------------
def make_inputs(name: str, model, rows: list[RowSpec], padding_side: str = "left", seed: int = 0) -> dict:
    """The batch of ``rows`` for family ``name``'s ``model`` (see :mod:`.family_inputs`)."""
    from .family_inputs import make_inputs as build
    return build(name, model, rows, padding_side, seed)


def visual_positions(name: str, model, inputs: dict) -> torch.Tensor:
    """``[B, L]`` bool: the positions the model splices visual features into."""
    from .family_inputs import visual_positions as positions
    return positions(name, model, inputs)


def visual_counts(name: str, model, inputs: dict) -> list[int]:
    """Visual tokens per row."""
    from .family_inputs import visual_counts as counts
    return counts(name, model, inputs)


def frame_ids(name: str, model, inputs: dict, frame_tokens: int | None = None) -> torch.Tensor:
    """``[B, L]`` int64: each visual position's frame from the layout (-1 elsewhere)."""
    from .family_inputs import frame_ids as ids
    return ids(name, model, inputs, frame_tokens)


__all__ = ["FAMILIES", "FamilySpec", "ImageSpec", "RowSpec", "TOKENS", "VIDEO_FAMILIES", "VideoSpec",
           "build_model", "frame_ids", "make_inputs", "visual_counts", "visual_positions"]
