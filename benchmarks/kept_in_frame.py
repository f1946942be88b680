"""Where a clip-wide budget goes: for held-out `where is X in frame T ?` clips, how many of the
tokens each method keeps (budget 49 of 784) lie in the asked frame and on the asked object
(docs/fidelity.md, clips). Run from the repository root: python benchmarks/kept_in_frame.py
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a plain checkout

import numpy as np, torch
torch.set_num_threads(1)
from vtp_compile import explain, configure_dynamo
from vtp_compile.scenes import load_scene_model
from vtp_compile.scenes.clip_tasks import make_clip_dataset
from vtp_compile.scenes.targets import patch_shape_index
from vtp_compile.bench.evaluate import build_clip_prompt, prepare_processor
configure_dynamo()
model, proc = load_scene_model(); prepare_processor(proc)
exs = make_clip_dataset("clip_grounding", 40)
for method in ["fastv", "cdpruner", "divprune", "random"]:
    in_frame, on_obj, on_obj_any, has = [], [], [], []
    for ex in exs:
        w = ex.question.split(); t = int(w[7]) - 1
        inputs = proc(images=ex.frames, text=[build_clip_prompt(proc, ex.question, 4)], return_tensors="pt")
        rep = explain(model, inputs, {"method": method, "budget": 49, "inner_backend": "eager"})
        site = rep.sites[-1]
        kept = [i for i in site.kept_visual_index[0].tolist() if i >= 0]
        frames = [i // 196 for i in kept]
        in_frame.append(sum(f == t for f in frames))
        scene = ex.clip.frame_scene(t)
        k = [j for j, s in enumerate(scene.shapes) if (s.colour, s.kind) == (w[3], w[4])][0]
        obj = set(np.flatnonzero(patch_shape_index(scene) == k + 1) + 196 * t)
        on_obj.append(sum(i in obj for i in kept)); has.append(len(obj) > 0)
        tr = [x for x in ex.clip.tracks if (x.colour, x.kind) == (w[3], w[4])][0]
        allobj = set()
        for u in tr.frames:
            sc = ex.clip.frame_scene(u); kk = [j for j, s in enumerate(sc.shapes) if (s.colour, s.kind) == (w[3], w[4])][0]
            allobj |= set(np.flatnonzero(patch_shape_index(sc) == kk + 1) + 196 * u)
        on_obj_any.append(sum(i in allobj for i in kept))
    print(f"{method}@49: kept in the asked frame {np.mean(in_frame):.1f} of 49 (uniform 12.2); on the object there "
          f"{np.mean(on_obj):.1f}, zero in {sum(o == 0 for o in on_obj)}/40; on the object in any frame {np.mean(on_obj_any):.1f}", flush=True)
