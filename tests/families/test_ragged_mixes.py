"""New mixes of visual counts per row (dynamic resolution, several or no images) through one
compiled generate: oracle-equal every time, and a bounded number of graphs."""
import torch

from tests.helpers import REPORTS
from vtp_compile.testing import families as F
from vtp_compile.testing.oracle_mask import Pruning, masked_generate

from ..helpers import assert_tokens_match, record_case

I = F.ImageSpec
# Qwen2.5-VL rounds sizes to its merged patch grid: per-row visual counts (12, 12, 0),
# (16, 4, 4), (0, 12, 12) and other prompt lengths. The batch total stays 24: transformers'
# placeholder check (get_placeholder_mask) makes Dynamo guard on the total, so a new total
# compiles again under any backend (plain torch.compile too); vtp adds no guard of its own.
MIXES = [
    [F.RowSpec(3, 4, (I(48, 64),)), F.RowSpec(5, 2, (I(32, 48), I(48, 32))), F.RowSpec(4, 3, ())],
    [F.RowSpec(2, 3, (I(64, 64),)), F.RowSpec(4, 4, (I(32, 32),)), F.RowSpec(3, 5, (I(32, 32),))],
    [F.RowSpec(6, 2, ()), F.RowSpec(3, 3, (I(64, 32), I(32, 32))), F.RowSpec(2, 2, (I(48, 64),))],
]


def test_new_mixes_of_counts_reuse_the_compiled_graphs():
    family = "qwen2_5_vl"
    model = F.build_model(family)
    start = len(REPORTS)
    with torch.no_grad():
        model(**F.make_inputs(family, model, MIXES[0], seed=0))
        model.compile(backend="vtp", options={"method": "fastv", "budget": 3, "layer": 1,
                                             "inner_backend": "eager"})
        for i, rows in enumerate(MIXES):
            inputs = F.make_inputs(family, model, rows, padding_side="left", seed=i)
            visual = F.visual_positions(family, model, inputs)
            want, margins, _ = masked_generate(model, inputs, visual, Pruning("fastv", budget=3, layer=1), 2)
            out = model.generate(**inputs, max_new_tokens=2, do_sample=False)
            assert_tokens_match(out[:, inputs["input_ids"].shape[1]:], want, margins)
            record_case("family/generate")
    phases = [r.phase for r in REPORTS[start:] if r.phase in ("prefill", "decode")]
    assert all(r.sites for r in REPORTS[start:] if r.phase == "prefill"), "a prefill went unpruned"
    # prefill: one static graph, then one dynamic; decode likewise; no graph per new mix
    assert phases.count("prefill") <= 2 and phases.count("decode") <= 2, phases
