"""The tiny Qwen3-VL, its kept indices on vtp's transformers path, and the transformers reference.

**Positions** as on Qwen2.5-VL (qwen_support.py): the unpruned prompt's M-RoPE positions
(transformers' ``get_rope_index``) with the dropped tokens' columns removed. **Deepstack**: the
reference splices the kept tokens' main features and adds each kept token's own deepstack
features after decoder layers ``0 .. levels - 1`` (transformers' ``visual_pos_masks`` /
``deepstack_visual_embeds``, on the pruned sequence), the dropped tokens' are gone.

**Kept indices on the transformers path.** ``vtp_compile.explain`` captures the model's forward;
Qwen3-VL's tower does not trace (``torch.split`` by a tensor's ``tolist()``), so the capture is
given the tower's outputs (``mm_encoder_outputs``) and the M-RoPE positions precomputed by the
same model, and Dynamo may capture the deepstack injection's masked indexing
(``capture_dynamic_output_shape_ops``): the decoder graph is the one ``generate`` compiles.
"""
from __future__ import annotations

import dataclasses

import torch

from vtp_compile.testing.vllm_qwen import VIDEO

from .qwen_support import TinyQwen


@dataclasses.dataclass
class TinyQwen3(TinyQwen):

    def encoder(self, images: list, video: bool = False):
        """transformers' tower outputs for ``images`` (clips): ``pooler_output`` (main
        features per item) and ``deepstack_features`` (per level, per item)."""
        with torch.no_grad():
            model = self.model.model
            if video:
                inp = self.hf_inputs(VIDEO * len(images), images, video=True)
                return model.get_video_features(inp["pixel_values_videos"], inp["video_grid_thw"],
                                                return_dict=True)
            inp = self.processor.image_processor(images=images, return_tensors="pt")
            return model.get_image_features(inp["pixel_values"], inp["image_grid_thw"], return_dict=True)

    def positions(self, inp, video: bool = False) -> torch.Tensor:
        key = "video_grid_thw" if video else "image_grid_thw"
        grids = {key: inp[key]}
        with torch.no_grad():
            return self.model.model.get_rope_index(inp["input_ids"], inp["mm_token_type_ids"], **grids)[0]

    def explain_kept(self, prompt: str, image, opts, video: bool = False) -> list[int]:
        import vtp_compile
        inp = dict(self.hf_inputs(prompt, [image], video))
        enc = self.encoder([image], video)
        inp["position_ids"] = self.positions(inp, video)
        inp.pop("pixel_values_videos" if video else "pixel_values")
        inp["mm_encoder_outputs"] = {"video" if video else "image": enc}
        flag = torch._dynamo.config.capture_dynamic_output_shape_ops
        torch._dynamo.config.capture_dynamic_output_shape_ops = True
        try:
            ex = vtp_compile.explain(self.model, inp, opts)
        finally:
            torch._dynamo.config.capture_dynamic_output_shape_ops = flag
        return ex.sites[0].kept_visual_index[0].tolist()

    def reference(self, prompt: str, images: list, selected: list, max_tokens: int, video: bool = False):
        """``(prompt ids, greedy tokens, their log-probabilities)``; ``selected[i]``: item ``i``'s
        ``(kept indices, kept main features)``, or None (unpruned)."""
        inp = self.hf_inputs(prompt, images, video)
        ids = inp["input_ids"][0]
        emb_layer = self.model.get_input_embeddings()
        token = self.video_token if video else self.image_token
        with torch.no_grad():
            pos = self.positions(inp, video)[:, 0] if images else torch.arange(len(ids)).expand(3, -1)
            emb = emb_layer(ids).clone()
        keep = torch.ones(len(ids), dtype=torch.bool)
        where = (ids == token).nonzero().flatten()
        deep = None
        if images:
            enc = self.encoder(images, video)
            deep = [[] for _ in enc.deepstack_features]
            at = 0
            for i, (feats, sel) in enumerate(zip(enc.pooler_output, selected)):
                run = where[at:at + feats.shape[0]]
                at += feats.shape[0]
                idx, kept = (torch.arange(feats.shape[0]), feats) if sel is None else sel
                emb[run] = 0
                emb[run[idx]] = kept.to(emb.dtype)
                keep[run] = False
                keep[run[idx]] = True
                for level, per_item in enumerate(enc.deepstack_features):
                    deep[level].append(per_item[i][idx])
            deep = [torch.cat(d) for d in deep]
        ids, emb, pos = ids[keep], emb[keep], pos[:, keep]
        lm = self.model.model.language_model
        gen, lps = [], []
        with torch.no_grad():
            for _ in range(max_tokens):
                # the prompt's visual tokens only: a generated token may be the placeholder's id
                vis = torch.cat([ids == token, torch.zeros(len(gen), dtype=torch.bool)])
                hidden = lm(inputs_embeds=emb[None], position_ids=pos[:, None],
                            visual_pos_masks=vis[None] if deep else None,
                            deepstack_visual_embeds=deep).last_hidden_state
                logits = self.model.lm_head(hidden[0, -1])
                lp = torch.log_softmax(logits.float(), -1)
                nxt = int(lp.argmax())
                gen.append(nxt)
                lps.append(float(lp[nxt]))
                emb = torch.cat([emb, emb_layer(torch.tensor([nxt]))])
                pos = torch.cat([pos, torch.full((3, 1), int(pos.max()) + 1)], 1)
        return ids.tolist(), gen, lps
