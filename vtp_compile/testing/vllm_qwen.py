"""Random-weight Qwen2-VL / Qwen2.5-VL / Qwen3-VL / Qwen3-VL-MoE checkpoints that vLLM (CPU) loads, for the
plugin's tests.

Like :mod:`.vllm_models` (LLaVA): built from transformers' config classes with the scene model's
word-level vocabulary plus Qwen's four vision tokens, saved to a directory that ``vllm.LLM(path)``
loads. Head sizes are 32 (vLLM's CPU attention runs 32, 64, 80, ...), 8 px patches merged 2x2,
so an image of ``h x w`` pixels (after the processor's rounding to multiples of 16) gives
``(h / 16) * (w / 16)`` visual tokens; the processor's ``max_pixels`` caps an image at 112 x 112
(49 tokens); Qwen3-VL's video processor caps a clip at 8 such frames' pixels. Needs torchvision
(Qwen's image and video processors): in the vLLM CPU environment through
``requirements/torchvision_cpu_shim.py``. Importing this module imports no vLLM.
"""
from __future__ import annotations

import dataclasses

import torch

# token text -> the Qwen config attribute holding its id
QWEN_TOKENS = {"<|vision_start|>": "vision_start_token_id", "<|vision_end|>": "vision_end_token_id",
               "<|image_pad|>": "image_token_id", "<|video_pad|>": "video_token_id"}
IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
VIDEO = "<|vision_start|><|video_pad|><|vision_end|>"


@dataclasses.dataclass(frozen=True)
class TinyQwen:
    family: str = "qwen2_5_vl"     # or "qwen2_vl", "qwen3_vl" (deepstack after vision layers 0, 1),
    #                                "qwen3_vl_moe" (as qwen3_vl, every decoder layer a sparse MoE block)
    patch_size: int = 8
    vision_hidden: int = 64
    vision_layers: int = 2
    vision_heads: int = 2          # head size 32
    text_hidden: int = 128
    text_layers: int = 2
    text_heads: int = 4            # head size 32; M-RoPE sections 4 + 6 + 6 = 32 / 2
    text_mlp: int = 256
    experts: int = 4               # qwen3_vl_moe: 4 experts of 64 features, 2 per token
    expert_mlp: int = 64
    max_side: int = 112


def tokenizer():
    """The scene vocabulary with Qwen's vision tokens as special tokens (no chat template: the
    tests write prompts with :data:`IMAGE` / :data:`VIDEO` themselves)."""
    from ..scenes.model import build_tokenizer
    tok = build_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<image>", *QWEN_TOKENS]})
    tok.image_token, tok.video_token = "<|image_pad|>", "<|video_pad|>"
    return tok


def build(spec: TinyQwen = TinyQwen(), seed: int = 0):
    """``(model, processor)``: a random-weight Qwen2-VL, Qwen2.5-VL, Qwen3-VL or Qwen3-VL-MoE in fp32."""
    import transformers
    from transformers import Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    tok = tokenizer()
    ids = {attr: tok.convert_tokens_to_ids(t) for t, attr in QWEN_TOKENS.items()}
    px = spec.patch_size * 2
    sizes = {"shortest_edge": px * px, "longest_edge": spec.max_side * spec.max_side}   # pixels
    common = dict(patch_size=spec.patch_size, merge_size=2, temporal_patch_size=2, size=sizes)
    qwen3 = spec.family in ("qwen3_vl", "qwen3_vl_moe")
    if qwen3:
        # Qwen3-VL's checkpoints normalise with mean = std = 0.5, images and videos alike; vLLM
        # normalises both in the model with the image processor's values (mm_device_do_normalize)
        common.update(image_mean=[0.5] * 3, image_std=[0.5] * 3)
    ip = Qwen2VLImageProcessor(**common)
    if qwen3:   # its longest_edge bounds a clip's pixels, all frames together
        from transformers import Qwen3VLVideoProcessor
        vp = Qwen3VLVideoProcessor(**{**common, "size": {**sizes, "longest_edge": 8 * sizes["longest_edge"]}},
                                   do_sample_frames=False)
    else:
        vp = Qwen2VLVideoProcessor(**common, do_sample_frames=False)
    vision = dict(depth=spec.vision_layers, hidden_size=spec.vision_hidden, num_heads=spec.vision_heads,
                  patch_size=spec.patch_size, spatial_merge_size=2, temporal_patch_size=2,
                  in_channels=3, out_hidden_size=spec.text_hidden)
    if spec.family == "qwen2_5_vl":
        vision.update(intermediate_size=2 * spec.vision_hidden, window_size=4 * px,
                      fullatt_block_indexes=[spec.vision_layers - 1], tokens_per_second=2)
        names = ("Qwen2_5_VLConfig", "Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLProcessor")
    elif spec.family == "qwen2_vl":
        vision.update(embed_dim=spec.vision_hidden, hidden_size=spec.text_hidden, mlp_ratio=2)
        names = ("Qwen2VLConfig", "Qwen2VLForConditionalGeneration", "Qwen2VLProcessor")
    elif qwen3:
        vision.update(intermediate_size=2 * spec.vision_hidden, num_position_embeddings=64,
                      deepstack_visual_indexes=list(range(spec.vision_layers)))
        names = (("Qwen3VLMoeConfig", "Qwen3VLMoeForConditionalGeneration", "Qwen3VLProcessor")
                 if spec.family == "qwen3_vl_moe" else
                 ("Qwen3VLConfig", "Qwen3VLForConditionalGeneration", "Qwen3VLProcessor"))
    else:
        raise ValueError(f"unknown family {spec.family!r}; built here: qwen2_vl, qwen2_5_vl, qwen3_vl, "
                         "qwen3_vl_moe")
    text = dict(vocab_size=len(tok), hidden_size=spec.text_hidden, intermediate_size=spec.text_mlp,
                num_hidden_layers=spec.text_layers, num_attention_heads=spec.text_heads,
                num_key_value_heads=spec.text_heads, max_position_embeddings=4096, rms_norm_eps=1e-6,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 6, 6],
                                 **({"mrope_interleaved": True} if qwen3 else {})},
                tie_word_embeddings=False, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id)
    if qwen3:
        text["head_dim"] = spec.text_hidden // spec.text_heads
    if spec.family == "qwen3_vl_moe":
        text.update(num_experts=spec.experts, num_experts_per_tok=2, moe_intermediate_size=spec.expert_mlp,
                    decoder_sparse_step=1)
    cfg_cls, model_cls, proc_cls = (getattr(transformers, n) for n in names)
    cfg = cfg_cls(vision_config=vision, text_config=text, tie_word_embeddings=False, **ids)
    cfg._attn_implementation = "sdpa"
    proc = proc_cls(image_processor=ip, tokenizer=tok, video_processor=vp)
    torch.manual_seed(seed)
    model = model_cls(cfg).eval()
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(8.0)     # clear greedy winners
    gen = model.generation_config
    gen.pad_token_id, gen.bos_token_id, gen.eos_token_id = tok.pad_token_id, tok.bos_token_id, tok.eos_token_id
    return model, proc


def save(model, processor, path):
    """A checkpoint directory vLLM loads (transformers' own names: vLLM maps them)."""
    from pathlib import Path
    path = Path(path)
    model.config.architectures = [type(model).__name__]
    model.save_pretrained(path, safe_serialization=True)
    processor.save_pretrained(path)
    if model.config.model_type == "qwen3_vl_moe":
        # as the hub checkpoints: the text config holds norm_topk_prob (vLLM reads it; transformers'
        # config class drops it and always renormalises the top-k router weights), and the fused
        # expert weights are stored transposed (gate_up_proj [E, hidden, 2 * I], down_proj
        # [E, I, hidden]: vLLM's is_fused_checkpoint_transposed; transformers saves [E, 2 * I, hidden])
        import json

        from safetensors.torch import load_file, save_file
        for f in path.glob("*.safetensors"):
            w = load_file(f)
            w = {k: v.transpose(1, 2).contiguous() if k.endswith(("experts.gate_up_proj", "experts.down_proj"))
                 else v for k, v in w.items()}
            save_file(w, f, metadata={"format": "pt"})
        cfg = json.loads((path / "config.json").read_text())
        cfg["text_config"]["norm_topk_prob"] = True
        (path / "config.json").write_text(json.dumps(cfg, indent=2))
    return path
