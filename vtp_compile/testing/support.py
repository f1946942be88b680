"""What vtp claims per VLM family: the one table the family tests check and docs/support.md prints.

``tests/families/`` is parametrised from :data:`PRUNED` and :data:`METHODS` (every entry is an
oracle-checked test), and from :data:`NOT_PRUNED` (each such path must run, equal the unpruned
model and log the reason). ``python -m vtp_compile.testing.support`` rewrites the support matrix
in docs/support.md (the block after its ``<!-- matrix: python -m vtp_compile.testing.support -->``
marker, up to ``<!-- /matrix -->``) from the same tables, so the documentation claims exactly
what the tests check; ``--print`` prints it instead.
"""
from __future__ import annotations

# family -> the paths on which FastV is pruned and oracle-checked ("forward": a direct compiled
# call; "generate": model.compile + generate, prefill and decode)
PRUNED: dict[str, tuple[str, ...]] = {
    "llava": ("forward", "generate"),
    "llava_next": ("forward", "generate"),
    "llava_onevision": ("forward", "generate"),
    "qwen2_vl": ("forward", "generate"),
    "qwen2_5_vl": ("forward", "generate"),
    "qwen3_vl": ("generate",),
    "qwen3_5": ("forward", "generate"),
    "glm4v": ("forward", "generate"),
    "gemma3": ("forward", "generate"),
    "paligemma": ("forward", "generate"),
    "idefics3": ("forward", "generate"),
    "smolvlm": ("forward", "generate"),
    "internvl": ("forward", "generate"),
    "mistral3": ("forward", "generate"),
}

# (family, path) -> why vtp leaves it unpruned (it still runs, compiled, and says so in one line)
NOT_PRUNED: dict[tuple[str, str], str] = {
    ("qwen3_vl", "forward"): "the vision tower and every decoder layer arrive as separate graphs "
                             "(data-dependent ops in the tower)",
    ("llama4", "forward"): "its MoE feed-forward flattens batch and sequence into one token "
                           "dimension (topk/scatter routing), which the sequence analysis does not "
                           "follow yet",
    ("llama4", "generate"): "as for the forward",
}

# per family: the options its tests use (a site layer with an attention layer before it, the
# Dynamo settings it needs)
LAYER = {"qwen3_5": 2, "gemma3": 1}
DYNAMO = {"qwen3_vl": {"capture_dynamic_output_shape_ops": True}}

# methods checked on every family in PRUNED (generate path) against the mask oracle, but where
# REFUSED says otherwise (tests/families/test_families.py: every method from one trace per family)
METHODS = ("fastv", "divprune", "acgr", "random", "pdrop", "sparsevlm", "dart", "cdpruner")

# per family, a method's options where its defaults do not apply: Qwen3.5's default stage layers
# land on linear-attention layers (PDrop and SparseVLM then raise a clear error naming the layer)
METHOD_OPTIONS: dict[str, dict[str, dict]] = {
    # ACGR's merge cannot reach a linear-attention layer K (not compacted): layer 2 of the tiny
    # Qwen3.5 is one, so it is refused there (tested) and checked at the attention layer 3
    "qwen3_5": {"pdrop": {"layers": [1]}, "sparsevlm": {"layers": [1]}, "acgr": {"layer": 3}},
}

# methods checked beyond LLaVA on some families only, against the mask oracle: family -> paths
# (tests/families/test_alvts.py, tests/families/test_families.py::test_methods_on_every_family)
EXTRA: dict[str, dict[str, tuple[str, ...]]] = {
    "alvts": {**{f: ("generate",) for f in ("llava_next", "qwen2_vl", "glm4v", "idefics3", "smolvlm",
                                             "internvl", "mistral3")},
              "llava_onevision": ("forward", "generate"), "qwen2_5_vl": ("forward", "generate")},
    "dstp": {f: ("generate",) for f in ("llava_next", "qwen2_5_vl", "qwen3_vl", "paligemma",
                                         "internvl")},
    # tests/families/test_nuwa_families.py: a SigLIP tower without CLS, one feature per patch
    # and Qwen's towers (no CLS, merged patches, Qwen2.5-VL's windows): generate only
    "nuwa": {"paligemma": ("forward", "generate"), "qwen2_vl": ("generate",),
             "qwen2_5_vl": ("generate",)},
    "visionzip": {"paligemma": ("generate",), "qwen2_5_vl": ("generate",)},
}
# where a method's mechanism cannot apply: the family runs unpruned with one log line (tested)
REFUSED = {"dstp": ("qwen3_5", "gemma3"), "alvts": ("qwen3_5", "gemma3"), "nuwa": ("llava_next", "llava_onevision"),
           # a second compaction cannot be planned: sliding-window caches, deepstack injections
           "pdrop": ("gemma3", "qwen3_vl"), "sparsevlm": ("gemma3", "qwen3_vl")}


# (method, family) whose CI check passes but which differs from the mask oracle on other
# weights: printed "G*" with the note, not claimed without it (found when the family test drew
# the q/k biases and norm weights of every family; not yet explained)
DIFFERS: dict[tuple[str, str], str] = {
    ("dstp", "qwen3_vl"): "with the input-norm weights drawn away from 1 (tests/families/test_alvts."
                          "draw_selector_weights) the prefill logits equal the mask oracle's, yet a "
                          "greedy token at the third step differs (oracle margin 0.024): a decode-time "
                          "swap of active and reserve tokens decides otherwise, a near-tie in its "
                          "shift score or a bug",
}


# generate into transformers' static cache (tests/passes/test_static_cache.py): FastV on every
# family with a generate path but those refused; every method of METHODS (and those listed) on
# the families named; DSTP and ALVTS are refused on every family (they address the dynamic
# cache's compacted layout)
STATIC_CACHE_METHODS: dict[str, tuple[str, ...]] = {"llava": METHODS + ("visionzip",),
                                                     "qwen2_5_vl": METHODS}
STATIC_CACHE_REFUSED: dict[str, str] = {"gemma3": "sliding-window buffers"}


def static_cache_families() -> list[str]:
    return [f for f, paths in PRUNED.items() if "generate" in paths and f not in STATIC_CACHE_REFUSED]


# methods whose oracle-checked tests run on LLaVA only (tests/passes, tests/methods,
# tests/test_inductor.py), and why the other families are not claimed yet
LLAVA_ONLY: dict[str, str] = {
    "visionzip": "vtp_compile.attach reads CLIP towers (strategy 'default', or 'full' where "
                 "the CLS token is ranked like a patch, tested on LLaVA) and CLS-free SigLIP towers "
                 "(score 'cls' there is the attention a patch receives; tested on PaliGemma, "
                 "tests/families/test_nuwa_families.py), and Qwen2-VL's and Qwen2.5-VL's towers as "
                 "for nuwa (tested on Qwen2.5-VL's generate with 'received' and two images of "
                 "different sizes, which VisionZip prunes: it reads no grid; Qwen2-VL, whose "
                 "record nuwa's test checks, by hand only); "
                 "projectors that pack or merge patches (LLaVA-NeXT) are left unpruned with one "
                 "log line",
    "chain": "as its stages",
    "dstp": "checked in CI on the families marked (tests/families/test_families.py, against the "
            "mask oracle); the other families' attention layouts are the same as those checked "
            "(not claimed); on hybrid models (linear-attention layers: Qwen3.5) and sliding-window "
            "layers (Gemma 3) it runs unpruned with one log line: its reserve is hidden from "
            "attention by masks, which linear layers do not read, and its decode masks address "
            "one cache layout shared by every layer",
    "alvts": "checked in CI on the families marked (tests/families/test_alvts.py; biased q "
             "projections add the selector's q bias term); families with per-head q/k norms "
             "(Qwen3-VL, Qwen3.5, Gemma 3; tested on Qwen3.5 and Gemma 3) run unpruned with one log "
             "line: their attention logits are not a bilinear form of the layer input, which the "
             "selector is built from; "
             "PaliGemma is refused too (Gemma's (1 + w) input-norm weight is not read)",
    "nuwa": "vtp_compile.attach reads CLIP towers with vision_feature_select_strategy 'default' "
            "or 'full' (the kept CLS token is always an anchor, tested on LLaVA) and CLS-free SigLIP "
            "towers (anchors by the attention a patch receives; checked on PaliGemma, the SigLIP "
            "family that splices one feature per patch, tests/families/test_nuwa_families.py); "
            "every row must hold the same number of images; where the projector packs or pools "
            "patches (LLaVA-NeXT and LLaVA-OneVision anyres, Gemma 3) per-patch anchors cannot be "
            "placed: generate runs unpruned with one log line (tested on LLaVA-NeXT and "
            "LLaVA-OneVision), and a "
            "direct forward whose vision tower Dynamo splits into another graph (LLaVA-OneVision) "
            "raises the OptionError that asks for attach; Qwen2-VL and Qwen2.5-VL towers (no CLS: "
            "anchors by the attention a patch receives in the last vision block, per merged "
            "token, Qwen2.5-VL's window order undone; tested on generate, where the internals "
            "also equal the oracle's; the direct forward is pruned too, checked by hand against "
            "the oracle, not in CI: 40-70 s a case); a Qwen batch with images of different sizes "
            "runs unpruned with one log line (the anchor kernels take one grid; tested), video "
            "inputs likewise (not tested); Qwen3-VL (deepstack), "
            "Qwen3.5 (its Nüwa differs from the oracle on the hybrid decoder: not served), "
            "GLM-4V (downsampling merger), Idefics3/SmolVLM, InternVL and Pixtral towers are "
            "refused by attach with a ValueError",
}


# video (tests/families/test_video.py): the families whose transformers model takes clips
# (testing/families.VIDEO_FAMILIES) -> the paths checked with clips in the batch against the mask
# oracle: "generate" every method of METHODS the family takes (REFUSED excepted) on every batch,
# "forward" FastV on the last batch the family takes, padded left and right. Batches (VIDEO_BATCHES): "video": clip rows and a text-only row;
# "image+video": a row with an image and a clip, a clip row and a text-only row
VIDEO: dict[str, tuple[str, ...]] = {
    "qwen2_vl": ("forward", "generate"),
    "qwen2_5_vl": ("forward", "generate"),
    "qwen3_vl": ("generate",),
    "qwen3_5": ("forward", "generate"),
    "glm4v": ("forward", "generate"),
    "llava_onevision": ("forward", "generate"),
    "llava_next_video": ("forward", "generate"),
    "internvl": ("forward", "generate"),
    "smolvlm": ("forward", "generate"),
}
VIDEO_BATCHES = ("video", "image+video")
# (family, batch) that transformers itself refuses, uncompiled: (why, the error it raises)
VIDEO_NOT: dict[tuple[str, str], tuple[str, str]] = {
    ("glm4v", "image+video"): ("transformers rejects it uncompiled: GLM-4V's frames use the image "
                               "token, so its image splice counts the clip's tokens too",
                               "Image features and image tokens do not match"),
}
# how each family's clips reach the model (testing/families.VideoSpec)
VIDEO_LAYOUT = {
    "qwen2_vl": "`pixel_values_videos`, one run of video tokens per clip",
    "qwen2_5_vl": "as Qwen2-VL, with `second_per_grid_ts`",
    "qwen3_vl": "`pixel_values_videos`; timestamp text between frames",
    "qwen3_5": "`pixel_values_videos`; timestamp text between frames",
    "glm4v": "`pixel_values_videos`; frames of image tokens, timestamp text between them",
    "llava_onevision": "`pixel_values_videos`; pooled frames, one newline token per clip",
    "llava_next_video": "`pixel_values_videos`; pooled frames",
    "internvl": "frames as images in `pixel_values`, with frame labels",
    "smolvlm": "frames as images in `pixel_values`, with timestamp labels",
}
# methods not claimed on video, and why
VIDEO_NOT_CLAIMED = {
    "visionzip": "reads the vision tower's per-image internals (vtp_compile.attach), recorded "
                 "for images; not tested on clips (a graph that splices images and clips raises "
                 "Unsupported in the pass that reads them, not tested either)",
    "nuwa": "as visionzip",
    "dstp": "only where the image matrix claims its `generate`", "alvts": "as dstp",
    "chain": "as its stages",
}


# frames (tests/methods/test_video_methods.py, docs/video.md): the families on which the video
# methods and ``per_frame`` are checked with clips against the mask oracle given the layout's
# frames -> paths: "forward" (every FRAME_CASES entry, eager inner backend), "generate"
# (the three video methods), "inductor" (a forward through Inductor, right-padded)
FRAMES: dict[str, tuple[str, ...]] = {
    "qwen2_vl": ("forward", "inductor"),
    "qwen2_5_vl": ("generate",),
    "internvl": ("forward",),
    "llava_onevision": ("forward", "generate"),
    "qwen3_vl": ("generate",),
    "qwen3_5": ("generate",),
    "glm4v": ("forward",),
    "llava_next_video": ("forward",),
    "smolvlm": ("forward",),
}
# how each of them shows its frames to vtp (kernels/frames.py)
FRAMES_FROM = {
    "qwen2_vl": "M-RoPE temporal positions inside the clip's one run",
    "qwen2_5_vl": "M-RoPE temporal positions inside the clip's one run",
    "internvl": "one run per frame (frame labels between)",
    "llava_onevision": "`frame_tokens` from the model's config (one run, 1-D positions)",
    "qwen3_vl": "one run per frame (timestamps between)",
    "qwen3_5": "one run per frame (timestamps between)",
    "glm4v": "one run per frame (timestamps between)",
    "llava_next_video": "`frame_tokens` from the model's config (one run, 1-D positions)",
    "smolvlm": "one run per frame (frame labels between)",
}
FRAME_METHODS = ("vidcom2", "dycoke", "fastvid")


def frames_matrix() -> str:
    """The frames table of docs/support.md, in Markdown."""
    lines = ["| frames | frames found from | " + " | ".join(f"`{m}`" for m in FRAME_METHODS)
             + " | `fastv`, `random` with `per_frame` |", "|---|---|---|---|---|---|"]
    for f, paths in FRAMES.items():
        mine = " ".join(p[0].upper() for p in paths)
        per = ("F" if "forward" in paths else "—") + (" (I: `fastv`)" if "inductor" in paths else "")
        lines.append(f"| {f} | {FRAMES_FROM[f]} | " + " | ".join([mine] * len(FRAME_METHODS)) + f" | {per} |")
    lines.append("")
    lines.append("Frames (tests/methods/test_video_methods.py, [video.md](video.md)): F: direct forward "
                 "(eager inner backend), I: forward through Inductor (right-padded), G: `generate`; "
                 "batches of a clip row, an image + clip row and a text-only row, against the mask "
                 "oracle given the frames from the layout. The three video methods are also checked "
                 "on drawn image prompts through Inductor (tests/test_inductor.py), every image a frame.")
    return "\n".join(lines)


def video_batches(family: str) -> list[str]:
    return [b for b in VIDEO_BATCHES if (family, b) not in VIDEO_NOT]


def video_extra(method: str) -> list[str]:
    """The video families on which ``method`` (dstp, alvts) is checked with clips: those the
    image matrix claims its ``generate`` for (EXTRA)."""
    return [f for f in VIDEO if "generate" in VIDEO[f] and "generate" in EXTRA[method].get(f, ())]


def video_matrix() -> str:
    """The video table of docs/support.md, in Markdown."""
    lines = ["| video | clips reach the model as | `fastv` | " + ", ".join(f"`{m}`" for m in METHODS[1:])
             + " | `dstp` | `alvts` | clip rows + text-only row | image + clip row, clip row, text-only row |",
             "|---|---|---|---|---|---|---|---|"]
    for f, paths in VIDEO.items():
        methods = [m for m in METHODS[1:] if f not in REFUSED.get(m, ())]
        others = ("G" if len(methods) == len(METHODS) - 1 else
                  f"G (not {', '.join(m for m in METHODS[1:] if m not in methods)}: as for images)")
        batches = ["yes" if (f, b) not in VIDEO_NOT else f"no: {VIDEO_NOT[f, b][0]}" for b in VIDEO_BATCHES]
        extra = ["G" if f in video_extra(m) else "—" for m in ("dstp", "alvts")]
        lines.append(f"| {f} | {VIDEO_LAYOUT[f]} | {' '.join(p[0].upper() for p in paths)} | {others} | "
                     + " | ".join(extra + batches) + " |")
    lines.append("")
    lines.append("Video (tests/families/test_video.py): F: direct compiled forward with `fastv`, the "
                 "image + clip batch (GLM-4V: the clip batch) padded left and right; G: `generate` of "
                 "both batches, left-padded, greedy tokens of every "
                 "method named, each oracle-checked in CI against the mask oracle, which counts a "
                 "clip's spliced tokens as visual and its timestamps, frame labels and start/end "
                 "tokens as text. Not claimed on clips: "
                 + "; ".join(f"`{m}` ({why})" for m, why in VIDEO_NOT_CLAIMED.items()) + ".")
    return "\n".join(lines)


def layer_for(family: str) -> int:
    return LAYER.get(family, 1)


def matrix() -> str:
    """The support matrix of docs/support.md, in Markdown."""
    fams = list(PRUNED) + sorted({f for f, _ in NOT_PRUNED if f not in PRUNED})
    methods = list(METHODS) + list(LLAVA_ONLY)
    head = "| family | " + " | ".join(f"`{m}`" for m in methods) + " | static cache | not pruned |"
    lines = [head, "|" + "---|" * (len(methods) + 3)]
    for f in fams:
        paths = PRUNED.get(f, ())
        cells = []
        for m in methods:
            if f == "llava":        # every method's own oracle tests (tests/passes, tests/methods)
                cells.append("F G")
            elif (m, f) in DIFFERS:
                cells.append("G*")
            elif f in EXTRA.get(m, {}):
                cells.append(" ".join(p[0].upper() for p in EXTRA[m][f]))
            elif f in REFUSED.get(m, ()):
                cells.append("no")
            elif m in LLAVA_ONLY:
                cells.append("—")
            elif m == "fastv":
                cells.append(" ".join(p[0].upper() for p in paths) if paths else "—")
            else:
                cells.append("G" if "generate" in paths else "—")
        if f in STATIC_CACHE_REFUSED:
            static = "no"
        elif f in STATIC_CACHE_METHODS:
            static = f"{len(STATIC_CACHE_METHODS[f])} methods"
        else:
            static = "`fastv`" if f in static_cache_families() else "—"
        why = "; ".join(f"{p}: {NOT_PRUNED[(f, p)]}" for p in ("forward", "generate")
                        if (f, p) in NOT_PRUNED)
        lines.append(f"| {f} | " + " | ".join(cells) + f" | {static} | {why} |")
    lines.append("")
    lines.append("F: direct compiled forward, G: `generate` (prefill and decode), each oracle-checked "
                 "in CI; no: the method's mechanism cannot apply, the model runs unpruned with one "
                 "log line saying why (tested); —: not claimed. Static cache: `generate(..., "
                 "cache_implementation=\"static\")`, greedy tokens oracle-checked in CI for the "
                 "methods named (\"N methods\": "
                 + "; ".join(f"{f}: {', '.join(ms)}" for f, ms in STATIC_CACHE_METHODS.items())
                 + "); `dstp` and `alvts` refused with one warning (tested on LLaVA; the refusal reads no family detail); no: refused "
                 "with one warning (" + "; ".join(f"{f}: {why}" for f, why in STATIC_CACHE_REFUSED.items())
                 + "), see [static_cache.md](static_cache.md).")
    lines.append("")
    lines += [f"* `{m}` on {f} (G*): passes the CI check, but {why}; not yet explained, so not "
              "claimed beyond that check." for (m, f), why in DIFFERS.items()]
    lines += [f"* `{m}` beyond LLaVA: {why}." for m, why in LLAVA_ONLY.items()]
    lines += [f"* `{m}` on {f} is checked with `{opts}`: with the defaults its site lands on a "
              "linear-attention layer, where it raises an error naming the layer (PDrop, SparseVLM) "
              "or runs unpruned with one log line (ACGR's merge; tested), see docs/methods.md."
              for f, per in METHOD_OPTIONS.items() for m, opts in per.items()]
    lines += ["", video_matrix(), "", frames_matrix()]
    return "\n".join(lines)


# where the matrices live: docs/support.md, relative to the repository root
SUPPORT_PAGE = "docs/support.md"
END_MARKER = "<!-- /matrix -->"


def marker(module: str) -> str:
    """The comment that opens a generated block: it names the command that rewrites it."""
    return f"<!-- matrix: python -m {module} -->"


def block(text: str, module: str) -> str:
    """The generated block of ``module`` in ``text`` (between its marker and the end marker)."""
    start = text.index(marker(module)) + len(marker(module))
    return text[start:text.index(END_MARKER, start)].strip("\n")


def rewrite(path, module: str, table: str) -> bool:
    """Replace ``module``'s block in the file at ``path`` by ``table``; True if it changed."""
    import pathlib
    path = pathlib.Path(path)
    text = path.read_text()
    start = text.index(marker(module)) + len(marker(module))
    end = text.index(END_MARKER, start)
    new = text[:start] + "\n" + table.strip("\n") + "\n" + text[end:]
    if new != text:
        path.write_text(new)
    return new != text


def main(module: str, table: str, argv=None) -> int:
    """``python -m <module> [--print] [--path FILE]``: rewrite the page's block (default) or print it."""
    import argparse
    import pathlib
    ap = argparse.ArgumentParser(prog=f"python -m {module}")
    ap.add_argument("--print", action="store_true", help="print the matrix, change nothing")
    ap.add_argument("--path", default=str(pathlib.Path(__file__).resolve().parents[2] / SUPPORT_PAGE),
                    help="the page holding the block")
    args = ap.parse_args(argv)
    if args.print:
        print(table)
        return 0
    changed = rewrite(args.path, module, table)
    print(f"{args.path}: {'rewritten' if changed else 'up to date'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main("vtp_compile.testing.support", matrix()))
