"""What the vLLM plugin claims per family: the table tests/serving/vllm checks and docs/support.md
prints (``python -m vtp_compile.serving.vllm.support`` rewrites it there; ``--print`` prints it).
Imports no vLLM."""
from __future__ import annotations

from .options import SERVED

# family -> methods checked in tests/serving/vllm (vLLM 0.32.0, CPU build)
CHECKED: dict[str, tuple[str, ...]] = {
    "llava": ("random", "divprune", "cdpruner", "acgr", "visionzip", "nuwa"),
    "llava_next": ("random", "divprune", "cdpruner", "acgr"),
    "llava_onevision": ("random", "divprune", "cdpruner", "vidcom2", "dycoke", "fastvid"),
    "qwen2_5_vl": ("random", "divprune", "cdpruner", "acgr", "vidcom2", "dycoke", "fastvid"),
    "qwen2_vl": ("divprune", "cdpruner", "vidcom2", "dycoke", "fastvid"),
    "qwen3_vl": ("random", "divprune", "cdpruner", "acgr", "vidcom2", "dycoke", "fastvid"),
    "qwen3_vl_moe": ("divprune", "cdpruner", "acgr", "vidcom2", "fastvid"),
    "gemma3": ("random", "divprune", "cdpruner", "acgr"),
    "internvl": ("random", "divprune", "cdpruner", "acgr"),
    "transformers_backend": ("random", "divprune", "cdpruner", "acgr"),
    "idefics3": ("random", "divprune", "cdpruner", "acgr"),
    "smolvlm": ("divprune",),
}
VIDEO = ("vidcom2", "dycoke", "fastvid")
_NO_FRAMES = "no frames: images only"
# family -> {method refused at start-up / per request: why}
REFUSED: dict[str, dict[str, str]] = {
    "llava": {m: _NO_FRAMES for m in VIDEO},
    "llava_next": {"visionzip": "packed anyres features", "nuwa": "packed anyres features",
                   **{m: _NO_FRAMES for m in VIDEO}},
    "llava_onevision": {"visionzip": "packed anyres features", "nuwa": "packed anyres features"},
    "qwen2_5_vl": {"visionzip": "no CLS token in Qwen's tower", "nuwa": "no CLS token in Qwen's tower"},
    "qwen2_vl": {"visionzip": "no CLS token in Qwen's tower", "nuwa": "no CLS token in Qwen's tower"},
    "qwen3_vl": {"visionzip": "no CLS token in Qwen's tower", "nuwa": "no CLS token in Qwen's tower"},
    "qwen3_vl_moe": {"visionzip": "no CLS token in Qwen's tower", "nuwa": "no CLS token in Qwen's tower"},
    "gemma3": {"visionzip": "average-pooled patches", "nuwa": "average-pooled patches",
               **{m: _NO_FRAMES for m in VIDEO}},
    "internvl": {"visionzip": "tiles, pixel shuffle", "nuwa": "tiles, pixel shuffle",
                 **{m: _NO_FRAMES for m in VIDEO}},
    "transformers_backend": {"visionzip": "transformers' own tower", "nuwa": "transformers' own tower",
                             **{m: _NO_FRAMES for m in VIDEO}},
    "idefics3": {"visionzip": "pixel shuffle, no CLS", "nuwa": "pixel shuffle, no CLS",
                 **{m: _NO_FRAMES for m in VIDEO}},
    "smolvlm": {"visionzip": "pixel shuffle, no CLS", "nuwa": "pixel shuffle, no CLS",
                **{m: _NO_FRAMES for m in VIDEO}},
}
# family -> what else is checked there
EXTRA = {"llava_onevision": "images and video clips (frames from the clip: per-frame pooled tokens, the newline a frame of its own)",
         "qwen2_5_vl": "images and video clips (M-RoPE positions as vLLM's EVS; frames from the clip's grid)",
         "qwen2_vl": "images and video clips (M-RoPE positions as vLLM's EVS; frames from the clip's grid)",
         "qwen3_vl": "images and video clips (deepstack: scores from the main features, kept rows keep "
                     "theirs; M-RoPE positions as on Qwen2.5-VL; a clip's kept tokens in their frames, "
                     "between its timestamps)",
         "qwen3_vl_moe": "Qwen3-VL's adapter on vLLM's MoE class: images and video clips as on Qwen3-VL; "
                         "kept indices checked against the selection on transformers' features (`explain` "
                         "prunes nothing on transformers' MoE decoder); `cdpruner`, `acgr`, `fastvid`: full tier",
         "gemma3": "images without pan-and-scan (refused); causal attention on vLLM's CPU backend",
         "internvl": "HF format; images, all tiles (videos run unpruned)",
         "transformers_backend": "vLLM's Transformers backend (`model_impl=\"transformers\"`), checked on LLaVA: "
                                 "any VLM it runs whose image slots are one run (refused: several runs, "
                                 "M-RoPE); images only; MoE text models: divprune, full tier",
         "idefics3": "images with do_image_splitting=False (splitting refused)",
         "smolvlm": "as Idefics3 (same vLLM processor and model); images only"}
NOTES = {"acgr": "`site=\"encoder\"`", "nuwa": "stage 1", "visionzip": "CLIP towers", "dycoke": "stage 1"}
# vLLM classes the plugin does not adapt: a vtp option on them is an error (.guard); without one
# they run as without the plugin
NOT_ADAPTED = ("vLLM's Transformers backend for pooling (embed, classify)",)


def matrix() -> str:
    methods = list(SERVED)
    head = "| vLLM plugin | " + " | ".join(f"`{m}`" for m in methods) + " |"
    rows = [head, "|" + "---|" * (len(methods) + 1)]
    for fam, ok in CHECKED.items():
        cells = [("yes" + (f" ({NOTES[m]})" if m in NOTES else "")) if m in ok
                 else f"refused ({REFUSED[fam][m]})" if m in REFUSED.get(fam, {}) else "—"
                 for m in methods]
        name = f"{fam}: {EXTRA[fam]}" if fam in EXTRA else fam
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    rows.append("| " + ", ".join(NOT_ADAPTED) + " | " + " | ".join("not adapted (a `vtp` option is refused)" for _ in methods) + " |")
    return "\n".join(rows)


if __name__ == "__main__":
    from vtp_compile.testing.support import main
    raise SystemExit(main("vtp_compile.serving.vllm.support", matrix()))
