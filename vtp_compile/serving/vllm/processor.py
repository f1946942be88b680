"""The multimodal-processor side: each pruned image gets ``n_keep`` placeholders instead of ``V``.

:class:`PruningProcessorMixin` goes before a vLLM ``BaseMultiModalProcessor`` subclass. With a
``vtp`` entry in the merged ``mm_processor_kwargs`` (engine-wide and per request) it adds one
field per image, ``vtp``: an int64 tensor ``[n_keep, V, *utf-8 bytes of the options as JSON]``,
which travels with the image's pixels to the model (and so through vLLM's processor and encoder
caches), and cuts the image's placeholder run to ``n_keep`` tokens. The image's multimodal hash
already covers the request's ``mm_processor_kwargs`` (vLLM hashes them with the image), so the
same image at two budgets is two cache entries, in the encoder cache and in the prefix cache.

Methods that read the prompt (CDPruner, DCP-Prune's encoder site) also get ``vtp_text``: the
prompt's token ids with this image's run marked ``-1`` and the runs of other items, pruned or
not (other images, unpruned videos), ``-2``: embedding slots only, so start/end markers around a
run stay text, as they are on the transformers path. Their hash additionally covers the prompt
(:meth:`_get_mm_hashes`), so two prompts with the same image do not share a selection.

Clips (Qwen-VL videos) are pruned the same way, per clip, with the fields ``vtp_video`` and
``vtp_video_text`` (:func:`field_names`) when the family lists ``"video"`` in
``_vtp_modalities``.

Images the plugin cannot prune (embedding inputs) keep ``V`` placeholders and are logged once.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging

import torch

from . import options

log = logging.getLogger("vtp_compile.serving.vllm")
FIELD = "vtp"
TEXT_FIELD = "vtp_text"
_LOGGED: set = set()


def log_once(key: str, msg: str, *args) -> None:
    if key not in _LOGGED:
        _LOGGED.add(key)
        log.warning(msg, *args)


def encode(spec, n_keep: int, n_visual: int) -> torch.Tensor:
    data = list(spec.to_json().encode())
    return torch.tensor([n_keep, n_visual, *data], dtype=torch.int64)


def decode(row: torch.Tensor):
    """``(spec, n_keep, V)`` from one image's ``vtp`` field."""
    vals = row.tolist()
    spec = options.parse(bytes(vals[2:]).decode())
    return spec, int(vals[0]), int(vals[1])


def rows(value) -> list[torch.Tensor]:
    """A batched field as a list of per-image 1-D tensors (vLLM stacks rows of equal length
    into one 2-D tensor and leaves others as a list)."""
    if value is None:
        return []
    if isinstance(value, torch.Tensor):
        return [value] if value.dim() == 1 else [r for t in value.unbind(0) for r in rows(t)]
    return [r for v in value for r in rows(v)]


def field_names(modality: str) -> tuple[str, str]:
    """``(selection field, prompt field)`` of a modality: ``vtp``/``vtp_text`` for images,
    ``vtp_<modality>``/``vtp_<modality>_text`` for others (a field belongs to one modality)."""
    if modality == "image":
        return FIELD, TEXT_FIELD
    return f"{FIELD}_{modality}", f"{FIELD}_{modality}_text"


class PruningProcessorMixin:
    """Put before the model's processor class (one whose ``info`` has
    ``get_num_image_tokens(image_width=, image_height=)``, as vLLM's LLaVA family has, or that
    overrides :meth:`_vtp_tokens`). ``_vtp_modalities``: the modalities it prunes."""

    _vtp_modalities: tuple[str, ...] = ("image",)

    def _vtp_tokens(self, items, item_idx: int, out) -> int | None:
        """The unpruned token count ``V`` of item ``item_idx`` of ``items`` (None: cannot prune
        it, e.g. an embedding input); ``out``: the HF processor's outputs for the items."""
        from vllm.multimodal.parse import ImageProcessorItems
        if not isinstance(items, ImageProcessorItems):
            return None
        size = items.get_image_size(item_idx)
        return self.info.get_num_image_tokens(image_width=size.width, image_height=size.height)

    def _vtp_check(self, spec) -> None:
        """Raise ``ValueError`` if this model cannot run ``spec`` (per family; default: fine)."""

    _vtp_frames: bool = False   # whether _vtp_tokens' items have known frames (Qwen-VL)

    def _vtp_family(self) -> str:
        """The vLLM model class this processor serves (for error messages)."""
        archs = getattr(self.info.ctx.model_config, "architectures", None) or []
        return archs[0] if archs else next(
            c.__name__ for c in type(self).__mro__ if c.__module__.startswith("vllm."))

    def _vtp_spec(self, hf_kwargs):
        spec = options.from_mm_kwargs(self.info.ctx.get_merged_mm_kwargs(dict(hf_kwargs)))
        if spec is not None:
            if not self._vtp_frames:
                options.refuse_frames(spec, self._vtp_family())
            self._vtp_check(spec)
        return spec

    def _apply_hf_processor_main(self, mm_items, hf_kwargs):
        out = super()._apply_hf_processor_main(mm_items, hf_kwargs)
        spec = self._vtp_spec(hf_kwargs)
        if spec is None:
            return out
        for mod in self._vtp_modalities:
            if mod not in mm_items:
                continue
            items = mm_items[mod]
            fields = []
            for i in range(len(items)):
                V = self._vtp_tokens(items, i, out)
                if V is None:
                    log_once(f"unprunable:{type(items).__name__}",
                             "vtp: %s inputs are not pruned (they run as given): %s",
                             mod, type(items).__name__)
                    fields = []
                    break
                fields.append(encode(spec, spec.n_keep(V), V))
            if not fields:
                continue
            width = max(len(f) for f in fields)
            name = field_names(mod)[0]
            out[name] = torch.stack(fields) if all(len(f) == width for f in fields) else fields
        return out

    def _get_mm_fields_config(self, hf_inputs, hf_processor_mm_kwargs):
        from vllm.multimodal.inputs import MultiModalFieldConfig
        cfg = dict(super()._get_mm_fields_config(hf_inputs, hf_processor_mm_kwargs))
        for mod in self._vtp_modalities:
            for name in field_names(mod):
                cfg[name] = MultiModalFieldConfig.batched(mod, keep_on_cpu=True)
        return cfg

    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs):
        updates = super()._get_prompt_updates(mm_items, hf_processor_mm_kwargs, out_mm_kwargs)
        kept = {mod: kept_counts(out_mm_kwargs, mod) for mod in self._vtp_modalities}
        return [dataclasses.replace(u, replacement=_cut(u.replacement, kept[u.modality]))
                if kept.get(u.modality) else u for u in updates]

    # -- prompt-conditioned methods ----------------------------------------------------------------
    def _get_mm_hashes(self, inputs):
        hashes = super()._get_mm_hashes(inputs)
        spec = self._vtp_spec(inputs.hf_processor_mm_kwargs)
        if spec is None or not spec.text:
            return hashes
        digest = hashlib.sha256(str(list(inputs.prompt)).encode()).hexdigest()[:32]
        return {mod: [f"{h}-vtp-prompt-{digest}" for h in hs] if mod in self._vtp_modalities else hs
                for mod, hs in hashes.items()}

    def apply(self, inputs, timing_ctx):
        result = super().apply(inputs, timing_ctx)
        spec = self._vtp_spec(inputs.hf_processor_mm_kwargs)
        if spec is None or not spec.text:
            return result
        from vllm.multimodal.inputs import MultiModalFieldConfig, MultiModalFieldElem
        ids = list(result["prompt_token_ids"])
        for mod in self._vtp_modalities:
            name, text_name = field_names(mod)
            items = result["mm_kwargs"].get(mod, []) if "mm_kwargs" in result else []
            ranges = result["mm_placeholders"].get(mod, [])
            field = MultiModalFieldConfig.batched(mod, keep_on_cpu=True).field
            for i, item in enumerate(items):
                if item is None or name not in item:
                    continue
                marked = list(ids)
                for rng in (r for rs in result["mm_placeholders"].values() for r in rs):
                    for p in _slots(rng):
                        marked[p] = -2
                for p in _slots(ranges[i]):
                    marked[p] = -1
                item[text_name] = MultiModalFieldElem(data=torch.tensor(marked, dtype=torch.int64),
                                                      field=field)
        return result


def _slots(rng) -> list[int]:
    """The prompt positions of a placeholder range's embedding slots: the markers around them
    (InternVL's ``<img>``/``</img>``, Gemma 3's ``<start_of_image>``/``<end_of_image>``,
    Idefics3's ``<fake_token_around_image><global-img>``: ``is_embed`` leaves them out) are
    prompt text, as on the transformers path."""
    if rng.is_embed is None:
        return list(range(rng.offset, rng.offset + rng.length))
    return [rng.offset + j for j in rng.is_embed.nonzero().flatten().tolist()]


def kept_counts(out_mm_kwargs, mod) -> dict[int, int]:
    """``{item index: n_keep}`` of the pruned items of modality ``mod``."""
    if mod not in out_mm_kwargs:
        return {}
    name = field_names(mod)[0]
    out = {}
    for i, item in enumerate(out_mm_kwargs[mod]):
        if item is not None and name in item:
            out[i] = int(item[name].data[0])
    return out


def _cut(replacement, kept: dict[int, int]):
    """The replacement of item ``i`` with its placeholder run cut to ``kept[i]`` tokens.

    A replacement is a token list (every token an embedding slot, as LLaVA's) or vLLM's
    ``PromptUpdateDetails`` whose ``is_embed`` marks the slots among other tokens (InternVL's
    ``<img>`` ... ``</img>``, Gemma 3's ``<start_of_image>`` ... ``<end_of_image>``). The slots
    must be one contiguous run: the run is cut, the tokens around it stay."""
    def cut(item_idx: int):
        full = replacement(item_idx) if callable(replacement) else replacement
        if item_idx not in kept:
            return full
        return cut_run(full, kept[item_idx])
    return cut


def cut_run(full, n_keep: int):
    """``full`` (a token list or ``PromptUpdateDetails``) with its one run of embedding slots
    cut to its first ``n_keep`` tokens."""
    seq = list(full.full) if hasattr(full, "full") else list(full)
    is_embed = getattr(full, "is_embed", None)
    mask = [True] * len(seq) if is_embed is None else [bool(b) for b in is_embed(seq).tolist()]
    slots = [i for i, m in enumerate(mask) if m]
    if not slots or slots[-1] - slots[0] + 1 != len(slots) or len({seq[i] for i in slots}) != 1:
        raise ValueError("vtp: this model's image placeholders are not one run of one repeated "
                         "token; its processor needs its own adapter")
    start = slots[0]
    out = seq[:start + n_keep] + seq[slots[-1] + 1:]
    if is_embed is None:
        return out
    return dataclasses.replace(full, full=out)
