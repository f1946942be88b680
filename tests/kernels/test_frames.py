"""kernels/frames.py (frame ids, the per-frame apportionment), kernels/vidcom2.py and
kernels/dycoke.py against the plain loops of testing/oracle_video.py, on drawn layouts."""
import torch
from hypothesis import given, strategies as st

from vtp_compile.kernels import dycoke, fastvid, frames, vidcom2
from vtp_compile.testing.oracle_pruning import Pruning
from vtp_compile.kernels.select import keep_mask
from vtp_compile.testing import oracle_video

from ..helpers import record_case


@st.composite
def rows(draw, equal=False):
    """A batch of rows: text and visual runs (frames of ``equal`` size when asked), padding at the
    end, features, scores, a keep count per row."""
    B = draw(st.integers(1, 3))
    size = draw(st.integers(1, 5))
    out = []
    for _ in range(B):
        toks = [False] * draw(st.integers(0, 2))
        for _ in range(draw(st.integers(0, 5))):
            toks += [True] * (size if equal else draw(st.integers(1, 6))) + [False] * draw(st.integers(1, 2))
        out.append(toks)
    L = max(len(r) for r in out) + 1
    vis = torch.zeros(B, L, dtype=torch.bool)
    for b, r in enumerate(out):
        vis[b, : len(r)] = torch.tensor(r, dtype=torch.bool)
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    feats = torch.randn(B, L, 6, generator=g)
    scores = torch.randint(0, 4, (B, L), generator=g).float()          # ties on purpose
    k = torch.tensor([draw(st.integers(0, int(vis[b].sum()) + 2)) for b in range(B)])
    return vis, feats, scores, k, draw(st.integers(0, 3))


def _loop_ids(vis: torch.Tensor) -> torch.Tensor:
    out = torch.full(vis.shape, -1, dtype=torch.long)
    for b in range(vis.shape[0]):
        f = -1
        for p in range(vis.shape[1]):
            if vis[b, p]:
                if p == 0 or not vis[b, p - 1]:
                    f += 1
                out[b, p] = f
    return out


def _row(vis, fid, b):
    pos = vis[b].nonzero().flatten().tolist()
    return pos, [int(fid[b, q]) for q in pos]


def _kept(score, vis, k):
    km = keep_mask(score, vis, torch.ones_like(vis), k)
    return [sorted(q for q in (km[b] & vis[b]).nonzero().flatten().tolist()) for b in range(vis.shape[0])]


def test_frame_ids_runs_temporal_positions_and_fixed_lengths():
    vis = torch.tensor([[0, 1, 1, 1, 1, 0, 1, 1, 0, 1, 1, 1, 1, 1]], dtype=torch.bool)
    assert frames.frame_ids(vis, None, 0).tolist() == [[-1, 0, 0, 0, 0, -1, 1, 1, -1, 2, 2, 2, 2, 2]]
    t = torch.tensor([[0, 4, 4, 6, 6, 9, 9, 9, 9, 1, 1, 1, 2, 2]])
    assert frames.frame_ids(vis, t, 0).tolist() == [[-1, 0, 0, 1, 1, -1, 2, 2, -1, 3, 3, 3, 4, 4]]
    assert frames.frame_ids(vis, None, 2).tolist() == [[-1, 0, 0, 1, 1, -1, 2, 2, -1, 3, 3, 4, 4, 5]]


@given(rows(), st.booleans())
def test_frame_priority_is_the_sequential_apportionment(case, even):
    """The top k of ``frame_priority`` equal oracle_video.apportion (the greedy, one pick at a time)
    for every row, with weights the frames' sizes (exact) or drawn positive floats."""
    vis, feats, scores, k, least = case
    fid = frames.frame_ids(vis, None, 0)
    assert torch.equal(fid, _loop_ids(vis))
    sizes = frames.frame_sizes(fid, vis)
    weight = sizes if even else torch.where(sizes > 0, 0.5 + feats[..., 0].abs(), torch.zeros_like(sizes))
    got = _kept(frames.frame_priority(scores, fid, vis, weight, least), vis, k)
    for b in range(vis.shape[0]):
        pos, fr = _row(vis, fid, b)
        w = {f: (int(sizes[b, f]) if even else float(weight[b, f])) for f in set(fr)}
        sel = oracle_video.apportion([float(scores[b, q]) for q in pos], fr, pos, int(k[b]), least, w)
        assert got[b] == sorted(pos[i] for i in sel)
    record_case("kernel/frame_priority")


@given(rows(), st.sampled_from(["unique", "even", "off"]))
def test_vidcom2_picks_are_the_loops(case, alloc):
    vis, feats, _, k, least = case
    fid = frames.frame_ids(vis, None, 0)
    score = vidcom2.vidcom2_scores(feats, fid, vis)
    if alloc != "off":
        weight = (vidcom2.vidcom2_frame_weights(feats, fid, vis) if alloc == "unique"
                  else frames.frame_sizes(fid, vis))
        score = frames.frame_priority(score, fid, vis, weight, least)
    got = _kept(score, vis, k)
    for b in range(vis.shape[0]):
        pos, fr = _row(vis, fid, b)
        if len(pos) == 2:   # two tokens mirror each other around their centre: an exact tie that
            continue        # float32 and the loop's float64 break either way
        sel = oracle_video.vidcom2(feats[b, pos], fr, pos, int(k[b]), alloc, least)
        assert got[b] == sorted(pos[i] for i in sel), (b, alloc)
    record_case("kernel/vidcom2")


@given(rows(equal=True))
def test_dycoke_picks_are_the_loops(case):
    vis, feats, _, k, least = case
    fid = frames.frame_ids(vis, None, 0)
    got = _kept(dycoke.dycoke_scores(feats, fid, vis, least), vis, k)
    for b in range(vis.shape[0]):
        pos, fr = _row(vis, fid, b)
        sel = oracle_video.dycoke(feats[b, pos], fr, pos, int(k[b]), least)
        assert got[b] == sorted(pos[i] for i in sel)
    record_case("kernel/dycoke")


@given(rows(), st.sampled_from([0.0, 0.4, 1.0]), st.integers(1, 3), st.integers(0, 2))
def test_fastvid_picks_and_merge_are_the_loops(case, context, every, cuts):
    vis, feats, _, k, least = case
    p = Pruning("fastvid", tau=0.9, cuts=cuts, context=context, anchor_every=every)
    fid = frames.frame_ids(vis, None, 0)
    score = fastvid.fastvid_scores(feats, fid, vis, k, 0.9, cuts, context, every, least)
    km = keep_mask(score, vis, torch.ones_like(vis), k)
    merged = fastvid.fastvid_merge(feats, fid, vis, km, score, 0.9, cuts, p.beta)
    got = _kept(score, vis, k)
    for b in range(vis.shape[0]):
        pos, fr = _row(vis, fid, b)
        sel, plan = oracle_video.fastvid(feats[b, pos], fr, pos, int(k[b]), p, least)
        assert got[b] == sorted(pos[i] for i in sel)
        want = oracle_video.fastvid_merge(feats[b, pos], plan, p.beta)
        torch.testing.assert_close(merged[b, pos], want, atol=1e-5, rtol=1e-5)
    record_case("kernel/fastvid")


def test_dycoke_windows():
    """Window positions: w0 reference, w1 and w2 against w0, w3 against w2; a size change starts a
    new clip."""
    sizes = torch.tensor([[4., 4, 4, 4, 4, 4, 2, 2, 0]])
    assert dycoke.window_back(sizes).tolist() == [[0, 1, 2, 1, 0, 1, 0, 1, 0]]
