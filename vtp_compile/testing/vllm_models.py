"""Random-weight LLaVA and Gemma 3 checkpoints that vLLM (CPU) can load, for tests and benchmarks.

No weights can be downloaded here, so the models are built from transformers' config classes
with the scene model's word-level tokenizer (:mod:`vtp_compile.scenes.model`) and saved to a
directory that ``vllm.LLM(path)`` and ``vllm serve path`` load. Two facts of vLLM 0.32 shape
them:

- its CPU attention supports head sizes 32, 64, 80, 96, 112, 128, ... only: the shipped scene
  model (head size 40) cannot run there, so these models use head size 32 (or 64);
- transformers 5.19 saves LLaVA's CLIP tower (and Gemma 3's SigLIP tower) as
  ``vision_tower.<x>`` while vLLM's loader expects ``vision_tower.vision_model.<x>`` (as hub
  checkpoints have it): :func:`save` renames.

Importing this module imports no vLLM.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch


@dataclasses.dataclass(frozen=True)
class TinyLlava:
    image_size: int = 112
    patch_size: int = 8            # 112 / 8 = 14 -> 196 visual tokens per image
    vision_hidden: int = 64
    vision_layers: int = 3
    vision_heads: int = 2
    text_hidden: int = 128
    text_layers: int = 2
    text_heads: int = 4            # head size 32: the smallest vLLM's CPU attention runs
    text_mlp: int = 256
    vision_feature_layer: int = -1     # vLLM then builds every vision layer (Nüwa reads them)
    strategy: str = "default"

    @property
    def tokens_per_image(self) -> int:
        return (self.image_size // self.patch_size) ** 2 + (self.strategy == "full")


# LLaVA-1.5's token layout (336 px, 14 px patches: 576 visual tokens) at CPU scale: the
# decoder of benchmarks/prefill.py (hidden 1024, 8 layers, 16 heads of 64, MLP 2816) behind a
# small CLIP tower (hidden 128, 4 layers; the projector reads layer -2, as LLaVA-1.5's does)
LLAVA_576 = TinyLlava(image_size=336, patch_size=14, vision_hidden=128, vision_layers=4,
                      vision_heads=4, text_hidden=1024, text_layers=8, text_heads=16, text_mlp=2816,
                      vision_feature_layer=-2)


def build(spec: TinyLlava = TinyLlava(), seed: int = 0):
    """``(model, processor)``: a random-weight ``LlavaForConditionalGeneration`` in fp32."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    from ..scenes.model import CLIP_MEAN, CLIP_STD, build_tokenizer

    tok = build_tokenizer()
    ip = CLIPImageProcessorPil(
        size={"shortest_edge": spec.image_size},
        crop_size={"height": spec.image_size, "width": spec.image_size},
        do_resize=True, do_center_crop=True, do_rescale=True, do_normalize=True,
        image_mean=CLIP_MEAN, image_std=CLIP_STD, do_convert_rgb=True)
    proc = LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=spec.patch_size,
                          vision_feature_select_strategy=spec.strategy,
                          num_additional_image_tokens=1, image_token="<image>")
    vision, text = _tower_configs(spec, tok)
    cfg = LlavaConfig(
        vision_config=vision, text_config=text, image_token_id=tok.convert_tokens_to_ids("<image>"),
        vision_feature_layer=spec.vision_feature_layer,
        vision_feature_select_strategy=spec.strategy, projector_hidden_act="gelu",
        image_seq_length=spec.tokens_per_image, pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=False)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(cfg).eval()
    gen = model.generation_config
    gen.pad_token_id, gen.bos_token_id, gen.eos_token_id = tok.pad_token_id, tok.bos_token_id, tok.eos_token_id
    return model, proc


def build_moe(spec: TinyLlava = TinyLlava(), seed: int = 0, experts: int = 4):
    """``(model, processor)``: :func:`build`'s LLaVA with a Mixtral text model (``experts``
    experts, 2 per token), which vLLM runs on its Transformers backend's MoE class."""
    from transformers import LlavaForConditionalGeneration, MixtralConfig

    dense, proc = build(spec, seed)
    cfg, text = dense.config, dense.config.text_config
    cfg.text_config = MixtralConfig(
        vocab_size=text.vocab_size, hidden_size=spec.text_hidden, intermediate_size=spec.text_mlp,
        num_hidden_layers=spec.text_layers, num_attention_heads=spec.text_heads,
        num_key_value_heads=spec.text_heads, num_local_experts=experts, num_experts_per_tok=2,
        max_position_embeddings=4096, rms_norm_eps=1e-5, tie_word_embeddings=False,
        pad_token_id=text.pad_token_id, bos_token_id=text.bos_token_id, eos_token_id=text.eos_token_id)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(cfg).eval()
    model.generation_config = dense.generation_config
    return model, proc


def _tower_configs(spec: "TinyLlava", tok):
    """The CLIP vision config and the Llama text config of a tiny LLaVA-kin model."""
    from transformers import CLIPVisionConfig, LlamaConfig
    vision = CLIPVisionConfig(
        hidden_size=spec.vision_hidden, intermediate_size=4 * spec.vision_hidden,
        num_hidden_layers=spec.vision_layers, num_attention_heads=spec.vision_heads,
        image_size=spec.image_size, patch_size=spec.patch_size, num_channels=3,
        hidden_act="gelu", projection_dim=spec.vision_hidden)
    text = LlamaConfig(
        vocab_size=len(tok), hidden_size=spec.text_hidden, intermediate_size=spec.text_mlp,
        num_hidden_layers=spec.text_layers, num_attention_heads=spec.text_heads,
        num_key_value_heads=spec.text_heads, max_position_embeddings=4096, rms_norm_eps=1e-5,
        tie_word_embeddings=False, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id)
    return vision, text


def build_next(spec: TinyLlava = TinyLlava(image_size=56, patch_size=14), seed: int = 0,
               pinpoints=((56, 112), (112, 56), (112, 112))):
    """``(model, processor)``: a random-weight ``LlavaNextForConditionalGeneration`` (anyres:
    56 px tiles of 14 px patches, grids up to 2x2 tiles) in fp32."""
    from transformers import (LlavaNextConfig,
                              LlavaNextForConditionalGeneration, LlavaNextProcessor)
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    from ..scenes.model import CLIP_MEAN, CLIP_STD, build_tokenizer

    tok = build_tokenizer()
    grid = [list(p) for p in pinpoints]
    ip = LlavaNextImageProcessorPil(
        size={"shortest_edge": spec.image_size},
        crop_size={"height": spec.image_size, "width": spec.image_size}, image_grid_pinpoints=grid,
        do_resize=True, do_center_crop=True, do_rescale=True, do_normalize=True, do_pad=True,
        image_mean=CLIP_MEAN, image_std=CLIP_STD, do_convert_rgb=True)
    proc = LlavaNextProcessor(image_processor=ip, tokenizer=tok, patch_size=spec.patch_size,
                              vision_feature_select_strategy=spec.strategy,
                              num_additional_image_tokens=1, image_token="<image>")
    vision, text = _tower_configs(spec, tok)
    cfg = LlavaNextConfig(
        vision_config=vision, text_config=text, image_token_id=tok.convert_tokens_to_ids("<image>"),
        vision_feature_layer=spec.vision_feature_layer, image_grid_pinpoints=grid,
        vision_feature_select_strategy=spec.strategy, projector_hidden_act="gelu",
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        tie_word_embeddings=False)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    model = LlavaNextForConditionalGeneration(cfg).eval()
    gen = model.generation_config
    gen.pad_token_id, gen.bos_token_id, gen.eos_token_id = tok.pad_token_id, tok.bos_token_id, tok.eos_token_id
    return model, proc


def vllm_state_dict(model) -> dict:
    """The model's weights under the names vLLM's LLaVA loader reads."""
    out = {}
    for k, v in model.state_dict().items():
        for old in ("model.vision_tower.", "vision_tower."):
            if k.startswith(old):
                rest = k[len(old):]
                k = "vision_tower." + (rest if rest.startswith("vision_model.") else "vision_model." + rest)
                break
        out[k] = v.detach().contiguous()
    return out


def save(model, processor, path, vllm_names: bool = True) -> Path:
    """Save a checkpoint directory vLLM loads (config, weights, processor and tokenizer). The
    weights get the names vLLM's LLaVA loader reads (:func:`vllm_state_dict`), or, with
    ``vllm_names=False``, transformers' own names (InternVL, Idefics3: vLLM maps those)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.config.architectures = [type(model).__name__]
    model.config.save_pretrained(path)
    model.generation_config.save_pretrained(path)
    processor.save_pretrained(path)
    state = vllm_state_dict(model) if vllm_names else {
        k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    return path


def build_onevision(spec: TinyLlava = TinyLlava(image_size=56, patch_size=14), seed: int = 0,
                    pinpoints=((56, 56), (56, 112), (112, 56), (112, 112))):
    """``(model, processor)``: a random-weight ``LlavaOnevisionForConditionalGeneration`` (anyres
    56 px tiles of 14 px patches, grids up to 2x2 tiles, ``anyres_max_9``; a CLIP tower, its CLS
    token dropped: strategy ``default``) in fp32."""
    from transformers import (LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration,
                              LlavaOnevisionProcessor, LlavaOnevisionVideoProcessor)
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import \
        LlavaOnevisionImageProcessorPil

    from ..scenes.model import CLIP_MEAN, CLIP_STD, build_tokenizer

    tok = build_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<image>", "<video>"]})
    grid = [list(p) for p in pinpoints]
    side = {"height": spec.image_size, "width": spec.image_size}
    ip = LlavaOnevisionImageProcessorPil(size=side, image_grid_pinpoints=grid, do_resize=True,
                                         do_rescale=True, do_normalize=True, do_pad=True,
                                         image_mean=CLIP_MEAN, image_std=CLIP_STD, do_convert_rgb=True)
    vp = LlavaOnevisionVideoProcessor(size=side, image_mean=CLIP_MEAN, image_std=CLIP_STD)
    n_base = (spec.image_size // spec.patch_size) ** 2
    proc = LlavaOnevisionProcessor(image_processor=ip, tokenizer=tok, video_processor=vp,
                                   num_image_tokens=n_base + 1, vision_feature_select_strategy="default",
                                   image_token="<image>", video_token="<video>")
    vision, text = _tower_configs(spec, tok)
    cfg = LlavaOnevisionConfig(
        vision_config=vision, text_config=text, image_token_id=tok.convert_tokens_to_ids("<image>"),
        video_token_id=tok.convert_tokens_to_ids("<video>"), vision_feature_layer=-1,
        vision_feature_select_strategy="default", image_grid_pinpoints=grid,
        vision_aspect_ratio="anyres_max_9", projector_hidden_act="gelu", tie_word_embeddings=False)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    model = LlavaOnevisionForConditionalGeneration(cfg).eval()
    gen = model.generation_config
    gen.pad_token_id, gen.bos_token_id, gen.eos_token_id = tok.pad_token_id, tok.bos_token_id, tok.eos_token_id
    return model, proc


GEMMA3_TOKENS = {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                 "image_token": "<image_soft_token>"}
# vLLM's Gemma 3 processor looks these up in the vocabulary (it merges "\n\n" runs after its
# replacement, as Gemma's tokenizer would have produced them)
GEMMA3_NEWLINES = ("\n", "\n\n", "\n\n\n", "\n\n\n\n")


def gemma3_tokenizer():
    """The scene model's word-level tokenizer with Gemma 3's image markers and soft token
    (``boi_token``, ``eoi_token``, ``image_token`` attributes, as ``Gemma3Processor`` reads them)
    and the newline tokens vLLM's Gemma 3 processor expects."""
    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast

    from ..scenes.model import build_tokenizer

    core = build_tokenizer().backend_tokenizer
    core.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in GEMMA3_TOKENS.values()])
    core.add_tokens([AddedToken(t, normalized=False, special=False) for t in GEMMA3_NEWLINES])
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", unk_token="<unk>", padding_side="left",
                                   extra_special_tokens=dict(GEMMA3_TOKENS))


def build_gemma3(image_size: int = 64, patch_size: int = 4, tokens_per_image: int = 64,
                 sliding_window: int = 24, seed: int = 0):
    """``(model, processor)``: a random-weight ``Gemma3ForConditionalGeneration`` in fp32.

    SigLIP tower (no CLS token) on ``image_size`` px images of ``patch_size`` px patches (64 / 4:
    16 x 16 patches), average-pooled to ``tokens_per_image`` soft tokens (64: 8 x 8, 2 x 2
    patches each); Gemma 3 text model with head size 32, one sliding-window layer and one
    global layer (a window of 24 tokens: shorter than the tests' prompts, so the window is
    exercised, pruned or not). No pan-and-scan. The projector's weight, zero at initialisation,
    is drawn at random."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3Processor
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    tok = gemma3_tokenizer()
    ip = Gemma3ImageProcessorPil(size={"height": image_size, "width": image_size},
                                 image_mean=[0.5] * 3, image_std=[0.5] * 3, do_pan_and_scan=False)
    proc = Gemma3Processor(image_processor=ip, tokenizer=tok, image_seq_length=tokens_per_image)
    ids = dict(pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    rope = {"rope_type": "default"}
    text = dict(vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, head_dim=32, query_pre_attn_scalar=32,
                sliding_window=sliding_window, layer_types=["sliding_attention", "full_attention"],
                max_position_embeddings=4096, tie_word_embeddings=False,
                rope_parameters={"sliding_attention": {**rope, "rope_theta": 10000.0},
                                 "full_attention": {**rope, "rope_theta": 100000.0}}, **ids)
    vision = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                  image_size=image_size, patch_size=patch_size, vision_use_head=False)
    cfg = Gemma3Config(vision_config=vision, text_config=text, mm_tokens_per_image=tokens_per_image,
                       boi_token_index=tok.boi_token_id, eoi_token_index=tok.convert_tokens_to_ids(tok.eoi_token),
                       image_token_index=tok.image_token_id, tie_word_embeddings=False, **ids)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    model = Gemma3ForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(0.0, 0.2)
    gen = model.generation_config
    gen.pad_token_id, gen.bos_token_id, gen.eos_token_id = tok.pad_token_id, tok.bos_token_id, tok.eos_token_id
    return model, proc


def build_idefics3(tile: int = 64, patch_size: int = 4, seed: int = 0, splitting: bool = True):
    """``(model, processor)``: a random-weight ``Idefics3ForConditionalGeneration`` in fp32.

    Tiles of ``tile`` px, ``patch_size`` px patches, pixel shuffle 2: ``(tile / patch / 2)^2``
    image tokens per tile (64 by default). Split (``splitting``, Idefics3's default), an image
    larger than a tile (the 112 px scenes: 2 x 2 tiles and the global one, 339 tokens) has each
    tile's tokens after ``<fake_token_around_image><row_i_col_j>``, rows ending in a newline, the
    global tile last, after ``<fake_token_around_image><global-img>``; unsplit, only the global
    tile."""
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3Processor
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    from ..scenes.model import CLIP_MEAN, CLIP_STD, build_tokenizer

    tok = build_tokenizer()
    rows_cols = [f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6)]
    tok.add_special_tokens({"additional_special_tokens": [
        "<image>", "<fake_token_around_image>", "<global-img>", "<end_of_utterance>", *rows_cols]})
    ip = Idefics3ImageProcessorPil(
        do_resize=True, size={"longest_edge": 2 * tile}, max_image_size={"longest_edge": tile},
        do_image_splitting=splitting, do_rescale=True, do_normalize=True, image_mean=CLIP_MEAN,
        image_std=CLIP_STD, do_convert_rgb=True, do_pad=True)
    n_tokens = (tile // patch_size // 2) ** 2
    proc = Idefics3Processor(image_processor=ip, tokenizer=tok, image_seq_len=n_tokens)
    spec = TinyLlava(image_size=tile, patch_size=patch_size)
    clip, text = _tower_configs(spec, tok)
    vision = dict(model_type="idefics3_vision", hidden_size=clip.hidden_size,
                  intermediate_size=clip.intermediate_size, num_hidden_layers=clip.num_hidden_layers,
                  num_attention_heads=clip.num_attention_heads, image_size=tile, patch_size=patch_size)
    cfg = Idefics3Config(vision_config=vision, text_config=text.to_dict(), scale_factor=2,
                         image_token_id=tok.convert_tokens_to_ids("<image>"),
                         pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration(cfg).eval()
    gen = model.generation_config
    gen.pad_token_id, gen.bos_token_id, gen.eos_token_id = tok.pad_token_id, tok.bos_token_id, tok.eos_token_id
    return model, proc
