"""vLLM's Transformers modeling backend (``model_impl="transformers"``, and architectures vLLM
has no class of its own for): one adapter for every model it runs, no per-model code.

**Class resolution.** For a VLM the backend is not looked up by the checkpoint's architecture:
``ModelRegistry._try_resolve_transformers`` maps any transformers class to the *name* of a backend
class (``ModelConfig._get_transformers_backend_cls``: ``TransformersMultiModalForCausalLM``, or
``TransformersMultiModalMoEForCausalLM`` for an MoE text model) and loads whatever the registry
holds under that name. :mod:`.plugin` registers the classes below under those two names; they
keep vLLM's class names because vLLM compares the loaded class's ``__name__`` with that name
(``ModelConfig.using_transformers_backend``, which decides e.g. MLA attention). The pooling
classes (``TransformersMultiModalEmbeddingModel``, ``...ForSequenceClassification``) are not
adapted: the guard refuses ``vtp`` there.

**V.** The backend's processor asks the HF processor for each item's replacement text
(``return_text_replacement_offsets``) and marks that item's embedding slots as the replacement's
most frequent token (vLLM's ``PromptUpdateDetails.select_token_id``). ``V`` is the number of
slots; the plugin cuts them to ``n_keep`` when they are one run (``<image>`` x V, with or without
start/end markers around it). An image whose slots are split by other tokens (tiles with row/col
labels, rows with break tokens) is refused with :class:`~vtp_compile.errors.OptionError`: which
slots a method keeps is known only after the tower runs, so the processor cannot say how many
slots each piece keeps. Videos and audio run unpruned (one log line): only images are pruned.

**Positions.** Kept tokens take consecutive 1-D positions (vLLM numbers a prompt by its token
index, as with vLLM's own LLaVA class). Models with M-RoPE (``get_rope_index``) are refused: the
backend computes their positions from the prompt and the unpruned grid before the tower runs, and
the transformers model's ``get_rope_index`` varies per family, so there is no generic way to give
kept tokens theirs (Qwen2-VL and Qwen2.5-VL prune on vLLM's own classes, :mod:`.qwen`).

**Refused methods.** ``visionzip`` and ``nuwa`` read vLLM's CLIP/SigLIP tower internals
(:mod:`.tower`); here the tower is transformers' own module. The prompt-reading methods
(``cdpruner``, ``acgr``) embed the prompt with the backend's input embeddings
(``embed_input_ids``, vLLM's vocabulary embedding in place of transformers').
"""
from __future__ import annotations

from vllm.model_executor.models import transformers as backend
from vllm.model_executor.models.transformers.multimodal import (MultiModalDummyInputsBuilder,
                                                                MultiModalProcessingInfo,
                                                                MultiModalProcessor,
                                                                _get_embed_token_id)
from vllm.multimodal import MULTIMODAL_REGISTRY

from .model import PruningModelMixin
from .processor import PruningProcessorMixin, field_names, log_once

SERVED = "random, divprune, cdpruner, acgr (site='encoder')"
NAME = "vLLM's Transformers backend"


def _error(msg: str):
    from ...errors import OptionError
    return OptionError(msg)


def refuse(spec, model_config) -> None:
    """Raise :class:`~vtp_compile.errors.OptionError` if ``spec`` cannot run on this backend
    model (vision-tower internals; M-RoPE positions)."""
    if spec.internals:
        raise _error(f"vtp: {spec.method} reads vLLM's CLIP/SigLIP vision-tower internals; "
                     f"{NAME} runs transformers' own tower, which the plugin does not hook. "
                     f"Methods that run there: {SERVED}")
    if model_config is not None and model_config.uses_mrope:
        arch = (model_config.architectures or ["this model"])[0]
        raise _error(f"vtp: {arch} numbers its tokens with M-RoPE, which {NAME} computes from "
                     "the prompt and each image's unpruned grid (the model's get_rope_index) before "
                     "the tower runs; the plugin cannot give kept tokens their positions there, so "
                     "it does not prune M-RoPE models on this backend. Qwen2-VL, Qwen2.5-VL and "
                     "Qwen3-VL prune on vLLM's own classes (model_impl='auto' or 'vllm')")


def slots(seq: list[int], item_idx: int) -> int:
    """``V``: the embedding slots of one item's replacement ``seq`` (its most frequent token, as
    the backend's processor marks them), which must be one run."""
    import torch
    ids = torch.tensor(seq)
    where = ids.eq(_get_embed_token_id(ids)).nonzero().flatten().tolist()
    runs = 1 + sum(b - a > 1 for a, b in zip(where, where[1:]))
    if runs > 1:
        raise _error(f"vtp: image {item_idx}'s placeholder holds its {len(where)} embedding slots in "
                     f"{runs} runs with other tokens between them (tiles or rows with separators); "
                     f"on {NAME} the plugin prunes images whose slots are one run (with or "
                     "without start/end markers around it). Run it with a processor setting that "
                     "gives one tile (where the model has one) or without the 'vtp' option")
    return len(where)


class VtpMultiModalProcessor(PruningProcessorMixin, MultiModalProcessor):
    """The backend's processor; with ``vtp`` options each image's slots are cut to ``n_keep``."""

    def _vtp_family(self) -> str:
        cfg = self.info.ctx.model_config
        return f"{cfg.architecture} ({(cfg.architectures or ['?'])[0]})"

    def _vtp_check(self, spec):
        refuse(spec, self.info.ctx.model_config)

    def _vtp_tokens(self, items, item_idx, out):
        from vllm.multimodal.parse import ImageProcessorItems
        if not isinstance(items, ImageProcessorItems) or "image_replacement_ids" not in out:
            return None
        sizes = out["image_replacement_sizes"].tolist()
        start = sum(sizes[:item_idx])
        return slots(out["image_replacement_ids"][start:start + sizes[item_idx]].tolist(), item_idx)

    def _apply_hf_processor_main(self, mm_items, hf_kwargs):
        out = super()._apply_hf_processor_main(mm_items, hf_kwargs)
        if self._vtp_spec(hf_kwargs) is not None:
            for mod in mm_items:
                if mod not in self._vtp_modalities:
                    log_once(f"backend-unpruned:{mod}", "vtp: %s inputs are not pruned on %s "
                             "(images only; they run as given)", mod, NAME)
        return out

    def _get_mm_fields_config(self, hf_inputs, hf_processor_mm_kwargs):
        # the backend attributes every key of the HF outputs to a modality; vtp's field is not
        # the sub-processor's (the mixin gives it its own config)
        ours = {k: hf_inputs.pop(k) for k in field_names("image") if k in hf_inputs}
        try:
            return super()._get_mm_fields_config(hf_inputs, hf_processor_mm_kwargs)
        finally:
            hf_inputs.update(ours)


class _BackendModelMixin(PruningModelMixin):
    def _vtp_check_engine(self, spec):
        refuse(spec, self.model_config)

    def _vtp_embed_text(self, ids):
        return self.embed_input_ids(ids)


_PROCESSOR = dict(info=MultiModalProcessingInfo, dummy_inputs=MultiModalDummyInputsBuilder)


# Same names as vLLM's classes (see the module docstring: vLLM compares them)
@MULTIMODAL_REGISTRY.register_processor(VtpMultiModalProcessor, **_PROCESSOR)
class TransformersMultiModalForCausalLM(_BackendModelMixin, backend.TransformersMultiModalForCausalLM):
    """vLLM's Transformers-backend VLM; with ``vtp`` options its ``embed_multimodal`` returns
    each image's kept features (see :class:`~vtp_compile.serving.vllm.model.PruningModelMixin`)."""


@MULTIMODAL_REGISTRY.register_processor(VtpMultiModalProcessor, **_PROCESSOR)
class TransformersMultiModalMoEForCausalLM(_BackendModelMixin,
                                           backend.TransformersMultiModalMoEForCausalLM):
    """The same for a VLM whose text model is a mixture of experts."""
