"""The plugin's per-item selection (vtp_compile/serving/vllm/selection.py) for clips: the video
methods and ``per_frame`` against the loop oracles of testing/oracle_video.py, with each token's
frame from the clip's grid (token ``j`` of a ``(t, h, w)`` merged grid is in frame
``j // (h * w)``). Needs no vLLM (runs in the main suite too); the vLLM engine runs of the same
selections are in test_qwen_video.py."""
from __future__ import annotations

import pytest
import torch

from vtp_compile.methods.random_select import hash_scores
from vtp_compile.serving.vllm import options
from vtp_compile.serving.vllm.selection import select_image
from vtp_compile.sites import needs_frames
from vtp_compile.testing import oracle_video
from vtp_compile.testing.oracle_pruning import Pruning

# (frames t, merged grid h, w): clips of several lengths and sizes
GRIDS = [(2, 6, 6), (4, 3, 5), (6, 2, 4), (3, 4, 4)]
# vtp options -> the oracle's Pruning (at the same keep rule)
CASES = [
    ({"method": "vidcom2", "ratio": 0.3}, Pruning("vidcom2", ratio=0.3, per_frame="unique")),
    ({"method": "vidcom2", "budget": 11, "per_frame": "even", "min_per_frame": 2},
     Pruning("vidcom2", budget=11, per_frame="even", min_per_frame=2)),
    ({"method": "vidcom2", "budget": 9, "per_frame": "off"}, Pruning("vidcom2", budget=9, per_frame="off")),
    ({"method": "dycoke", "ratio": 0.3}, Pruning("dycoke", ratio=0.3)),
    ({"method": "dycoke", "budget": 13, "min_per_frame": 2}, Pruning("dycoke", budget=13, min_per_frame=2)),
    ({"method": "fastvid", "ratio": 0.3, "cuts": 1, "anchor_every": 2},
     Pruning("fastvid", ratio=0.3, tau=0.9, cuts=1, anchor_every=2)),
    ({"method": "fastvid", "budget": 12}, Pruning("fastvid", budget=12, tau=0.9)),
]


def _clip(grid, seed, D=16):
    """Features of a clip whose frames drift (consecutive frames alike, as in a video)."""
    t, h, w = grid
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(h * w, D, generator=g)
    frames = [base + 0.3 * (i + 1) * torch.randn(h * w, D, generator=g) for i in range(t)]
    return torch.cat(frames), torch.arange(t).repeat_interleave(h * w)


def _oracle(p, feats, frame):
    V = feats.shape[0]
    picks, plan = oracle_video.select(p.method, feats, frame.tolist(), list(range(V)), p.n_keep(V), p)
    kept = sorted(picks)
    out = feats if plan is None else oracle_video.fastvid_merge(feats, plan, p.beta)
    return kept, out[kept]


@pytest.mark.parametrize("grid", GRIDS, ids=lambda g: "x".join(map(str, g)))
@pytest.mark.parametrize("opts,p", CASES, ids=lambda c: str(c) if isinstance(c, Pruning) else
                         "-".join(str(v) for v in c.values()))
def test_video_methods_equal_the_oracle(grid, opts, p):
    feats, frame = _clip(grid, sum(grid))
    spec = options.parse(opts)
    assert needs_frames(spec.site) and spec.reads_frames
    kept, out = select_image(spec, feats, temporal=frame)
    want_kept, want_out = _oracle(p, feats, frame)
    assert kept.tolist() == want_kept
    torch.testing.assert_close(out, want_out.float(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("grid", GRIDS, ids=lambda g: "x".join(map(str, g)))
@pytest.mark.parametrize("least", [0, 1, 3])
def test_random_per_frame_even(grid, least):
    """``per_frame="even"`` on an image method: the hash scores apportioned over the frames."""
    feats, frame = _clip(grid, 7)
    V = feats.shape[0]
    spec = options.parse({"method": "random", "ratio": 0.25, "seed": 3, "per_frame": "even",
                          "min_per_frame": least})
    kept, _ = select_image(spec, feats, temporal=frame)
    scores = hash_scores(torch.ones(1, V, dtype=torch.bool), 3)[0].tolist()
    sizes = oracle_video.sizes(frame.tolist())
    want = oracle_video.apportion(scores, frame.tolist(), list(range(V)), spec.n_keep(V), least, sizes)
    assert kept.tolist() == sorted(want)
    plain = options.parse({"method": "random", "ratio": 0.25, "seed": 3})
    if least == 0:     # without the frame rule the top scores are kept, frames or not
        assert select_image(plain, feats)[0].tolist() == sorted(
            sorted(range(V), key=lambda i: (-scores[i], i))[:spec.n_keep(V)])


def test_an_image_is_one_frame():
    """No temporal positions (an image), or one temporal position for all: one frame."""
    feats, _ = _clip((1, 5, 5), 3)
    for opts in ({"method": "vidcom2", "budget": 7}, {"method": "fastvid", "budget": 6}):
        spec = options.parse(opts)
        a = select_image(spec, feats)
        b = select_image(spec, feats, temporal=torch.zeros(25, dtype=torch.long))
        assert a[0].tolist() == b[0].tolist()
        torch.testing.assert_close(a[1], b[1])


def test_prompt_around_the_clip_does_not_move_frames():
    """Text embeddings before and after the clip (as for prompt-reading methods) change nothing
    for a method that does not read them: frames are numbered over the clip's run only."""
    feats, frame = _clip((3, 3, 3), 5)
    spec = options.parse({"method": "vidcom2", "budget": 8})
    a = select_image(spec, feats, temporal=frame)
    b = select_image(spec, feats, temporal=frame, before=torch.randn(4, 16), after=torch.randn(3, 16))
    assert a[0].tolist() == b[0].tolist()


def test_temporal_of_the_wrong_length_is_an_error():
    feats, frame = _clip((2, 3, 3), 1)
    with pytest.raises(ValueError, match="temporal"):
        select_image(options.parse({"method": "dycoke", "budget": 4}), feats, temporal=frame[:-1])


def test_frame_tokens_cut_each_frame():
    """``frame_tokens`` cuts every frame into pieces of that many tokens, from the frame's start
    (kernels/frames.py), as on the transformers path."""
    grid = (3, 3, 5)
    feats, frame = _clip(grid, 11)
    j = torch.arange(feats.shape[0]) % 15
    cut = frame * 4 + j // 4            # 15 tokens per frame: pieces of 4, 4, 4, 3
    spec = options.parse({"method": "vidcom2", "budget": 14, "per_frame": "even", "frame_tokens": 4})
    kept, _ = select_image(spec, feats, temporal=frame)
    p = Pruning("vidcom2", budget=14, per_frame="even")
    assert kept.tolist() == _oracle(p, feats, cut)[0]
    assert kept.tolist() != _oracle(p, feats, frame)[0]
