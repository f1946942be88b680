"""A random-weight HF-format InternVL checkpoint that vLLM (CPU) loads, for the plugin's tests.

``InternVLForConditionalGeneration`` (transformers' format; vLLM 0.32 runs it with its
``InternS1ForConditionalGeneration`` class) built from transformers' config classes: an
InternViT tower (CLS token, 56 px tiles of 7 px patches, pixel shuffle 0.5: 16 tokens per
tile), a Qwen2 decoder with head size 32 (vLLM's CPU attention runs no smaller), and the scene
model's word-level tokenizer with InternVL's ``<img>``, ``</img>``, ``<IMG_CONTEXT>`` and
``<video>`` tokens. Dynamic tiling is small (``max_patches=4``, a thumbnail tile when there is
more than one tile), so images of different sizes get different tile counts: 56x56 one tile,
112x56 three, 112x112 five.

Unlike LLaVA (:mod:`.vllm_models`), the weights keep transformers' names: vLLM's InternVL
loader maps them itself (``model.vision_tower.`` and so on). Imports no vLLM.
"""
from __future__ import annotations

import dataclasses

import torch

# InternVL's special tokens, as the transformers tokenizer attributes InternVLProcessor reads
SPECIAL = {"start_image_token": "<img>", "end_image_token": "</img>",
           "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"}
IMAGE_TOKEN = SPECIAL["context_image_token"]    # what a prompt writes for an image


@dataclasses.dataclass(frozen=True)
class TinyInternVL:
    tile: int = 56
    patch: int = 7                 # 8x8 patches per tile; pixel shuffle 0.5 -> 4x4 = 16 tokens
    max_patches: int = 4           # tiles of the grid; +1 thumbnail tile when more than one
    vision_hidden: int = 64
    vision_layers: int = 2
    vision_heads: int = 2
    text_hidden: int = 128
    text_layers: int = 2
    text_heads: int = 4            # head size 32
    text_mlp: int = 256

    @property
    def tokens_per_tile(self) -> int:
        return (self.tile // self.patch) ** 2 // 4


def tokenizer():
    """The scene tokenizer with InternVL's special tokens added (named, as InternVLProcessor
    reads them: ``tokenizer.start_image_token`` and so on; its ``<s>`` in front of every text
    stays: vLLM's and transformers' processors tokenize a prompt the same way)."""
    from transformers import PreTrainedTokenizerFast

    from ..scenes.model import build_tokenizer
    base = build_tokenizer()
    core = base.backend_tokenizer
    core.add_special_tokens(list(SPECIAL.values()))
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token=base.bos_token, eos_token=base.eos_token,
        pad_token=base.pad_token, unk_token=base.unk_token, padding_side="left",
        extra_special_tokens=dict(SPECIAL))


def build(spec: TinyInternVL = TinyInternVL(), seed: int = 0):
    """``(model, processor)``: a random-weight ``InternVLForConditionalGeneration`` in fp32."""
    from transformers import (InternVLConfig, InternVLForConditionalGeneration, InternVLProcessor,
                              InternVLVideoProcessor, Qwen2Config)
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil
    from transformers.models.internvl.configuration_internvl import InternVLVisionConfig

    from ..scenes.model import CLIP_MEAN, CLIP_STD

    tok = tokenizer()
    side = {"height": spec.tile, "width": spec.tile}
    ip = GotOcr2ImageProcessorPil(size=side, crop_to_patches=True, min_patches=1,
                                  max_patches=spec.max_patches, image_mean=CLIP_MEAN,
                                  image_std=CLIP_STD, do_convert_rgb=True)
    vp = InternVLVideoProcessor(size=side, image_mean=CLIP_MEAN, image_std=CLIP_STD)
    proc = InternVLProcessor(image_processor=ip, tokenizer=tok, video_processor=vp,
                             image_seq_length=spec.tokens_per_tile)
    vision = InternVLVisionConfig(
        hidden_size=spec.vision_hidden, intermediate_size=4 * spec.vision_hidden,
        num_hidden_layers=spec.vision_layers, num_attention_heads=spec.vision_heads,
        image_size=[spec.tile, spec.tile], patch_size=[spec.patch, spec.patch],
        layer_scale_init_value=1.0)
    text = Qwen2Config(
        vocab_size=len(tok), hidden_size=spec.text_hidden, intermediate_size=spec.text_mlp,
        num_hidden_layers=spec.text_layers, num_attention_heads=spec.text_heads,
        num_key_value_heads=spec.text_heads, max_position_embeddings=4096, rms_norm_eps=1e-6,
        tie_word_embeddings=False, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id)
    text.architectures = ["Qwen2ForCausalLM"]
    cfg = InternVLConfig(
        vision_config=vision, text_config=text, image_token_id=tok.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=spec.tokens_per_tile, downsample_ratio=0.5, vision_feature_layer=-1,
        vision_feature_select_strategy="default", tie_word_embeddings=False)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    model = InternVLForConditionalGeneration(cfg).eval()
    gen = model.generation_config
    gen.pad_token_id, gen.bos_token_id, gen.eos_token_id = tok.pad_token_id, tok.bos_token_id, tok.eos_token_id
    return model, proc
