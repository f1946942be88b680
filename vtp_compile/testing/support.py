"""What vtp claims per VLM family: the one table the family tests check and the README prints.

``tests/families/`` is parametrised from :data:`PRUNED` and :data:`METHODS` (every entry is an
oracle-checked test), and from :data:`NOT_PRUNED` (each such path must run, equal the unpruned
model and log the reason). ``python -m vtp_compile.testing.support`` prints the README's support
matrix from the same tables, so the README claims exactly what the tests check.
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

# methods checked on every family in PRUNED (generate path) against the mask oracle
METHODS = ("fastv", "random", "divprune", "acgr")


def layer_for(family: str) -> int:
    return LAYER.get(family, 1)


def matrix() -> str:
    """The README's support matrix, in Markdown."""
    fams = list(PRUNED) + sorted({f for f, _ in NOT_PRUNED if f not in PRUNED})
    head = "| family | " + " | ".join(f"`{m}`" for m in METHODS) + " | not pruned |"
    lines = [head, "|" + "---|" * (len(METHODS) + 2)]
    for f in fams:
        paths = PRUNED.get(f, ())
        cells = []
        for m in METHODS:
            if m == "fastv":
                cells.append(" + ".join(paths) if paths else "—")
            else:
                cells.append("generate" if "generate" in paths else "—")
        why = "; ".join(f"{p}: {NOT_PRUNED[(f, p)]}" for p in ("forward", "generate")
                        if (f, p) in NOT_PRUNED)
        lines.append(f"| {f} | " + " | ".join(cells) + f" | {why} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(matrix())
