"""Frame-aware budgets and the video methods (VidCom2, DyCoke, FastVID) on clips, against the mask oracle
(testing/oracle_mask.py with testing/oracle_video.py: frames read from the layout the test wrote,
not from the graph), forward and ``generate``, and through Inductor.

Families (testing/support.py FRAMES): Qwen2-VL and Qwen2.5-VL (a clip is one run of tokens;
frames from the M-RoPE temporal positions), GLM-4V (timestamps between frames), InternVL and
SmolVLM (frames are images with labels between them), LLaVA-OneVision and LLaVA-NeXT-Video (one
run, 1-D positions: the ``frame_tokens`` option); Qwen3-VL and Qwen3.5 (timestamps between
frames) in ``generate`` only: Qwen3-VL's direct forward is not pruned (support.NOT_PRUNED), and
Qwen3.5's layer 1 follows a linear-attention layer, where the FastV case has nothing to read.
"""
import pytest
import torch

import vtp_compile
from vtp_compile.config import PruneConfig
from vtp_compile.errors import OptionError
from vtp_compile.testing import families as F, support
from vtp_compile.testing.multiplex import Multiplex
from vtp_compile.testing.oracle_mask import Pruning, masked_forward, masked_generate

from ..helpers import assert_tokens_match, kept_positions, record_case

# name -> (vtp options, oracle Pruning), each at ratio 0.3 of a row's visual tokens
CASES = {
    "vidcom2": ({"method": "vidcom2"}, Pruning("vidcom2", ratio=0.3, per_frame="unique")),
    "vidcom2-even": ({"method": "vidcom2", "per_frame": "even", "min_per_frame": 2},
                     Pruning("vidcom2", ratio=0.3, per_frame="even", min_per_frame=2)),
    "dycoke": ({"method": "dycoke"}, Pruning("dycoke", ratio=0.3)),
    "fastvid": ({"method": "fastvid", "cuts": 1, "anchor_every": 2},
                Pruning("fastvid", ratio=0.3, tau=0.9, cuts=1, anchor_every=2)),
    "fastv-even": ({"method": "fastv", "layer": 1, "per_frame": "even"},
                   Pruning("fastv", ratio=0.3, layer=1, per_frame="even")),
    "random-even0": ({"method": "random", "per_frame": "even", "min_per_frame": 0},
                     Pruning("random", ratio=0.3, per_frame="even", min_per_frame=0)),
}


def _rows(family):
    """A long clip, a short clip after an image, a text-only row."""
    frames = 6 if F.FAMILIES[family].layout == "qwen" else 4
    # GLM-4V cannot take an image and a clip in one batch (transformers counts the clip's frames,
    # which use the image token, as image tokens): its second row is a shorter clip alone
    image = () if family == "glm4v" else (F.ImageSpec(),)
    return [F.RowSpec(3, 4, (), (F.VideoSpec(frames),)),
            F.RowSpec(5, 2, image, (F.VideoSpec(frames if family != "qwen2_vl" else 2),)),
            F.RowSpec(4, 3, ())]


def _setup(family, side="left"):
    model = F.build_model(family)
    x = F.make_inputs(family, model, _rows(family), padding_side=side)
    tokens = vtp_compile.frame_tokens(model)
    return model, x, F.visual_positions(family, model, x), F.frame_ids(family, model, x, tokens), tokens


def _opts(opts, inner="eager"):
    """No ``frame_tokens``: LLaVA-OneVision's and NeXT-Video's are read from the model's config
    (the oracle's frames use ``vtp_compile.frame_tokens(model)``)."""
    return {**opts, "ratio": 0.3, "inner_backend": inner}


@pytest.mark.parametrize("family", [f for f, p in support.FRAMES.items() if "forward" in p])
def test_frame_aware_selections_equal_the_oracle(family, dynamo_for):
    """Every case of ``CASES`` from one trace (testing/multiplex.py): logits at the kept positions
    equal the mask oracle's, which picks with the frames the layout says, and each frame keeps at
    least ``min_per_frame`` where the budget allows."""
    dynamo_for(family)
    model, x, visual, frames, tokens = _setup(family)
    mux = Multiplex({name: _opts(o) for name, (o, _) in CASES.items()})
    with torch.no_grad():
        want = {name: masked_forward(model, x, visual, p, frames=frames) for name, (_, p) in CASES.items()}
        model(**x)
        fast = torch.compile(model, backend=mux)
        for name, (logits, kept) in want.items():
            with mux.select(name):
                got = fast(**x).logits
            keep = kept_positions(x, visual, kept)
            torch.testing.assert_close(got[keep], logits[keep], atol=3e-5, rtol=1e-4,
                                       msg=lambda m: f"{family} {name}: {m}")
            assert 0 < sum(len(k) for k in kept) < int(visual.sum())
            least = CASES[name][1].min_per_frame
            if least and name.split("-")[0] not in ("dycoke", "fastvid"):
                for b, ks in enumerate(kept):
                    n = int(frames[b].max()) + 1
                    counts = [sum(int(frames[b, q]) == f for q in ks) for f in range(n)]
                    if n and len(ks) >= least * n:
                        assert min(counts) >= least, (family, name, b, counts)
            record_case("video/frames-forward")
        for name in CASES:
            assert all(r.sites for r in mux.reports[name] if r.phase == "prefill"), name


@pytest.mark.parametrize("family", [f for f, p in support.FRAMES.items() if "generate" in p])
def test_video_methods_generate(family, dynamo_for):
    """``generate`` with VidCom2, DyCoke and FastVID, left-padded: greedy tokens equal the
    oracle's (FastVID's merged tokens are what the decode step attends to)."""
    dynamo_for(family)
    model, x, visual, frames, tokens = _setup(family)
    names = support.FRAME_METHODS
    mux = Multiplex({n: _opts(CASES[n][0]) for n in names})
    with torch.no_grad():
        want = {n: masked_generate(model, x, visual, CASES[n][1], 2, frames=frames) for n in names}
        model(**x)
        model.compile(backend=mux)
        try:
            for n in names:
                with mux.select(n):
                    out = model.generate(**x, max_new_tokens=2, do_sample=False)
                assert_tokens_match(out[:, x["input_ids"].shape[1]:], want[n][0], want[n][1])
                record_case("video/frames-generate")
        finally:
            model._compiled_call_impl = None


@pytest.mark.inductor
@pytest.mark.parametrize("family", [f for f, p in support.FRAMES.items() if "inductor" in p])
def test_video_methods_through_inductor(family, dynamo_for):
    """The default path: the three video methods and FastV spread evenly over frames, compiled by
    Inductor, right-padded, equal to the oracle."""
    dynamo_for(family)
    model, x, visual, frames, tokens = _setup(family, side="right")
    names = ("vidcom2", "dycoke", "fastvid", "fastv-even")
    mux = Multiplex({n: _opts(CASES[n][0], inner="inductor") for n in names})
    with torch.no_grad():
        model(**x)
        fast = torch.compile(model, backend=mux)
        for n in names:
            logits, kept = masked_forward(model, x, visual, CASES[n][1], frames=frames)
            with mux.select(n):
                got = fast(**x).logits
            keep = kept_positions(x, visual, kept)
            torch.testing.assert_close(got[keep], logits[keep], atol=3e-5, rtol=1e-4)
            record_case("video/frames-inductor")


def test_frame_options_are_checked():
    """Bad frame options fail before anything is traced, naming what is valid."""
    with pytest.raises(OptionError, match="methods that take them: .*fastv.*vidcom2"):
        PruneConfig.from_options({"method": "divprune", "per_frame": "even"})
    with pytest.raises(OptionError, match=r"'per_frame' must be one of \['off', 'even', 'unique'\]"):
        PruneConfig.from_options({"method": "fastv", "per_frame": "uniform"})
    with pytest.raises(OptionError, match="'min_per_frame' must be an int >= 0"):
        PruneConfig.from_options({"method": "vidcom2", "min_per_frame": -1})
    with pytest.raises(OptionError, match="'frame_tokens' must be a positive int"):
        PruneConfig.from_options({"method": "vidcom2", "frame_tokens": 0})
    with pytest.raises(OptionError, match="need 'per_frame'"):
        PruneConfig.from_options({"method": "fastv", "min_per_frame": 2})
    for method in ("dycoke", "fastvid"):
        with pytest.raises(OptionError, match=f"{method} spreads its budget over frames itself"):
            PruneConfig.from_options({"method": method, "per_frame": "even"})
    assert PruneConfig.from_options({"method": "vidcom2"}).keep.frames.alloc == "unique"
    assert PruneConfig.from_options({"method": "fastv"}).keep.frames is None


def test_frame_tokens_from_the_config():
    assert vtp_compile.frame_tokens(F.build_model("llava_onevision")) == 4      # 4x4 grid, pooled to 2x2
    assert vtp_compile.frame_tokens(F.build_model("llava_next_video")) == 4
    assert vtp_compile.frame_tokens(F.build_model("qwen2_vl")) is None


def test_frame_tokens_are_filled_in_from_the_compiled_models_config(caplog):
    """The backend reads ``frame_tokens`` from the model's config (graph/traced_model.py) for
    the methods that read frames, unless given; other families and methods are left alone."""
    from types import SimpleNamespace

    from vtp_compile.video import with_frame_tokens
    onevision = F.build_model("llava_onevision").config
    vidcom2 = PruneConfig.from_options({"method": "vidcom2"})
    with caplog.at_level("INFO", logger="vtp_compile"):
        assert with_frame_tokens(vidcom2, onevision).keep.frames.frame_tokens == 4
    assert "frame_tokens=4 read from the model's config (llava_onevision" in caplog.text
    given = PruneConfig.from_options({"method": "vidcom2", "frame_tokens": 2})
    assert with_frame_tokens(given, onevision) is given
    fastv = PruneConfig.from_options({"method": "fastv"})
    assert with_frame_tokens(fastv, onevision) is fastv
    assert with_frame_tokens(vidcom2, F.build_model("qwen2_vl").config) is vidcom2
    assert with_frame_tokens(vidcom2, None) is vidcom2
    even = PruneConfig.from_options({"method": "fastv", "per_frame": "even"})
    assert with_frame_tokens(even, SimpleNamespace(model_type="llava_next_video", vision_config=SimpleNamespace(
        image_size=32, patch_size=8), spatial_pool_stride=2)).keep.frames.frame_tokens == 4
