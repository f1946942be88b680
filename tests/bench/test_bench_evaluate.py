"""Scoring, parsing, JSONL loading, sweep table and plot (no compile needed)."""
import json

import pytest
from PIL import Image

from vtp_compile.bench.compile import compiled_copy, parse_budgets, parse_methods, prune_options
from vtp_compile.bench.data import load_jsonl, parse_tasks
from vtp_compile.bench.evaluate import build_prompt, normalize_answer, score_task
from vtp_compile.bench.plot import plot_accuracy
from vtp_compile.bench.sweep import format_table, retention
from vtp_compile.scenes.tasks import Example


def test_normalize_and_score():
    assert normalize_answer("  Row 2  col 3. ") == "row 2 col 3"
    exs = [Example(None, "q", a, "t") for a in ["red", "row 1 col 2", "3"]]
    s = score_task("t", exs, ["red", "row 1 col 3", " 3 "])
    assert (s.correct, s.total) == (2, 3) and s.accuracy == pytest.approx(2 / 3)


def test_parse_budgets():
    assert parse_budgets("12, 25,49") == [12, 25, 49]
    assert parse_budgets("0.25,64") == [0.25, 64]
    for bad in ["", "0", "-3", "abc", "12.5"]:
        with pytest.raises(ValueError):
            parse_budgets(bad)
    assert prune_options("fastv", 16) == {"method": "fastv", "budget": 16}
    assert prune_options("fastv", 0.5) == {"method": "fastv", "ratio": 0.5}


def test_parse_methods_and_tasks():
    assert parse_methods("none") == ["none"]
    with pytest.raises(ValueError):
        parse_methods("")
    assert parse_tasks("all") == ["attribute", "counting", "grounding", "ordered", "relations"]
    with pytest.raises(ValueError, match="valid tasks"):
        parse_tasks("attribute,colours")
    assert parse_tasks("clips") == ["clip_order", "clip_counting", "clip_grounding"]
    assert parse_tasks("counting,clip_counting,clips") == [
        "counting", "clip_counting", "clip_order", "clip_grounding"]
    with pytest.raises(ValueError, match="valid tasks: .*clip_grounding .*aliases: all"):
        parse_tasks("clip_colours")


def test_clip_examples_go_in_as_labelled_frames():
    from vtp_compile.bench.data import scene_datasets
    from vtp_compile.bench.evaluate import build_clip_prompt, prompt_of, visuals_of
    from vtp_compile.scenes.model import build_processor
    proc = build_processor()
    data = scene_datasets(["clip_counting", "counting"], 1, n_frames=3)
    clip, image = data["clip_counting"][0], data["counting"][0]
    assert visuals_of(clip) == clip.frames and len(clip.frames) == 3
    assert visuals_of(image) == [image.image]
    assert prompt_of(proc, clip) == f"frame 1 <image> frame 2 <image> frame 3 <image> {clip.question}"
    assert prompt_of(proc, image) == f"<image> {image.question}"
    assert build_clip_prompt(proc, "q ?", 2, "Q: {question} {image}") == (
        "Q: q ? frame 1 <image> frame 2 <image>")


def test_parse_methods_rejects_unknown_when_registry_known(monkeypatch):
    import vtp_compile.bench.compile as c
    monkeypatch.setattr(c, "known_methods", lambda: ["none", "random", "fastv"])
    with pytest.raises(ValueError, match="valid methods: none, random, fastv"):
        parse_methods("none,fastvv")


def test_none_method_copy_is_independent():
    import torch
    base = torch.nn.Linear(2, 2)
    m = compiled_copy(base, "none", compile_unpruned=False)
    assert m is not base and torch.equal(m.weight, base.weight)
    with pytest.raises(ValueError, match="budget"):
        compiled_copy(base, "fastv", None)


def test_prompt_template():
    class P:
        image_token = "<image>"
        chat_template = None
    assert build_prompt(P(), "how many ?") == "<image> how many ?"
    assert build_prompt(P(), "q", "USER: {image}\n{question} ASSISTANT:") == \
        "USER: <image>\nq ASSISTANT:"


def test_load_jsonl(tmp_path):
    Image.new("RGB", (20, 20), "red").save(tmp_path / "a.png")
    lines = [{"image": "a.png", "question": "q1", "answer": "red"},
             {"image": str(tmp_path / "a.png"), "question": "q2", "answer": "x", "task": "t2"},
             {"image": "a.png", "question": "q3", "answer": "y"}]
    f = tmp_path / "d.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    data = load_jsonl(f)
    assert {k: len(v) for k, v in data.items()} == {"jsonl": 2, "t2": 1}
    assert data["jsonl"][0].image.size == (20, 20)
    assert len(load_jsonl(f, n=1)["jsonl"]) == 1
    assert list(load_jsonl(f, tasks=["t2"])) == ["t2"]
    f.write_text('{"image": "a.png", "question": "q"}\n')
    with pytest.raises(ValueError, match="answer"):
        load_jsonl(f)
    f.write_text('{"image": "missing.png", "question": "q", "answer": "a"}\n')
    with pytest.raises(FileNotFoundError):
        load_jsonl(f)


def _result():
    return {"tasks": ["a", "b"], "compile_unpruned": "eager",
            "baseline": {"accuracy": {"a": 1.0, "b": 0.5}, "mean_accuracy": 0.75},
            "runs": [{"method": "random", "budget": b, "accuracy": {"a": 0.5, "b": 0.0},
                      "mean_accuracy": 0.25, "retention": retention({"a": 0.5, "b": 0.0},
                                                                    {"a": 1.0, "b": 0.5}),
                      "mean_retention": 100 / 3} for b in (12, 25)]}


def test_table_and_plot(tmp_path):
    r = _result()
    assert r["runs"][0]["retention"] == {"a": 50.0, "b": 0.0}
    assert retention({"a": 0.3}, {"a": 0.0}) == {"a": None}
    table = format_table(r)
    assert "none (eager)" in table and "0.500 (50%)" in table and "random" in table
    path = plot_accuracy(r, tmp_path / "acc.png")
    assert Image.open(path).size[0] > 100


def test_failing_configuration_is_recorded(monkeypatch):
    import vtp_compile.bench.sweep as sweep
    from vtp_compile.scenes.tasks import make_dataset

    def fake_eval(model, processor, datasets, *a, **k):
        if getattr(model, "broken", False):
            raise RuntimeError("backend exploded\ntraceback...")
        return {t: score_task(t, exs, [e.answer for e in exs]) for t, exs in datasets.items()}

    def fake_copy(base, method, budget=None, compile_unpruned=True):
        import types
        return types.SimpleNamespace(broken=(method == "bad"))

    monkeypatch.setattr(sweep, "evaluate_model", fake_eval)
    monkeypatch.setattr(sweep, "compiled_copy", fake_copy)
    data = {"counting": make_dataset("counting", 2)}
    r = sweep.run_sweep(None, None, data, ["none", "good", "bad"], [12], progress=False)
    assert r["baseline"]["accuracy"] == {"counting": 1.0}
    assert r["runs"][0]["retention"] == {"counting": 100.0}
    assert r["runs"][1] == {"method": "bad", "budget": 12,
                            "error": "RuntimeError: backend exploded"}
    assert "error" in format_table(r)
