"""Inputs for the tiny families of :mod:`.families`: each family's placeholder layout (anyres
grids and newline rows, Qwen's merged patch grids, tiles and their separators, clips and their
timestamps or frame labels) and every extra input the model's ``forward`` reads."""
from __future__ import annotations

import math
from typing import Any

import torch

from .families import (FAMILIES, PAD, TEXT_HI, TEXT_LO, TIMESTAMP_TOKENS, TOKENS, VIDEO_FAMILIES,
                       VIDEO_FPS, ImageSpec, RowSpec, VideoSpec)

def _tokens(image_count: int, wrap=None) -> list[int]:
    body = [TOKENS["image"]] * image_count
    return [TOKENS[wrap[0]], *body, TOKENS[wrap[1]]] if wrap else body


def _fixed_image(spec, cfg, g):
    """Fixed-size tower: the processor resizes every image to the tower's size."""
    side = cfg.vision_config.image_size
    count = (side // cfg.vision_config.patch_size) ** 2
    if getattr(cfg, "mm_tokens_per_image", None):                    # Gemma 3 pools to this count
        count = cfg.mm_tokens_per_image
    return _tokens(count, spec.wrap), torch.randn(3, side, side, generator=g)


def _anyres_count(cfg, h, w, multi: bool) -> tuple[int, int]:
    """(placeholder tokens, crops incl. the base crop) of one anyres image, as the model computes them."""
    from transformers.image_processing_utils import select_best_resolution

    side = cfg.vision_config.image_size
    grid = side // cfg.vision_config.patch_size                      # feature rows/cols of one crop
    base = grid * grid                                               # CLS is dropped ("default") or absent
    aspect = getattr(cfg, "vision_aspect_ratio", None)               # OneVision only
    if multi and aspect is not None:                                 # OneVision, several images per row:
        return base + 1, 1                                           # base crop + one newline
    best_h, best_w = select_best_resolution([h, w], cfg.image_grid_pinpoints)
    cur_h, cur_w = grid * (best_h // side), grid * (best_w // side)
    if w / h > cur_w / cur_h:                                        # unpad_image
        cur_h -= 2 * ((cur_h - int(round(h * (cur_w / w), 7))) // 2)
    else:
        cur_w -= 2 * ((cur_w - int(round(w * (cur_h / h), 7))) // 2)
    feats, rows = cur_h * cur_w, cur_h
    if aspect is not None:                                           # OneVision interpolates big grids down
        ratio = math.sqrt(cur_h * cur_w / (int(aspect.strip("anyres_max_")) * grid ** 2))
        if ratio > 1.1:
            feats, rows = int(cur_h // ratio) * int(cur_w // ratio), int(cur_h // ratio)
    return base + feats + rows, (best_h // side) * (best_w // side) + 1


def _qwen_grid(cfg, h, w) -> tuple[int, int]:
    """Patch grid (rows, cols) after rounding to the merged patch size, like ``smart_resize``."""
    unit = cfg.vision_config.patch_size * cfg.vision_config.spatial_merge_size
    hh, ww = max(unit, round(h / unit) * unit), max(unit, round(w / unit) * unit)
    p = cfg.vision_config.patch_size
    return hh // p, ww // p


def _tile_grid(tile: int, h: int, w: int) -> int:
    """Tiles of a canvas: ``ceil`` grid, plus one global tile when there is more than one."""
    n = math.ceil(h / tile) * math.ceil(w / tile)
    return n + 1 if n > 1 else 1


def _image_tokens_and_pixels(name, spec, cfg, img: ImageSpec, multi: bool, g):
    """Token ids of one image and its pixel payload (layout-specific)."""
    h, w = img.height or spec.default_size[0], img.width or spec.default_size[1]
    lay = spec.layout
    if lay == "fixed":
        return _fixed_image(spec, cfg, g)
    if lay == "anyres":
        count, crops = _anyres_count(cfg, h, w, multi)
        side = cfg.vision_config.image_size
        return _tokens(count), (torch.randn(crops, 3, side, side, generator=g), (h, w))
    if lay == "qwen":
        gh, gw = _qwen_grid(cfg, h, w)
        vc = cfg.vision_config
        count = gh * gw // vc.spatial_merge_size ** 2
        flat = torch.randn(gh * gw, vc.in_channels * vc.temporal_patch_size * vc.patch_size ** 2, generator=g)
        return _tokens(count, spec.wrap), (flat, (1, gh, gw))
    if lay == "idefics":
        tile = cfg.vision_config.image_size
        per_tile = (tile // cfg.vision_config.patch_size) ** 2 // cfg.scale_factor ** 2
        rows, cols = math.ceil(h / tile), math.ceil(w / tile)
        img_run = [TOKENS["image"]] * per_tile
        glob = [TOKENS["fake_image"], TOKENS["global_image"], *img_run, TOKENS["fake_image"]]
        if rows * cols == 1:
            toks, n_tiles = glob, 1
        else:
            toks = []
            for i in range(rows):
                for j in range(cols):
                    toks += [TOKENS["fake_image"], TOKENS["row_col"] + 6 * i + j, *img_run]
                toks.append(TOKENS["newline"])
            toks = toks + [TOKENS["newline"]] + glob
            n_tiles = rows * cols + 1
        return toks, torch.randn(n_tiles, 3, tile, tile, generator=g)
    if lay == "tiles":
        vc = cfg.vision_config
        tile = vc.image_size[0] if isinstance(vc.image_size, (list, tuple)) else vc.image_size
        patch = vc.patch_size[0] if isinstance(vc.patch_size, (list, tuple)) else vc.patch_size
        n_tiles = _tile_grid(tile, h, w)
        if name == "internvl":
            per_tile = int((tile // patch) ** 2 * cfg.downsample_ratio ** 2)
            return _tokens(per_tile * n_tiles, spec.wrap), torch.randn(n_tiles, 3, tile, tile, generator=g)
        per_tile = int((tile // patch) ** 2 * vc.pixel_shuffle_ratio ** 2)   # Llama 4
        rows, cols = math.ceil(h / tile), math.ceil(w / tile)
        toks = [TOKENS["image_start"]]
        if rows * cols > 1:
            for i in range(rows):
                for j in range(cols):
                    toks += [TOKENS["image"]] * per_tile
                    if j < cols - 1:
                        toks.append(TOKENS["tile_x"])
                toks.append(TOKENS["tile_y"])
        toks += [TOKENS["image_tag"], *[TOKENS["image"]] * per_tile, TOKENS["image_end"]]
        return toks, torch.randn(n_tiles, 3, tile, tile, generator=g)
    if lay == "pixtral":
        unit = cfg.vision_config.patch_size * cfg.spatial_merge_size
        cap = cfg.vision_config.image_size
        hh, ww = (min(cap, max(unit, math.ceil(x / unit) * unit)) for x in (h, w))
        toks = []
        for _ in range(hh // unit):
            toks += [TOKENS["image"]] * (ww // unit) + [TOKENS["img_break"]]
        toks[-1] = TOKENS["img_end"]
        return toks, (torch.randn(3, hh, ww, generator=g), (hh, ww))
    raise ValueError(f"unknown layout {lay!r}")


def _video_tokens_and_pixels(name, spec, cfg, vid: VideoSpec, g, text):
    """Token ids of one clip, their ``mm_token_type_ids`` (2 on the clip's visual tokens), and its
    payload: ``("video", ...)`` for the model's video inputs, ``("frames", tiles)`` for frames
    passed as images. ``text(n)``: ``n`` random text tokens (timestamps, frame labels)."""
    if name not in VIDEO_FAMILIES:
        raise ValueError(f"{name}: its transformers model takes no video (VIDEO_FAMILIES)")
    h, w = vid.height or spec.default_size[0], vid.width or spec.default_size[1]
    V = TOKENS["video"]
    if spec.layout == "qwen":
        gh, gw = _qwen_grid(cfg, h, w)
        vc = cfg.vision_config
        t = math.ceil(vid.frames / vc.temporal_patch_size)
        per_frame = gh * gw // vc.spatial_merge_size ** 2
        flat = torch.randn(t * gh * gw, vc.in_channels * vc.temporal_patch_size * vc.patch_size ** 2, generator=g)
        payload = ("video", (flat, (t, gh, gw)))
        if name in ("qwen2_vl", "qwen2_5_vl"):                       # one run for the whole clip
            toks = [TOKENS["start"], *[V] * (t * per_frame), TOKENS["end"]]
            return toks, [2 if x == V else 0 for x in toks], payload
        toks = []
        if name == "glm4v":                                          # frames of image tokens
            toks.append(TOKENS["start"])
            for _ in range(t):
                toks += [TOKENS["boi"], *[TOKENS["image"]] * per_frame, TOKENS["eoi"], *text(TIMESTAMP_TOKENS)]
            toks.append(TOKENS["end"])
            return toks, [2 if x == TOKENS["image"] else 0 for x in toks], payload
        for _ in range(t):                                           # Qwen3-VL, Qwen3.5
            toks += [*text(TIMESTAMP_TOKENS), TOKENS["start"], *[V] * per_frame, TOKENS["end"]]
        return toks, [2 if x == V else 0 for x in toks], payload
    if spec.layout == "anyres":
        side = cfg.vision_config.image_size
        grid = side // cfg.vision_config.patch_size
        if name == "llava_onevision":                                # bilinear to ceil(g/2), + newline
            count = vid.frames * math.ceil(grid / 2) ** 2 + 1
        else:                                                        # LLaVA-NeXT-Video: avg pool
            count = vid.frames * (grid // cfg.spatial_pool_stride) ** 2
        return [V] * count, [0] * count, ("video", torch.randn(vid.frames, 3, side, side, generator=g))
    if name == "internvl":
        vc = cfg.vision_config
        tile = vc.image_size[0] if isinstance(vc.image_size, (list, tuple)) else vc.image_size
        patch = vc.patch_size[0] if isinstance(vc.patch_size, (list, tuple)) else vc.patch_size
        per_tile = int((tile // patch) ** 2 * cfg.downsample_ratio ** 2)
        toks = []
        for i in range(vid.frames):
            toks += ([*text(1)] if i else []) + [*text(TIMESTAMP_TOKENS - 1)] + _tokens(per_tile, spec.wrap)
        return toks, [0] * len(toks), ("frames", torch.randn(vid.frames, 3, tile, tile, generator=g))
    if name == "smolvlm":
        tile = cfg.vision_config.image_size
        per_tile = (tile // cfg.vision_config.patch_size) ** 2 // cfg.scale_factor ** 2
        toks = text(4)                                               # "You are provided ... frames"
        for _ in range(vid.frames):
            toks += [*text(TIMESTAMP_TOKENS), TOKENS["fake_image"], TOKENS["global_image"],
                     *[TOKENS["image"]] * per_tile, TOKENS["fake_image"]]
        return toks, [0] * len(toks), ("frames", torch.randn(vid.frames, 3, tile, tile, generator=g))
    raise ValueError(f"no video layout for {name}")


def _video_inputs(name, spec, cfg, clips: list[Any]) -> dict:
    """The model's video inputs from the clips' payloads, batch order."""
    if not clips:
        return {}
    if spec.layout == "qwen":
        out = {"pixel_values_videos": torch.cat([p for p, _ in clips]),
               "video_grid_thw": torch.tensor([list(t) for _, t in clips])}
        if name == "qwen2_5_vl":
            tps = cfg.vision_config.temporal_patch_size
            out["second_per_grid_ts"] = torch.tensor([tps / VIDEO_FPS] * len(clips))
        return out
    frames = {c.shape[0] for c in clips}
    if len(frames) != 1:
        raise ValueError(f"{name}: pixel_values_videos is one tensor; every clip needs the same frame count")
    return {"pixel_values_videos": torch.stack(clips)}


def _pixel_inputs(spec, cfg, rows_payloads: list[list[Any]]) -> dict:
    """Batch the per-image payloads of every row into the model's vision inputs."""
    flat = [p for row in rows_payloads for p in row]
    if not flat:
        return {}
    lay = spec.layout
    if lay in ("fixed", "tiles"):
        return {"pixel_values": torch.cat([p if p.dim() == 4 else p[None] for p in flat])}
    if lay == "anyres":
        most = max(p[0].shape[0] for p in flat)
        px = torch.zeros(len(flat), most, *flat[0][0].shape[1:])
        for i, (crops, _) in enumerate(flat):
            px[i, : crops.shape[0]] = crops
        out = {"pixel_values": px, "image_sizes": torch.tensor([list(s) for _, s in flat])}
        if hasattr(cfg, "vision_aspect_ratio"):                     # OneVision
            out["batch_num_images"] = torch.tensor([len(r) for r in rows_payloads])
        return out
    if lay == "qwen":
        return {"pixel_values": torch.cat([p for p, _ in flat]),
                "image_grid_thw": torch.tensor([list(t) for _, t in flat])}
    if lay == "idefics":
        tiles = [torch.cat(row) if row else None for row in rows_payloads]
        most = max(t.shape[0] for t in tiles if t is not None)
        side = flat[0].shape[-1]
        px = torch.zeros(len(tiles), most, 3, side, side)
        mask = torch.zeros(len(tiles), most, side, side, dtype=torch.bool)
        for b, t in enumerate(tiles):
            if t is not None:
                px[b, : t.shape[0]], mask[b, : t.shape[0]] = t, True
        return {"pixel_values": px, "pixel_attention_mask": mask}
    if lay == "pixtral":
        mh, mw = max(p.shape[1] for p, _ in flat), max(p.shape[2] for p, _ in flat)
        px = torch.zeros(len(flat), 3, mh, mw)
        for i, (p, _) in enumerate(flat):
            px[i, :, : p.shape[1], : p.shape[2]] = p
        return {"pixel_values": px, "image_sizes": torch.tensor([list(s) for _, s in flat])}
    raise ValueError(f"unknown layout {lay!r}")


def make_inputs(name: str, model, rows: list[RowSpec], padding_side: str = "left", seed: int = 0) -> dict:
    """Inputs for ``model(**inputs)`` and ``model.generate(**inputs)``: one row per ``RowSpec``.

    Rows are padded to the longest with ``pad_token_id`` (attention_mask 0) on ``padding_side``.
    Besides ``input_ids``/``attention_mask``: the family's pixel inputs (only if some row has an
    image), its video inputs (only if some row has a clip: ``pixel_values_videos`` and, Qwen/GLM,
    ``video_grid_thw``, Qwen2.5-VL ``second_per_grid_ts``; InternVL's and SmolVLM's frames join
    ``pixel_values``), ``mm_token_type_ids`` (Qwen/GLM: 1 on image tokens, 2 on a clip's visual
    tokens) and ``token_type_ids`` (Gemma 3: 1 on image tokens; PaliGemma: zeros, i.e. the whole
    prompt is the bidirectional prefix).
    """
    spec, cfg = FAMILIES[name], model.config
    g = torch.Generator().manual_seed(seed)

    def text(n):
        return torch.randint(TEXT_LO, TEXT_HI, (n,), generator=g).tolist()

    seqs, types, payloads, clips = [], [], [], []
    for row in rows:
        toks, pay = text(row.prefix), []
        typ = [0] * len(toks)
        for i, img in enumerate(row.images):
            if i:
                toks += text(1)
                typ.append(0)
            t, p = _image_tokens_and_pixels(name, spec, cfg, img, len(row.images) > 1, g)
            toks += t
            typ += [1 if x == TOKENS["image"] else 0 for x in t]
            pay.append(p)
        for i, vid in enumerate(row.videos):
            if i or row.images:
                toks += text(1)
                typ.append(0)
            t, ty, (kind, p) = _video_tokens_and_pixels(name, spec, cfg, vid, g, text)
            toks += t
            typ += ty
            (pay if kind == "frames" else clips).append(p)
        tail = text(row.suffix)
        seqs.append(toks + tail)
        types.append(typ + [0] * len(tail))
        payloads.append(pay)
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), PAD, dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    mm = torch.zeros(len(seqs), width, dtype=torch.long)
    for b, s in enumerate(seqs):
        sl = slice(width - len(s), width) if padding_side == "left" else slice(0, len(s))
        ids[b, sl], mask[b, sl] = torch.tensor(s, dtype=torch.long), 1
        mm[b, sl] = torch.tensor(types[b], dtype=torch.long)
    out = {"input_ids": ids, "attention_mask": mask, **_pixel_inputs(spec, cfg, payloads),
           **_video_inputs(name, spec, cfg, clips)}
    is_image = (ids == TOKENS["image"]).long()
    if spec.layout == "qwen":
        out["mm_token_type_ids"] = mm
    if spec.token_type_ids == "image":
        out["token_type_ids"] = is_image
    elif spec.token_type_ids == "zeros":
        out["token_type_ids"] = torch.zeros_like(ids)
    return out


def visual_positions(name: str, model, inputs: dict) -> torch.Tensor:
    """Bool ``[B, L]``: the positions the model splices visual features into (its placeholder
    mask): image tokens and, where the family has one, video tokens (never timestamps, frame
    labels or the vision start/end tokens, which are text)."""
    del name
    ids = inputs["input_ids"]
    out = ids == model.config.image_token_id
    video = getattr(model.config, "video_token_id", None)
    if video is not None:
        out = out | (ids == video)
    return out


def visual_counts(name: str, model, inputs: dict) -> list[int]:
    """Visual tokens per row (rows differ with image counts and sizes)."""
    return visual_positions(name, model, inputs).sum(-1).tolist()



def frame_ids(name: str, model, inputs: dict, frame_tokens: int | None = None) -> torch.Tensor:
    """``[B, L]`` int64: each visual position's frame, numbered per row from 0, -1 elsewhere,
    from the layout this module writes (not from the graph): an image is one frame; a clip is one
    frame per temporal patch (Qwen2-VL/2.5-VL split their one run by ``video_grid_thw``; the other
    families write text between frames); ``frame_tokens`` cuts every run into chunks of that many
    tokens (LLaVA-OneVision, LLaVA-NeXT-Video)."""
    spec, cfg = FAMILIES[name], model.config
    ids = inputs["input_ids"]
    visual = visual_positions(name, model, inputs)
    grids = inputs.get("video_grid_thw")
    clips = [] if grids is None else [tuple(int(v) for v in t) for t in grids]
    merge = getattr(getattr(cfg, "vision_config", None), "spatial_merge_size", 1)
    out = torch.full_like(ids, -1)
    clip = 0
    for b in range(ids.shape[0]):
        frame, p = -1, 0
        L = ids.shape[1]
        while p < L:
            if not visual[b, p]:
                p += 1
                continue
            q = p
            while q < L and visual[b, q]:
                q += 1
            run = list(range(p, q))
            if frame_tokens:
                chunk = frame_tokens
            elif spec.layout == "qwen" and name in ("qwen2_vl", "qwen2_5_vl") \
                    and int(ids[b, p]) == TOKENS["video"]:
                t, gh, gw = clips[clip]
                clip += 1
                chunk = gh * gw // merge ** 2
            else:
                chunk = len(run)
            for i, pos in enumerate(run):
                if i % chunk == 0:
                    frame += 1
                out[b, pos] = frame
            p = q
    return out
