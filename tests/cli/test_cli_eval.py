"""`vtp eval` / `vtp show` end to end on tiny slices."""
import json
import sys
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from vtp_compile.cli.main import main
from vtp_compile.scenes import SCENE_MODEL_PATH, make_dataset
from vtp_compile.scenes.model import SceneModelSize, build_model, build_processor

shipped = pytest.mark.skipif(not (SCENE_MODEL_PATH / "config.json").is_file(),
                             reason="shipped scene model not present")


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny")
    proc = build_processor()
    size = SceneModelSize(vision_hidden=32, vision_layers=2, vision_heads=2, vision_mlp=64,
                          text_hidden=32, text_layers=2, text_heads=2, text_kv_heads=2,
                          text_mlp=64)
    build_model(proc.tokenizer, size).save_pretrained(path)
    proc.save_pretrained(path)
    return path


@shipped
def test_eval_shipped_model_tiny_slice(tmp_path, capsys):
    out, plot = tmp_path / "r.json", tmp_path / "acc.png"
    rc = main(["eval", "--methods", "none", "--n", "2", "--eager", "--batch-size", "8",
               "--out", str(out), "--plot", str(plot)])
    assert rc == 0
    result = json.loads(out.read_text())
    assert result["tasks"] == ["attribute", "counting", "grounding", "ordered", "relations"]
    assert result["n"] == {t: 2 for t in result["tasks"]}
    assert result["runs"] == [] and result["baseline"]["method"] == "none"
    assert all(0.0 <= a <= 1.0 for a in result["baseline"]["accuracy"].values())
    assert Image.open(plot).format == "PNG"
    assert "none (eager)" in capsys.readouterr().out


@shipped
def test_eval_clips(tmp_path):
    """vtp eval on clips (4 frames x 196 visual tokens per prompt). Pruned clips are checked
    against lmms-eval in tests/integrations/lmms_eval/test_end_to_end.py."""
    out = tmp_path / "r.json"
    rc = main(["eval", "--tasks", "clip_grounding", "--methods", "none", "--n", "3", "--eager",
               "--frames", "3", "--out", str(out), "--save-predictions"])
    assert rc == 0
    result = json.loads(out.read_text())
    assert result["tasks"] == ["clip_grounding"] and result["n"] == {"clip_grounding": 3}
    assert all(p.startswith("row ") for p in result["baseline"]["predictions"]["clip_grounding"])
    assert main(["eval", "--tasks", "clips", "--frames", "7", "--n", "1"]) == 2


def test_eval_jsonl_with_local_checkpoint(tmp_path, tiny_ckpt):
    lines = []
    for i, ex in enumerate(make_dataset("counting", 3)):
        ex.image.save(tmp_path / f"{i}.png")
        lines.append(json.dumps({"image": f"{i}.png", "question": ex.question,
                                 "answer": ex.answer}))
    (tmp_path / "d.jsonl").write_text("\n".join(lines))
    out = tmp_path / "r.json"
    rc = main(["eval", "--model", str(tiny_ckpt), "--data", str(tmp_path / "d.jsonl"),
               "--eager", "--methods", "none", "--out", str(out), "--save-predictions",
               "--prompt", "{image} {question}"])
    assert rc == 0
    result = json.loads(out.read_text())
    assert result["n"] == {"jsonl": 3}
    assert len(result["baseline"]["predictions"]["jsonl"]) == 3


def test_eval_errors_are_clear(capsys, tiny_ckpt):
    assert main(["eval", "--tasks", "colour", "--model", str(tiny_ckpt)]) == 2
    assert "valid tasks: attribute" in capsys.readouterr().err
    assert main(["eval", "--budgets", "abc", "--model", str(tiny_ckpt)]) == 2
    assert main(["eval", "--model", "/nonexistent/ckpt", "--n", "1"]) == 2
    assert "config.json" in capsys.readouterr().err


def test_missing_backend_is_a_clear_error(monkeypatch):
    import torch._dynamo.backends.registry as reg

    from vtp_compile.bench import compile as c

    def fail(name):
        raise reg.InvalidBackend(name)

    monkeypatch.setattr(reg, "lookup_backend", fail)
    monkeypatch.setitem(sys.modules, "vtp_compile.backend", None)
    with pytest.raises(c.BackendUnavailableError, match="pip install -e"):
        c.vtp_backend()


def test_show_renders_sites_from_explain(tmp_path, tiny_ckpt, monkeypatch):
    import vtp_compile.bench.show as show

    def fake_explain(model, inputs, options):
        assert options == {"method": "fastv", "budget": 16}
        assert inputs["pixel_values"].shape == (1, 3, 112, 112)
        kept = torch.arange(16).unsqueeze(0) * 12
        return SimpleNamespace(sites=[SimpleNamespace(name="fastv", layer=2, visual_count=196,
                                                      kept=16, kept_visual_index=kept)])

    monkeypatch.setattr(show, "get_explain", lambda: fake_explain)
    out = tmp_path / "kept.png"
    rc = main(["show", "--model", str(tiny_ckpt), "--task", "grounding", "--index", "1",
               "--method", "fastv", "--budget", "16", "--out", str(out)])
    assert rc == 0
    img = Image.open(out)
    assert img.format == "PNG" and img.width > 2 * 112 * 3


def test_show_without_explain_is_a_clear_error(monkeypatch, capsys):
    import vtp_compile.bench.show as show

    def unavailable():
        raise show.ExplainUnavailableError("vtp_compile.explain is not available (test)")

    monkeypatch.setattr(show, "get_explain", unavailable)
    assert main(["show", "--task", "attribute"]) == 2
    assert "explain is not available" in capsys.readouterr().err


@shipped
def test_eval_pruned_with_method_options(tmp_path):
    """A pruned run end to end through vtp, its inner backend set from the command line (the
    Inductor default is the extended-tier test below)."""
    out = tmp_path / "r.json"
    rc = main(["eval", "--tasks", "attribute", "--methods", "random:inner_backend=eager",
               "--budgets", "12", "--n", "2", "--eager", "--out", str(out)])
    assert rc == 0
    (run,) = json.loads(out.read_text())["runs"]
    assert "error" not in run, run
    assert (run["method_name"], run["options"], run["budget"]) == ("random", {"inner_backend": "eager"}, 12)
    assert 0.0 <= run["mean_accuracy"] <= 1.0


@pytest.mark.slow
@pytest.mark.extended
@pytest.mark.inductor
@shipped
def test_eval_inductor_and_pruned(tmp_path):
    out = tmp_path / "r.json"
    rc = main(["eval", "--tasks", "attribute", "--methods", "none,random", "--budgets", "49",
               "--n", "4", "--out", str(out)])
    assert rc == 0
    result = json.loads(out.read_text())
    assert result["compile_unpruned"] == "inductor"
    assert result["runs"][0]["method"] == "random" and result["runs"][0]["budget"] == 49


def test_show_lays_a_later_sites_tokens_on_the_image_grid(tmp_path, tiny_ckpt, monkeypatch):
    """Nüwa's stage 2 sees 21 tokens, but its kept indices are into the image's 196."""
    import vtp_compile.bench.show as show

    def fake_explain(model, inputs, options):
        first = torch.arange(21).unsqueeze(0) * 9
        return SimpleNamespace(sites=[
            SimpleNamespace(name="nuwa-anchors", layer=None, visual_count=196, kept=21,
                            kept_visual_index=first),
            SimpleNamespace(name="nuwa", layer=2, visual_count=21, kept=12,
                            kept_visual_index=first[:, :12])])

    monkeypatch.setattr(show, "get_explain", lambda: fake_explain)
    out = tmp_path / "kept.png"
    rc = main(["show", "--model", str(tiny_ckpt), "--task", "grounding", "--index", "1",
               "--method", "nuwa", "--budget", "12", "--out", str(out)])
    assert rc == 0 and Image.open(out).width > 3 * 112 * 3
