"""Random-weight Idefics3 and SmolVLM checkpoints that vLLM (CPU) loads, for the plugin's tests.

``Idefics3ForConditionalGeneration`` / ``SmolVLMForConditionalGeneration`` built from
transformers' config classes: a SigLIP-style tower on 96 px tiles of 8 px patches (144 patches),
pixel shuffle 2 (the connector folds 2x2 patches into one token: ``image_seq_len = 36``), a Llama
decoder with head size 32 (vLLM's CPU attention runs no smaller), and the scene model's
word-level tokenizer with the family's image tokens (``<fake_token_around_image>``, ``<image>``,
``<global-img>``, ``<row_i_col_j>``). Image splitting stays on, as on the hub checkpoints (images
are resized to a longest edge of 192 and cut into up to 2x2 tiles of 96 plus the global tile);
the plugin serves ``do_image_splitting=False`` (one 96 px tile per image).

Weights keep transformers' names (``model.vision_model.``, ``model.connector.``,
``model.text_model.``, ``lm_head.``), which vLLM's Idefics3 loader reads. Imports no vLLM.
"""
from __future__ import annotations

import dataclasses

import torch

FAKE, IMAGE, GLOBAL = "<fake_token_around_image>", "<image>", "<global-img>"
ROW_COL = tuple(f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6))


@dataclasses.dataclass(frozen=True)
class TinyIdefics3:
    tile: int = 96
    patch: int = 8                 # 12x12 patches per tile; pixel shuffle 2 -> 6x6 = 36 tokens
    longest_edge: int = 192        # images are resized to this longest edge before splitting
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


def tokenizer(end_of_utterance: bool = False):
    """The scene tokenizer with the image tokens added as special tokens (so that the processors'
    unspaced replacement strings tokenize token by token); SmolVLM's processor also reads
    ``<end_of_utterance>`` and the tokenizer's ``image_token`` attributes."""
    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast

    from ..scenes.model import build_tokenizer
    core = build_tokenizer().backend_tokenizer
    extra = [FAKE, GLOBAL, *ROW_COL, "<end_of_utterance>"]
    core.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in extra])
    named = {"image_token": IMAGE, "fake_image_token": FAKE, "global_image_token": GLOBAL,
             "end_of_utterance_token": "<end_of_utterance>"}
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", unk_token="<unk>", padding_side="left",
                                   extra_special_tokens=named)


def build(family: str = "idefics3", spec: TinyIdefics3 = TinyIdefics3(), seed: int = 0):
    """``(model, processor)``: a random-weight Idefics3 (``family="idefics3"``) or SmolVLM
    (``"smolvlm"``) model in fp32 with its processor."""
    import transformers
    from transformers import LlamaConfig

    from ..scenes.model import CLIP_MEAN, CLIP_STD

    prefix = {"idefics3": "Idefics3", "smolvlm": "SmolVLM"}[family]
    tok = tokenizer()
    ip_cls = getattr(transformers, f"{prefix}ImageProcessorPil", None)
    if ip_cls is None:
        mod = __import__(f"transformers.models.{family}.image_processing_pil_{family}",
                         fromlist=["x"])
        ip_cls = getattr(mod, f"{prefix}ImageProcessorPil")
    ip = ip_cls(size={"longest_edge": spec.longest_edge}, max_image_size={"longest_edge": spec.tile},
                image_mean=CLIP_MEAN, image_std=CLIP_STD, do_image_splitting=True)
    kw = {}
    if family == "smolvlm":
        from transformers import SmolVLMVideoProcessor
        kw["video_processor"] = SmolVLMVideoProcessor(
            size={"longest_edge": spec.tile}, max_image_size={"longest_edge": spec.tile},
            image_mean=CLIP_MEAN, image_std=CLIP_STD)
    proc = getattr(transformers, f"{prefix}Processor")(
        image_processor=ip, tokenizer=tok, image_seq_len=spec.tokens_per_tile, **kw)
    vision = dict(model_type=f"{family}_vision", hidden_size=spec.vision_hidden,
                  intermediate_size=4 * spec.vision_hidden, num_hidden_layers=spec.vision_layers,
                  num_attention_heads=spec.vision_heads, image_size=spec.tile,
                  patch_size=spec.patch)
    text = LlamaConfig(
        vocab_size=len(tok), hidden_size=spec.text_hidden, intermediate_size=spec.text_mlp,
        num_hidden_layers=spec.text_layers, num_attention_heads=spec.text_heads,
        num_key_value_heads=spec.text_heads, max_position_embeddings=4096, rms_norm_eps=1e-6,
        tie_word_embeddings=False, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id)
    cfg = getattr(transformers, f"{prefix}Config")(
        vision_config=vision, text_config=text.to_dict(), scale_factor=2,
        image_token_id=tok.convert_tokens_to_ids(IMAGE), pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    model = getattr(transformers, f"{prefix}ForConditionalGeneration")(cfg).eval()
    gen = model.generation_config
    gen.pad_token_id, gen.bos_token_id, gen.eos_token_id = tok.pad_token_id, tok.bos_token_id, tok.eos_token_id
    return model, proc
