"""The scene model: a small, real ``LlavaForConditionalGeneration`` with its processor.

Vision tower: ``CLIPVisionConfig`` (CLS token, 112×112 input, patch 8 -> 14×14 = 196 visual
tokens), features from the last layer (``SceneModelSize.vision_feature_layer = -1``), strategy
"default" (CLS dropped). Language model: ``LlamaConfig`` with SDPA attention. Tokenizer: a
word-level ``tokenizers`` model wrapped in ``PreTrainedTokenizerFast`` (``<image>``, ``<pad>``,
``<s>``, ``</s>``, ``<unk>`` + the task vocabulary). Image processor: ``CLIPImageProcessorPil``
(PIL/numpy path; no torchvision).

Prompt format: ``"<image> {question}"``; the processor expands ``<image>`` to 196 tokens and
prepends ``<s>``; the model generates the answer words followed by ``</s>``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from .generator import IMAGE_SIZE
from .clip_tasks import clip_vocabulary
from .tasks import vocabulary

PATCH_SIZE = 8
# longest prompt: a 6-frame clip (1 + 6 * (2 + 196) tokens) plus a question (RoPE: a label only)
MAX_POSITIONS = 1536
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "<image>"]
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


@dataclass
class SceneModelSize:
    """Tower sizes of the scene model (defaults are what the shipped checkpoint uses)."""

    vision_hidden: int = 128
    vision_layers: int = 4
    vision_heads: int = 4
    vision_mlp: int = 384
    text_hidden: int = 160
    text_layers: int = 4
    text_heads: int = 4
    text_kv_heads: int = 4
    text_mlp: int = 448
    # hidden state of the vision tower that the projector reads (-1: last layer, -2: the one
    # before it, LLaVA's default). Keep >= 3 vision layers: Nüwa reads CLS attention at -2.
    vision_feature_layer: int = -1


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Word-level tokenizer over the task vocabulary, adding ``<s>`` in front of every text.

    Ids: the special tokens, the image tasks' words (sorted), then the clip tasks' words
    (appended, so the image words keep the ids of the image-only checkpoint)."""
    words = SPECIAL_TOKENS + vocabulary()
    words += [w for w in clip_vocabulary() if w not in words]
    vocab = {tok: i for i, tok in enumerate(words)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        unk_token="<unk>", padding_side="left", extra_special_tokens={"image_token": "<image>"})
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    return tok


def build_image_processor() -> CLIPImageProcessorPil:
    """CLIP-style preprocessing without torchvision: resize/crop to 112, rescale, normalise."""
    return CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        do_resize=True, do_center_crop=True, do_rescale=True, do_normalize=True,
        image_mean=CLIP_MEAN, image_std=CLIP_STD, do_convert_rgb=True)


def build_processor() -> LlavaProcessor:
    """The ``LlavaProcessor`` (image processor + tokenizer) for the scene model."""
    return LlavaProcessor(image_processor=build_image_processor(), tokenizer=build_tokenizer(),
                          patch_size=PATCH_SIZE, vision_feature_select_strategy="default",
                          num_additional_image_tokens=1, image_token="<image>")


def build_model(tokenizer: PreTrainedTokenizerFast, size: SceneModelSize | None = None,
                seed: int = 0) -> LlavaForConditionalGeneration:
    """A randomly initialised scene model whose vocabulary matches ``tokenizer``."""
    size = size or SceneModelSize()
    vision = CLIPVisionConfig(
        hidden_size=size.vision_hidden, intermediate_size=size.vision_mlp,
        num_hidden_layers=size.vision_layers, num_attention_heads=size.vision_heads,
        image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, num_channels=3, hidden_act="gelu",
        projection_dim=size.vision_hidden)
    text = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=size.text_hidden,
        intermediate_size=size.text_mlp, num_hidden_layers=size.text_layers,
        num_attention_heads=size.text_heads, num_key_value_heads=size.text_kv_heads,
        max_position_embeddings=MAX_POSITIONS, rms_norm_eps=1e-5, tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id)
    config = LlavaConfig(
        vision_config=vision, text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=size.vision_feature_layer, vision_feature_select_strategy="default",
        projector_hidden_act="gelu", image_seq_length=(IMAGE_SIZE // PATCH_SIZE) ** 2,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False)
    config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    gen = model.generation_config
    gen.pad_token_id, gen.bos_token_id = tokenizer.pad_token_id, tokenizer.bos_token_id
    gen.eos_token_id, gen.do_sample, gen.max_new_tokens = tokenizer.eos_token_id, False, 8
    return model.eval()


def size_dict(size: SceneModelSize) -> dict:
    """Plain-dict form of a :class:`SceneModelSize` (for logging / metadata)."""
    return asdict(size)
