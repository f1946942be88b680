"""Clip task answers follow from the clip description; questions are unambiguous; seeds."""
from collections import Counter

import pytest
from hypothesis import given, settings, strategies as st

from vtp_compile.scenes.clip_tasks import (CLIP_TASK_NAMES, MAX_CLIP_TASK_SALT, ClipExample,
                                           check_clip_task, clip_seed, clip_vocabulary,
                                           frame_prompt, iter_clip_examples, make_clip_dataset)
from vtp_compile.scenes.clip_training import ClipMixer
from vtp_compile.scenes.generator import GRID, IMAGE_SIZE
from vtp_compile.scenes.model import build_tokenizer
from vtp_compile.scenes.tasks import EVAL_SEED, vocabulary


def _track(clip, colour, kind):
    (tr,) = [t for t in clip.tracks if (t.colour, t.kind) == (colour, kind)]
    return tr


def _check(ex: ClipExample):
    clip, w = ex.clip, ex.question.split()
    assert len(ex.frames) == clip.n_frames and ex.image is ex.frames[0]
    if w[:3] == ["which", "appeared", "first"]:  # ..., the C K or the C K ?
        a, b = _track(clip, w[5], w[6]), _track(clip, w[9], w[10])
        assert a.frames[0] != b.frames[0]
        assert ex.answer == (a if a.frames[0] < b.frames[0] else b).name
    elif w[:2] == ["what", "moved"]:
        def centre_x(tr, t):
            return (tr.boxes[t][0] + tr.boxes[t][2]) / 2
        sign = -1 if w[2] == "left" else 1
        movers = [t for t in clip.tracks
                  if sign * (centre_x(t, t.frames[-1]) - centre_x(t, t.frames[0])) > 0]
        assert [m.name for m in movers] == [ex.answer]
    elif w[:4] == ["how", "many", "shapes", "in"]:
        if w[5] == "clip":
            assert ex.answer == str(len(clip.tracks))
        else:
            t = int(w[5]) - 1
            assert ex.answer == str(sum(tr.boxes[t] is not None for tr in clip.tracks))
    elif w[:3] == ["where", "is", "the"]:  # where is the C K in frame T ?
        t = int(w[7]) - 1
        box = _track(clip, w[3], w[4]).boxes[t]
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        lines = [IMAGE_SIZE * k / GRID for k in range(1, GRID)]
        assert all(abs(c - line) >= 3 for c in (cx, cy) for line in lines)
        assert ex.answer == f"row {min(GRID, int(cy * GRID // IMAGE_SIZE) + 1)} col {min(GRID, int(cx * GRID // IMAGE_SIZE) + 1)}"
    else:
        raise AssertionError(ex.question)


@pytest.mark.parametrize("task", CLIP_TASK_NAMES)
def test_answers_follow_from_the_clip(task):
    exs = make_clip_dataset(task, 40)
    for ex in exs:
        assert ex.task == task and ex.seed >= EVAL_SEED
        _check(ex)
    assert len(Counter(e.answer for e in exs)) >= 3


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10**9), task=st.sampled_from(CLIP_TASK_NAMES), n_frames=st.integers(2, 6))
def test_answers_any_seed_and_frame_count(seed, task, n_frames):
    ex = next(iter_clip_examples(task, seed, n_frames))
    assert len(ex.frames) == n_frames
    _check(ex)


def test_every_question_form_is_asked():
    starts = Counter(" ".join(e.question.split()[:3]) + (" clip" if "clip" in e.question else "")
                     for t in CLIP_TASK_NAMES for e in make_clip_dataset(t, 60))
    for form in ("which appeared first", "what moved left", "what moved right",
                 "how many shapes clip", "how many shapes", "where is the"):
        assert starts[form] > 0, (form, starts)


def test_deterministic_vocabulary_and_token_ids():
    a, b = make_clip_dataset("clip_order", 5, seed=42), make_clip_dataset("clip_order", 5, seed=42)
    assert [(e.question, e.answer, e.seed) for e in a] == [(e.question, e.answer, e.seed) for e in b]
    vocab = set(vocabulary()) | set(clip_vocabulary())
    for task in CLIP_TASK_NAMES:
        for ex in make_clip_dataset(task, 30, seed=0):
            assert set(ex.question.split()) | set(ex.answer.split()) <= vocab
    assert set(frame_prompt(6).split()) <= vocab | {"<image>"}
    # clip words are appended: the image words keep the ids of the image-only tokenizer
    ids = build_tokenizer().get_vocab()
    assert [ids[w] for w in vocabulary()] == list(range(5, 5 + len(vocabulary())))
    assert sorted(ids[w] for w in clip_vocabulary()) == list(
        range(5 + len(vocabulary()), len(ids)))


def test_training_seeds_never_reach_heldout_range():
    assert all(item.clip.seed < EVAL_SEED for item in ClipMixer(seed=0).batch(4))
    assert clip_seed("clip_grounding", EVAL_SEED - 1 - MAX_CLIP_TASK_SALT) < EVAL_SEED
    with pytest.raises(ValueError, match="held-out"):
        ClipMixer(seed=19)
    with pytest.raises(ValueError, match="valid clip tasks"):
        check_clip_task("order")
