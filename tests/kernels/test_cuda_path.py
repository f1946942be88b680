"""Every op's CUDA code path reads no device data on the host (runs on CPU, no GPU needed).

Each path runs under ``FakeTensorMode`` on fake CUDA tensors: a host read (``.item()``,
``int(t)``, ``bool(t)``, ``nonzero``, ``torch.equal``, ``allclose``, boolean indexing) raises
there, so these tests fail on any host synchronisation. Decomposed ops run their decomposition
(what Inductor compiles); Triton-kernel ops run their launcher with the kernel launches
recorded instead of executed (fake tensors have no data). On a CPU-only build fake "meta"
tensors stand in for fake CUDA ones (see ``DEV``). The one sanctioned host read, the
compacted width of ``select_keep``, is the last step of its launcher and is checked apart.
"""
import types

import pytest
import torch
from torch._subclasses.fake_tensor import DataDependentOutputException, FakeTensorMode

pytest.importorskip("triton")

from vtp_compile import shift_state  # noqa: E402
from vtp_compile.kernels import dstp, lowering  # noqa: E402

B, L, D, H, HKV, HD = 2, 13, 8, 4, 2, 6
# Fake CUDA tensors need a CUDA build (a CPU-only build cannot run CUDA device guards, even on
# fake tensors); there, fake "meta" tensors stand in: the ops' code paths branch on
# ``device.type == "cpu"`` only, so both take the CUDA path, and both raise on a host read.
DEV = "cuda" if torch.backends.cuda.is_built() else "meta"


def _inputs():
    """Fake CUDA inputs for every op, by name (created inside the fake mode)."""
    f = dict(device=DEV)
    b = dict(device=DEV, dtype=torch.bool)
    hidden = torch.empty(B, L, D, **f)
    vis, live = torch.empty(B, L, **b), torch.empty(B, L, **b)
    n_keep = torch.empty(B, dtype=torch.long, device=DEV)
    W = 5
    idx, slot = torch.empty(B, W, dtype=torch.long, device=DEV), torch.empty(B, W, **b)
    cache = torch.empty(B, HKV, L, HD, **f)
    grid = 3
    V = 2 * grid * grid
    return {
        "gather_seq": (cache, idx, 2, 0),
        "scatter_seq": (hidden, torch.empty(B, W, D, **f), idx, slot),
        "live_mask": (torch.empty(B, 1, W, W, **b), slot),
        "mark_dead": (cache, torch.empty(B, L, **b), True, 1),
        "to_positional": (torch.empty(B, HKV, W, HD, **f), idx, slot, L, True),
        "decode_mask": (torch.empty(B, 1, 1, L + 1, **b), cache, 1, False),
        "positional_mask": (torch.empty(B, 1, W, L, **b), cache, slot),
        "attn_row_scores": (torch.empty(B, H, 1, HD, **f), cache, torch.empty(B, L, **b), 0.4, -1),
        "topk_mask": (torch.empty(B, L, **f), vis, n_keep),
        "dist_consistency": (hidden, vis, live, "tag"),
        "anchor_merge": (hidden, vis, live, 3),
        "nuwa_anchor_scores": (torch.empty(B, V, **f), n_keep, grid, grid, 2),
        "nuwa_aggregate": (torch.empty(B, V + 3, D, **f), torch.empty(B, V + 3, **b),
                           torch.empty(B, V + 3, **b), torch.empty(B, V + 3, **f),
                           torch.empty(B, V, 5, **f), grid, grid, 0.265, 0.45),
        "vision_context": (torch.empty(V, D, **f), torch.empty(2, grid * grid, **f),
                           torch.empty(2, grid * grid, 5, **f), torch.empty(2, grid * grid, 4, **f),
                           torch.empty(2, grid * grid, **f), grid, grid, -2),
        "pdrop_keep": (n_keep, [2, 4, 8], 2, 5, 0, 1),
        "sparsevlm_keep": (n_keep, 1, 0, 1, 3),
        "sparsevlm_scores": (torch.empty(B, H, L, HD, **f), cache, torch.empty(B, L, L, **b), 0.4,
                             hidden, vis, live),
        "sparsevlm_recycle_rank": (torch.empty(B, L, **f), vis, live, n_keep),
        "sparsevlm_recycle_merge": (hidden, vis, torch.empty(B, L, **b), torch.empty(B, L, **f)),
        "dart_scores": (cache, hidden, vis, live, n_keep, 2),
        "visionzip_scores": (torch.empty(B, L, **f), vis, n_keep, 5, 32),
        "visionzip_merge": (hidden, vis, torch.empty(B, L, **b), torch.empty(B, L, **f),
                            torch.empty(B, L, HD, **f)),
        "cdpruner_scores": (hidden, vis, live, n_keep, 0.5),
        "select_keep": (torch.empty(B, L, **f), vis, live, n_keep),
        "divprune_scores": (hidden, vis, n_keep),
        "cluster_select_scores": (hidden, torch.empty(B, L, **f), vis, n_keep, 3),
        "dpp_greedy": (torch.empty(B, L, L, **f), vis, n_keep),
        "reserve_cover": (hidden, vis, live, n_keep),
        "frame_ids": (vis, torch.empty(B, L, dtype=torch.long, device=DEV), 4),
        "frame_sizes": (torch.empty(B, L, dtype=torch.long, device=DEV), vis),
        "frame_priority": (torch.empty(B, L, **f), torch.empty(B, L, dtype=torch.long, device=DEV), vis,
                           torch.empty(B, L, **f), 1),
        "vidcom2_scores": (hidden, torch.empty(B, L, dtype=torch.long, device=DEV), vis),
        "vidcom2_frame_weights": (hidden, torch.empty(B, L, dtype=torch.long, device=DEV), vis),
        "dycoke_scores": (hidden, torch.empty(B, L, dtype=torch.long, device=DEV), vis, 1),
        "fastvid_scores": (hidden, torch.empty(B, L, dtype=torch.long, device=DEV), vis, n_keep,
                           0.9, 7, 0.4, 4, 1),
        "fastvid_density": (hidden, torch.empty(B, L, dtype=torch.long, device=DEV), vis),
        "fastvid_targets": (hidden, torch.empty(B, L, dtype=torch.long, device=DEV), vis, vis),
        "fastvid_merge": (hidden, torch.empty(B, L, dtype=torch.long, device=DEV), vis, vis,
                          torch.empty(B, L, **f), 0.9, 7, 0.6),
    }


@pytest.mark.parametrize("name", sorted(lowering.DECOMPOSED))
def test_decomposition_reads_nothing_on_the_host(name):
    with FakeTensorMode():
        args = _inputs()[name]
        out = lowering.DECOMPOSED[name](*args)
    outs = out if isinstance(out, tuple) else (out,)
    assert all(o.device.type == DEV for o in outs)


class _Launch:
    """Stands in for a ``@triton.jit`` kernel: ``kernel[grid](*args)`` records the call."""

    def __init__(self, calls):
        self.calls = calls

    def __getitem__(self, grid):
        def run(*args, **kwargs):
            assert all(isinstance(g, int) for g in grid), f"grid {grid} is not static"
            self.calls.append((grid, args, kwargs))
        return run


@pytest.fixture
def recorded(monkeypatch):
    from vtp_compile.kernels.triton import cdpruner, coverage, dcp, divprune, fastvid, pdrop, select
    calls = []
    for mod, name in [(select, "_keep_kernel"), (select, "_layout_kernel"),
                      (fastvid, "_knn_kernel"), (fastvid, "_peak_kernel"), (fastvid, "_targets_kernel"),
                      (divprune, "_greedy_kernel"), (dcp, "_assign_kernel"),
                      (cdpruner, "_dpp_kernel"), (coverage, "_cover_kernel"), (pdrop, "_bisect_kernel")]:
        monkeypatch.setattr(mod, name, _Launch(calls))
    return calls


@pytest.mark.parametrize("name", sorted(set(lowering.TRITON) - {"select_keep"}))
def test_triton_launcher_reads_nothing_on_the_host(name, recorded):
    import vtp_compile.kernels as K
    # the CUDA kernel is registered in the op family's file, beside the op
    (kernel,) = [getattr(m, f"_{name}_cuda") for m in vars(K).values()
                 if hasattr(m, f"_{name}_cuda")]
    with FakeTensorMode():
        args = _inputs()[name]
        out = kernel(*args)
    assert out.shape == ((B,) if name == "pdrop_keep" else (B, L)) and out.device.type == DEV
    assert recorded, "no Triton kernel was launched"
    for _, args, _ in recorded:   # every scalar argument is a Python number, not device data
        assert all(isinstance(a, (torch.Tensor, int, float)) for a in args)


def test_select_keep_reads_the_width_only(recorded):
    """The keep mask and the layout are sync-free; the width read is the launcher's last step."""
    from vtp_compile.kernels.triton import select
    with FakeTensorMode():
        scores, vis, live, n_keep = _inputs()["select_keep"]
        keep = select.keep_mask(scores, vis, live, n_keep)
        idx, slot, width = select.layout_full(keep)
        assert idx.shape == (B, L) and width.shape == (B,)
        with pytest.raises(DataDependentOutputException):
            select.select_keep(scores, vis, live, n_keep)
        idx, slot = select.select_keep(scores, vis, live, n_keep, 3)   # a static width: no read
        assert idx.shape == (B, 3) and slot.shape == (B, 3)
    assert len(recorded) == 2 + 2 + 2     # two kernels per call, three calls


def test_dstp_decode_step_reads_nothing_on_the_host(monkeypatch):
    """DSTP's per-step validation and update stay on the device."""
    key = "fake-dstp"
    P, S = 9, 11
    with FakeTensorMode():
        b = dict(device=DEV, dtype=torch.bool)
        st = shift_state.ShiftState(torch.empty(B, P, **b), torch.empty(B, P, **b),
                                    torch.empty(B, P, **b), torch.empty(B, dtype=torch.long, device=DEV),
                                    0.2, torch.empty(B, dtype=torch.float64, device=DEV))
        monkeypatch.setitem(shift_state._STATES, key, st)
        keys0 = torch.empty(B, HKV, S, HD, device=DEV)
        found = shift_state.lookup(key, keys0)
        assert found.state is st and found.match.device.type == DEV
        cols = dstp.shift_columns(found.state, S, keys0.device, found.match).expand(B, -1)
        q = torch.empty(B, H, 1, HD, device=DEV)
        out = dstp.shift_update(found, q, keys0, torch.empty(B, S, **b), 0.4, cols)
    assert out.shape == (B, S) and st.swap_count is not None


def test_vision_lookup_reads_nothing_on_the_host(monkeypatch):
    from vtp_compile.kernels import vision
    with FakeTensorMode():
        feats = torch.empty(18, D, device=DEV)
        rec = types.SimpleNamespace(features=torch.empty(18, D, device=DEV), grid=(3, 3),
                                    cls_attn=torch.empty(2, 9, device=DEV),
                                    upper=torch.empty(2, 9, 5, device=DEV),
                                    keys=torch.empty(2, 9, 4, device=DEV),
                                    received=torch.empty(2, 9, device=DEV), refused="")
        monkeypatch.setattr(vision, "last_record", lambda: rec)
        cls, upper, keys, received = vision.lookup(feats, 3, 3, 5)
    assert cls.shape == (2, 9) and upper.shape == (2, 9, 5)
    assert keys.shape == (2, 9, 4) and received.shape == (2, 9)


def test_splice_lookup_reads_nothing_on_the_host(monkeypatch):
    """The Qwen2-VL/Qwen2.5-VL/GLM-4V direct forward's side channel compares the embeddings on
    the device; on the CPU it still finds the recorded mask, and only for those embeddings."""
    from vtp_compile.kernels import splice
    with FakeTensorMode():
        embeds = torch.empty(B, L, D, device=DEV)
        monkeypatch.setattr(splice, "_RECORD", (torch.empty(B, L, D, device=DEV),
                                                torch.empty(B, L, device=DEV, dtype=torch.bool)))
        out = splice.splice_lookup(embeds)
    assert out.shape == (B, L) and out.dtype == torch.bool and out.device.type == DEV
    x, mask = torch.randn(B, L, D), torch.rand(B, L) > 0.5
    monkeypatch.setattr(splice, "_RECORD", (x.clone(), mask))
    assert torch.equal(splice.splice_lookup(x.clone()), mask)
    y = x.clone()
    y[1, 3, 2] += 1
    assert not splice.splice_lookup(y).any()
