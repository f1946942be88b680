"""The tiny Qwen2-VL / Qwen2.5-VL models, their engines, and the transformers reference.

**Positions** (vtp_compile/serving/vllm/mrope.py): a pruned image's kept tokens keep the M-RoPE
``(t, h, w)`` positions they have in the unpruned prompt, and so does all text; the dropped
tokens' columns are simply gone. :meth:`TinyQwen.reference` does exactly that in transformers:
it computes the unpruned prompt's positions with the model's own ``get_rope_index``, removes the
dropped tokens (ids, embeddings, position columns), writes the kept features, and decodes
greedily, each new token one past the largest position so far (as transformers' and vLLM's
``mrope_position_delta`` do).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from vtp_compile.testing.vllm_qwen import VIDEO

from .support import MAX_LEN


@dataclasses.dataclass
class TinyQwen:
    path: Path
    model: object          # transformers Qwen2VL/Qwen2_5_VLForConditionalGeneration (fp32)
    processor: object

    @classmethod
    def make(cls, path, family: str):
        from vtp_compile.testing import vllm_qwen
        model, proc = vllm_qwen.build(vllm_qwen.TinyQwen(family=family))
        vllm_qwen.save(model, proc, path)
        return cls(Path(path), model, proc)

    def engine(self, **kw):
        from vllm import LLM
        args = dict(enforce_eager=True, dtype="float32", max_model_len=MAX_LEN,
                    limit_mm_per_prompt={"image": 3, "video": 2}, max_num_seqs=8, seed=0,
                    kv_cache_memory_bytes=64 << 20, distributed_executor_backend="uni",
                    enable_prefix_caching=True)
        args.update(kw)
        return LLM(str(self.path), **args)

    @property
    def image_token(self) -> int:
        return self.model.config.image_token_id

    @property
    def video_token(self) -> int:
        return self.model.config.video_token_id

    def hf_inputs(self, prompt: str, images: list, video: bool = False):
        """Transformers' inputs; ``video``: ``images`` are clips (``[T, H, W, 3]`` uint8 arrays at
        :data:`FPS` frames per second, as vLLM is given them)."""
        if not video:
            return self.processor(images=images or None, text=[prompt], return_tensors="pt")
        from transformers.video_utils import VideoMetadata
        meta = [VideoMetadata(**video_metadata(len(v))) for v in images]
        return self.processor(videos=images, text=[prompt], return_tensors="pt", video_metadata=meta,
                              do_sample_frames=False)

    def features(self, images: list, video: bool = False) -> list[torch.Tensor]:
        """``[V_i, D]`` per image (clip): what transformers splices."""
        if not images:
            return []
        with torch.no_grad():
            if video:
                inp = self.hf_inputs(VIDEO * len(images), images, video=True)
                out = self.model.model.get_video_features(inp["pixel_values_videos"], inp["video_grid_thw"])
            else:
                inp = self.processor.image_processor(images=images, return_tensors="pt")
                out = self.model.model.get_image_features(inp["pixel_values"], inp["image_grid_thw"])
        return [f.float() for f in out.pooler_output]

    def explain_kept(self, prompt: str, image, opts, video: bool = False) -> list[int]:
        import vtp_compile
        ex = vtp_compile.explain(self.model, dict(self.hf_inputs(prompt, [image], video)), opts)
        return ex.sites[0].kept_visual_index[0].tolist()

    def reference(self, prompt: str, images: list, selected: list, max_tokens: int, video: bool = False):
        """``(prompt ids, greedy tokens, their log-probabilities)``; ``selected[i]``: image
        (clip) ``i``'s ``(kept indices, kept features)``, or None (unpruned)."""
        inp = self.hf_inputs(prompt, images, video)
        ids = inp["input_ids"][0]
        emb_layer = self.model.get_input_embeddings()
        with torch.no_grad():
            if images:
                grids = {"video_grid_thw": inp["video_grid_thw"]} if video else {"image_grid_thw": inp["image_grid_thw"]}
                if "second_per_grid_ts" in inp:
                    grids["second_per_grid_ts"] = inp["second_per_grid_ts"]
                pos = self.model.model.get_rope_index(inp["input_ids"], inp["mm_token_type_ids"],
                                                      **grids)[0][:, 0]
            else:
                pos = torch.arange(len(ids)).expand(3, -1)
            emb = emb_layer(ids).clone()
        keep = torch.ones(len(ids), dtype=torch.bool)
        where = (ids == (self.video_token if video else self.image_token)).nonzero().flatten()
        at = 0
        for feats, sel in zip(self.features(images, video), selected):
            run = where[at:at + feats.shape[0]]
            at += feats.shape[0]
            idx, kept = (torch.arange(feats.shape[0]), feats) if sel is None else sel
            emb[run] = 0
            emb[run[idx]] = kept.to(emb.dtype)
            keep[run] = False
            keep[run[idx]] = True
        ids, emb, pos = ids[keep], emb[keep], pos[:, keep]
        gen, lps = [], []
        with torch.no_grad():
            for _ in range(max_tokens):
                logits = self.model(inputs_embeds=emb[None], position_ids=pos[:, None]).logits[0, -1]
                lp = torch.log_softmax(logits.float(), -1)
                nxt = int(lp.argmax())
                gen.append(nxt)
                lps.append(float(lp[nxt]))
                emb = torch.cat([emb, emb_layer(torch.tensor([nxt]))])
                pos = torch.cat([pos, torch.full((3, 1), int(pos.max()) + 1)], 1)
        return ids.tolist(), gen, lps


FPS = 2.0


def video_metadata(frames: int) -> dict:
    return {"fps": FPS, "duration": frames / FPS, "total_num_frames": frames,
            "frames_indices": list(range(frames)), "video_backend": "opencv"}


def qrequest(prompt, images, vtp=None, video=False):
    if video:        # vLLM's Qwen2.5-VL takes (frames, metadata); do_sample_frames: as given
        clips = [(v, {**video_metadata(len(v)), "do_sample_frames": False}) for v in images]
        r = {"prompt": prompt, "multi_modal_data": {"video": clips if len(clips) != 1 else clips[0]}}
    else:
        r = {"prompt": prompt, "multi_modal_data": {"image": images if len(images) != 1 else images[0]}}
    if vtp is not None:
        r["mm_processor_kwargs"] = {"vtp": vtp}
    return r


def greedy_lp(max_tokens):
    from vllm import SamplingParams
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, logprobs=0)


def got(out):
    """``(prompt ids, tokens, log-probabilities)`` of one vLLM output."""
    toks = list(out.outputs[0].token_ids)
    lps = [d[t].logprob for d, t in zip(out.outputs[0].logprobs, toks)]
    return list(out.prompt_token_ids), toks, lps


def assert_same(out, ref, atol=2e-3):
    ids, toks, lps = got(out)
    assert ids == ref[0]
    assert toks == ref[1]
    assert max(abs(a - b) for a, b in zip(lps, ref[2])) < atol, (lps, ref[2])
