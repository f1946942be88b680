"""Clip training data: the token layout is the inference prompt's; selection targets."""
import numpy as np
import torch

from vtp_compile.bench.evaluate import build_clip_prompt
from vtp_compile.scenes.clip_tasks import make_clip_dataset
from vtp_compile.scenes.clip_training import (ClipMixer, PackedClip, clip_selection_masks,
                                              encode_clip_batch, selection_loss)
from vtp_compile.scenes.model import build_processor
from vtp_compile.scenes.targets import SelectionHead, patch_shape_index

N = 196


def test_packed_clip_layout_is_the_inference_prompt():
    proc = build_processor()
    tok = proc.tokenizer
    items = ClipMixer(seed=0, max_qa=4).batch(3)
    ids, mask, labels, spans, visual = encode_clip_batch(items, tok, N)
    assert len(visual) == 4 * N and ids.shape[0] == 3
    for i, item in enumerate(items):
        q = item.qas[0][1]
        ref = proc(images=item.frames, text=[build_clip_prompt(proc, q, 4)],
                   return_tensors="pt").input_ids[0]
        assert ids[i, :len(ref)].tolist() == ref.tolist()   # first question as at inference
        assert tok.unk_token_id not in ids[i].tolist()
        assert (ids[i, visual] == tok.convert_tokens_to_ids("<image>")).all()
        # labels: the answer words and </s> of each question, nothing else
        row_spans = [s for s in spans if s[0] == i]
        assert len(row_spans) == len(item.qas)
        for (_, task, lo, hi), (t2, _, ans) in zip(row_spans, item.qas):
            assert task == t2
            assert tok.decode(labels[i, lo:hi]) == ans + " </s>"
        assert int((labels[i] != -100).sum()) == sum(hi - lo for _, _, lo, hi in row_spans)
        assert mask[i].sum() == max(s[3] for s in row_spans)


def test_selection_masks_point_at_the_asked_frame_and_object():
    ex = next(e for e in make_clip_dataset("clip_grounding", 20)
              if len(e.clip.frame_scene(int(e.question.split()[7]) - 1).shapes) > 1)
    t = int(ex.question.split()[7]) - 1
    item = PackedClip(ex.frames, ex.clip, [(ex.task, ex.question, ex.answer),
                                          ("clip_counting", "how many shapes in the clip ?", "1")])
    (grounding, clip_count) = clip_selection_masks([item])
    assert clip_count is None
    per_frame = grounding.reshape(4, N)
    assert per_frame[t].any() and not np.delete(per_frame, t, axis=0).any()
    scene = ex.clip.frame_scene(t)
    colour, kind = ex.question.split()[3:5]
    (k,) = [i for i, s in enumerate(scene.shapes) if (s.colour, s.kind) == (colour, kind)]
    assert np.array_equal(per_frame[t], patch_shape_index(scene) == k + 1)


def test_selection_loss_prefers_the_target_patches():
    torch.manual_seed(0)
    head = SelectionHead(8, dim=4)
    hidden = torch.randn(1, 20, 8)
    visual = torch.arange(2, 12)
    mask = np.zeros(10, dtype=bool)
    mask[3] = True
    loss = selection_loss(head, hidden, [(0, "clip_grounding", 15, 17)], [mask], visual)
    hidden2 = hidden.clone()
    hidden2[0, 5] = hidden[0, 14] * 5   # visual token 3 (position 5) aligned with the query
    with torch.no_grad():
        head.k.weight.copy_(head.q.weight)
        head.k.bias.copy_(head.q.bias)
    better = selection_loss(head, hidden2, [(0, "clip_grounding", 15, 17)], [mask], visual)
    assert loss is not None and better < loss
    assert selection_loss(head, hidden, [(0, "x", 15, 17)], [None], visual) is None
