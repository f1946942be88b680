"""The processor's placeholder cut: one run of embedding slots cut to ``n_keep``, the tokens
around it (start/end markers) kept."""
from __future__ import annotations

import pytest

from vtp_compile.serving.vllm.processor import cut_run


def test_plain_run_is_cut():
    assert cut_run([7] * 6, 2) == [7, 7]


def test_mixed_list_is_refused():
    with pytest.raises(ValueError, match="own adapter"):
        cut_run([1, 7, 7, 2], 1)


@pytest.mark.vllm
def test_details_keep_markers_and_selection():
    from vllm.multimodal.processing import PromptUpdateDetails
    full = PromptUpdateDetails.select_token_id([1, 9, 9, 9, 9, 2], 9)
    out = cut_run(full, 2)
    assert out.full == [1, 9, 9, 2]
    assert out.is_embed(out.full).tolist() == [False, True, True, False]


@pytest.mark.vllm
def test_details_with_two_runs_are_refused():
    from vllm.multimodal.processing import PromptUpdateDetails
    with pytest.raises(ValueError, match="own adapter"):
        cut_run(PromptUpdateDetails.select_token_id([1, 9, 9, 3, 9, 2], 9), 2)
