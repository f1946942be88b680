"""Does the scene model's language model *find* the shapes a counting question asks about?

For held-out counting questions with a non-zero answer (``how many red shapes ?`` selects by
colour, ``how many circles ?`` by kind), runs the unpruned model eagerly with
``output_attentions=True`` and reports, per decoder layer, the attention mass of the last
prompt token (averaged over heads) on patches of the asked shapes ("match"), on patches of the
other shapes, and on all visual tokens. A layer that selects puts far more mass on "match" than
on "other shapes".

It also reports how far apart the colours and the kinds lie in what the decoder reads: for
each pair of colours (of kinds), the distance between the two classes' mean visual token at the
input of decoder layer 0 (after its RMSNorm), over the RMS token norm. Gradient descent learns a
lookup along a prominent direction sooner; a model whose kinds lie further apart than its
colours learns to select by kind first.

    python benchmarks/scene_attention_probe.py --model vtp_compile/assets/scene_llava --n 200
"""
from __future__ import annotations

import argparse
from collections import defaultdict
from itertools import combinations

import numpy as np
import torch

from vtp_compile.scenes import load_scene_model
from vtp_compile.scenes.generator import COLOURS
from vtp_compile.scenes.tasks import make_dataset
from vtp_compile.scenes.targets import patch_shape_index


def probe(model, processor, examples) -> dict[tuple[str, int], np.ndarray]:
    """``{(selector, layer): [match, other_shapes, all_visual]}`` mean attention masses."""
    model.set_attn_implementation("eager")
    inputs = processor(images=[e.image for e in examples],
                       text=["<image> " + e.question for e in examples],
                       return_tensors="pt", padding=True)
    with torch.no_grad():
        attentions = model(**inputs, output_attentions=True).attentions
    image_id = model.config.image_token_id
    rows = defaultdict(list)
    for i, ex in enumerate(examples):
        word = ex.question.split()[2]
        by_colour = word in COLOURS
        shape_of = patch_shape_index(ex.scene)
        match = np.array([k > 0 and (ex.scene.shapes[k - 1].colour == word if by_colour
                                     else ex.scene.shapes[k - 1].kind + "s" == word)
                          for k in shape_of])
        other = (shape_of > 0) & ~match
        visual = (inputs.input_ids[i] == image_id).nonzero().squeeze(1)
        for layer, att in enumerate(attentions):
            a = att[i, :, -1, visual].mean(0).numpy()
            rows[("colour" if by_colour else "kind", layer)].append(
                (a[match].sum(), a[other].sum(), a.sum()))
    return {k: np.array(v).mean(0) for k, v in rows.items()}


def separation(model, processor, examples) -> dict[str, dict[str, float]]:
    """``{"colour"|"kind": {"a-b": |mean_a - mean_b| / rms}}`` over shape patches at the input
    of decoder layer 0 (after its input RMSNorm)."""
    inputs = processor(images=[e.image for e in examples],
                       text=["<image> " + e.question for e in examples],
                       return_tensors="pt", padding=True)
    with torch.no_grad():
        hidden = model(**inputs, output_hidden_states=True).hidden_states[0]
        hidden = model.model.language_model.layers[0].input_layernorm(hidden).float()
    image_id = model.config.image_token_id
    feats, labels = [], {"colour": [], "kind": []}
    for i, ex in enumerate(examples):
        visual = (inputs.input_ids[i] == image_id).nonzero().squeeze(1)
        for p, k in enumerate(patch_shape_index(ex.scene)):
            if k > 0:
                feats.append(hidden[i, visual[p]].numpy())
                labels["colour"].append(ex.scene.shapes[k - 1].colour)
                labels["kind"].append(ex.scene.shapes[k - 1].kind)
    feats = np.array(feats)
    rms = np.sqrt((feats ** 2).sum(1).mean())
    out = {}
    for attr, lab in labels.items():
        lab = np.array(lab)
        means = {c: feats[lab == c].mean(0) for c in sorted(set(lab))}
        out[attr] = {f"{a}-{b}": float(np.linalg.norm(means[a] - means[b]) / rms)
                     for a, b in combinations(means, 2)}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="checkpoint dir (default: the shipped one)")
    p.add_argument("--n", type=int, default=200, help="held-out counting questions to scan")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model, processor = load_scene_model(args.model) if args.model else load_scene_model()
    examples = [e for e in make_dataset("counting", args.n) if e.answer != "0"]
    result = probe(model, processor, examples)
    print(f"{len(examples)} counting questions with a non-zero answer; attention of the last "
          "prompt token, mean over heads")
    print("selector  layer  match  other shapes  all visual")
    for (sel, layer), (m, o, v) in sorted(result.items()):
        print(f"{sel:<8}  {layer:>5}  {m:5.2f}  {o:12.2f}  {v:10.2f}")
    print("\ndistance between class means at the decoder input / RMS token norm")
    for attr, pairs in separation(model, processor, examples).items():
        print(f"{attr:<7} mean {np.mean(list(pairs.values())):.2f}: "
              + "  ".join(f"{k} {v:.2f}" for k, v in pairs.items()))


if __name__ == "__main__":
    main()
