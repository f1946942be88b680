"""Video clips on every family whose transformers model takes them, pruned and checked against
the family-agnostic mask oracle (vtp_compile/testing/oracle_mask.py), from the tables
docs/support.md's video matrix prints (vtp_compile/testing/support.py: VIDEO, VIDEO_BATCHES).

A clip's visual tokens are visual tokens like an image's: the oracle marks every position the
model splices a feature into (testing/families.visual_positions: image and video tokens; never a
timestamp, a frame label, a vision start/end token). Batches: clip rows with a text-only row, and
(where transformers takes it) an image + clip row, a clip row and a text-only row in one batch;
there the model splices the images, then the clips, into the same embeddings (two
``masked_scatter`` in one graph: graph/vlm_graph.py prunes the union).
"""
import pytest
import torch

from vtp_compile.testing import families as F
from vtp_compile.testing import support
from vtp_compile.testing.multiplex import Multiplex
from vtp_compile.testing.oracle_mask import Pruning, masked_forward, masked_generate

from ..helpers import assert_tokens_match, kept_positions, record_case
from .test_families import ALVTS, _dstp, _opts, _pruning

CLIP = F.VideoSpec(4)            # 2 temporal patches on the Qwen/GLM towers


def batch_rows(family: str, batch: str) -> list:
    """The rows of ``batch`` ("video" or "image+video", support.VIDEO_BATCHES)."""
    short = F.VideoSpec(2) if F.FAMILIES[family].layout == "qwen" else CLIP   # clips of other lengths
    if batch == "video":
        return [F.RowSpec(3, 4, (), (CLIP,)), F.RowSpec(5, 2, (), (short,)), F.RowSpec(4, 3, ())]
    return [F.RowSpec(3, 4, (F.ImageSpec(),), (CLIP,)), F.RowSpec(5, 2, (), (short,)), F.RowSpec(4, 3, ())]


def _inputs(family, model, batch, side="left", seed=2):
    inputs = F.make_inputs(family, model, batch_rows(family, batch), padding_side=side, seed=seed)
    return inputs, F.visual_positions(family, model, inputs)


def test_clip_tokens_are_visual_and_timestamps_are_text():
    """What the oracle and vtp count as visual in a clip: the spliced tokens only."""
    model = F.build_model("qwen3_vl")
    inputs, visual = _inputs("qwen3_vl", model, "image+video")
    ids = inputs["input_ids"]
    assert visual.sum(-1).tolist() == [16 + 2 * 16, 16, 0]            # image + 2 frames, 1 frame
    assert not visual[ids == F.TOKENS["start"]].any() and not visual[ids == F.TOKENS["end"]].any()
    assert (inputs["mm_token_type_ids"] == 2).sum() == (ids == F.TOKENS["video"]).sum()
    frames = (ids[0] == F.TOKENS["video"]).nonzero().flatten().tolist()    # row 0's two frames
    gap = [p for p in range(frames[0], frames[-1]) if p not in frames]       # </vs> <ts> <vs>
    assert len(gap) == F.TIMESTAMP_TOKENS + 2 and not visual[0, gap].any()
    assert all(F.TEXT_LO <= int(ids[0, p]) < F.TEXT_HI for p in gap[1:-1])   # the timestamp: text


@pytest.mark.parametrize("family", [f for f, paths in support.VIDEO.items() if "generate" in paths])
def test_video_generate_every_method(family, dynamo_for):
    """``generate`` with clips, left-padded: every method of ``support.METHODS`` the family takes
    (those ``support.REFUSED`` lists for it excepted; DSTP (three new tokens: two decode steps
    that re-score active and reserve) and ALVTS where the image matrix claims their generate,
    ``support.video_extra``) from one trace (testing/multiplex.py),
    on each of the family's ``support.VIDEO_BATCHES``; greedy tokens (prefill and a decode step
    from the compacted cache) equal to the mask oracle's, and the prefill pruned."""
    dynamo_for(family)
    model = F.build_model(family)
    cases = {m: (_opts(family, m), _pruning(family, m), 2) for m in support.METHODS
             if family not in support.REFUSED.get(m, ())}
    if family in support.video_extra("dstp"):
        cases["dstp"] = (*_dstp(family), 3)
    if family in support.video_extra("alvts"):
        cases["alvts"] = (ALVTS, Pruning("alvts", budget=3, layer=1, rank=3), 2)
    methods = list(cases)
    mux = Multiplex({m: c[0] for m, c in cases.items()})
    failures = []
    with torch.no_grad():
        batches = [_inputs(family, model, b) for b in support.video_batches(family)]
        want = [{m: masked_generate(model, x, vis, cases[m][1], cases[m][2]) for m in methods}
                for x, vis in batches]
        model(**batches[0][0])
        model.compile(backend=mux)
        try:
            for (x, _), w, name in zip(batches, want, support.video_batches(family)):
                for m in methods:
                    with mux.select(m):
                        out = model.generate(**x, max_new_tokens=cases[m][2], do_sample=False)
                    tokens, margins, _ = w[m]
                    try:
                        assert_tokens_match(out[:, x["input_ids"].shape[1]:], tokens, margins)
                        record_case("video/generate")
                    except AssertionError as e:
                        failures.append(f"{name} {m}: {e}")
            for m in methods:       # every prefill graph (each batch's) pruned, none left unpruned
                prefills = [r for r in mux.reports[m] if r.phase == "prefill"]
                if not prefills or not all(r.sites for r in prefills):
                    failures.append(f"{m}: a prefill left unpruned: {[r.skipped for r in prefills]}")
                skipped = [r.skipped for r in mux.reports[m] if r.skipped and "splice" in r.skipped]
                if skipped:
                    failures.append(f"{m}: {skipped}")
        finally:
            model._compiled_call_impl = None
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("family", [f for f, paths in support.VIDEO.items() if "forward" in paths])
def test_video_forward_both_padding_sides(family, dynamo_for):
    """A direct compiled forward with FastV: the family's last batch (image + clip row, clip row,
    text-only row; GLM-4V: clip rows and a text-only row), padded left and right (one compiled
    model; the right-padded batch has the same shapes), logits at the kept positions equal to
    the mask oracle's. (The clip-only batch is one splice, the path every image family's forward
    test takes; its generate is checked above.)"""
    dynamo_for(family)
    model = F.build_model(family)
    pruning = _pruning(family)
    fast = None
    with torch.no_grad():
        for batch in support.video_batches(family)[-1:]:
            for side in ("left", "right"):
                x, visual = _inputs(family, model, batch, side)
                want, kept = masked_forward(model, x, visual, pruning)
                if fast is None:
                    model(**x)
                    fast = torch.compile(model, backend="vtp", options=_opts(family))
                got = fast(**x).logits
                keep = kept_positions(x, visual, kept)
                torch.testing.assert_close(got[keep], want[keep], atol=3e-5, rtol=1e-4,
                                           msg=lambda m: f"{batch}, {side}-padded: {m}")
                assert sum(len(k) for k in kept) < int(visual.sum()), "the oracle kept everything"
                record_case("video/forward")


@pytest.mark.parametrize("family,batch", list(support.VIDEO_NOT))
def test_video_batches_transformers_rejects(family, batch):
    """What ``support.VIDEO_NOT`` says transformers itself refuses, it refuses (uncompiled)."""
    model = F.build_model(family)
    x = F.make_inputs(family, model, batch_rows(family, batch))
    with torch.no_grad(), pytest.raises(Exception, match=support.VIDEO_NOT[family, batch][1]):
        model(**x)


def test_only_a_chain_of_splices_is_taken():
    """Two ``masked_scatter`` in one graph: a chain (the second splices into the first's output,
    which nothing else reads) is one visual set; any other pair is refused (unpruned)."""
    import torch.fx as fx

    from vtp_compile.graph.fx_utils import Unsupported, is_masked_scatter
    from vtp_compile.graph.vlm_graph import _splice_chain

    def chain(e, m1, f1, m2, f2):
        return e.masked_scatter(m1, f1).masked_scatter(m2, f2)

    def apart(e, m1, f1, m2, f2):
        return e.masked_scatter(m1, f1) + e.masked_scatter(m2, f2)

    def read_between(e, m1, f1, m2, f2):
        a = e.masked_scatter(m1, f1)
        return a.masked_scatter(m2, f2) + a

    def splices(fn):
        return [n for n in fx.symbolic_trace(fn).graph.nodes if is_masked_scatter(n)]

    assert len(_splice_chain(splices(chain))) == 2
    for fn in (apart, read_between):
        with pytest.raises(Unsupported, match="do not form one chain"):
            _splice_chain(splices(fn))
