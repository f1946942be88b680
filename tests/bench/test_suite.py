"""The benchmark suite runs end to end at CI scale (``--tiny``), so the script cannot rot."""
import json

import pytest

from vtp_compile.bench import roofline, suite


def test_suite_tiny_runs(tmp_path, capsys):
    out = tmp_path / "tiny.json"
    assert suite.main(["--tiny", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    data = json.loads(out.read_text())
    assert [r["model"] for r in data["results"]] == ["llava-tiny", "qwen2.5-vl-tiny", "qwen2.5-vl-tiny-video"]
    for res in data["results"]:
        cf = res["configs"]
        for c in ("unpruned", "vtp", "peer-eager"):
            assert "error" not in cf[c], (res["model"], c, cf[c])
            assert cf[c]["prefill_ms"] > 0 and cf[c]["kv_bytes"] > 0
        # vtp evicts the pruned visual tokens from every layer's cache; the peer keeps them in
        # the layers before K, so its cache lies between the two
        assert cf["vtp"]["kv_bytes"] < cf["peer-eager"]["kv_bytes"] < cf["unpruned"]["kv_bytes"]
        for B in next(c for c in suite.cases("tiny") if c.name == res["model"]).batches:
            d = res["decode"][str(B)]
            assert all(d[c] > 0 for c in ("unpruned", "vtp", "peer-eager"))
        lim = res["limits"]["prefill"]
        assert lim["vtp"]["flop_ratio"] > 1 and lim["peer"]["flop_ratio"] > 1
        assert res["model"] in table
    assert "FLOP ratio" in table and "peer-compiled" in table


def test_roofline_by_hand():
    """One layer, numbers checked by hand: P = 2*(8*8) + 2*(8*8) + 3*8*16 = 640 weights."""
    s = roofline.DecoderShape(hidden=8, layers=1, heads=2, kv_heads=2, intermediate=16, vocab=10)
    assert s.weights == 640 and s.attn_width == 8 and s.kv_width == 16
    c = roofline.layer_cost(s, q=3, k=5, batch=2)
    assert c.flops == 2 * (2 * 640 * 3 + 4 * 8 * 3 * 5)
    assert c.bytes == 640 * 2 + 2 * 2 * ((5 + 3) * 16 + 2 * 3 * 8)
    dev = roofline.Device("x", flops=1e3, bandwidth=1e3)
    assert c.time(dev) == max(c.flops, c.bytes) / 1e3
    pre, cache = roofline.fastv_lengths(L=100, V=80, kept=8, layer=2, n_layers=4, evict_early=True)
    assert pre == [100, 100, 28, 28] and cache == [28] * 4
    _, cache = roofline.fastv_lengths(L=100, V=80, kept=8, layer=2, n_layers=4, evict_early=False)
    assert cache == [100, 100, 28, 28]


def test_suite_tiny_static_cache(tmp_path, capsys):
    """``--cache static``: unpruned and vtp only, both generating into transformers' static
    cache; the buffers have one size, so the KV bytes are equal and the decode limit is 1."""
    out = tmp_path / "static.json"
    assert suite.main(["--tiny", "--cache", "static", "--models", "llava-tiny", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    (res,) = json.loads(out.read_text())["results"]
    cf = res["configs"]
    assert set(cf) == {"unpruned", "vtp"} and res["cache"] == "static"
    assert all("error" not in cf[c] and cf[c]["prefill_ms"] > 0 for c in cf)
    assert cf["vtp"]["kv_bytes"] == cf["unpruned"]["kv_bytes"] > 0
    assert res["limits"]["prefill"]["vtp"]["flop_ratio"] > 1
    for B, lim in res["limits"]["decode"].items():
        assert lim["vtp"]["flop_ratio"] == 1.0
        assert all(v > 0 for v in res["decode"][B].values() if not isinstance(v, int))
    assert "static cache" in table and "peer-eager tok/s" not in table


def test_an_unknown_model_is_an_error_naming_the_choices():
    with pytest.raises(ValueError, match="llava-tiny"):
        suite.main(["--tiny", "--models", "llava-7b"])
