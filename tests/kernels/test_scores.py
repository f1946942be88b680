"""attn_row_scores (vtp_compile/kernels/scores.py) against SDPA's own weights."""
import torch
from hypothesis import given, settings, strategies as st

import vtp_compile.kernels  # noqa: F401
from ..helpers import record_case


@settings(max_examples=30)
@given(B=st.integers(1, 3), H=st.sampled_from([1, 2, 4]), rep=st.sampled_from([1, 2]),
       S=st.integers(1, 20), D=st.sampled_from([4, 8]), masked=st.booleans())
def test_attn_row_scores_matches_sdpa_weights(B, H, rep, S, D, masked):
    record_case("kernel/scores")
    q = torch.randn(B, H * rep, S, D)
    k = torch.randn(B, H, S, D)
    mask = (torch.rand(B, S) > 0.3) if masked else None
    if mask is not None:
        mask[:, -1] = True
    got = torch.ops.vtp.attn_row_scores(q, k, mask, D ** -0.5, -1)
    kk = k.repeat_interleave(rep, 1)
    w = (q[:, :, -1:] @ kk.transpose(-1, -2))[:, :, 0] * D ** -0.5
    if mask is not None:
        w = w.masked_fill(~mask[:, None], float("-inf"))
    torch.testing.assert_close(got, w.softmax(-1).mean(1))
