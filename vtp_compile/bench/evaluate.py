"""Batched greedy generation and exact-match scoring, per task.

The core loop of ``vtp eval``: build prompts, run ``model.generate`` (greedy) in left-padded
batches, decode the new tokens, normalise and compare with the reference answers. A clip
example (``frames``) is given to the model as its frames, one image each, each after a
``frame N`` label (:func:`build_clip_prompt`).

Example::

    >>> from vtp_compile.scenes import load_scene_model, make_dataset
    >>> model, processor = load_scene_model()
    >>> scores = evaluate_model(model, processor, {"counting": make_dataset("counting", 8)})
    >>> scores["counting"].accuracy  # doctest: +SKIP
    1.0
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from ..scenes.clip_tasks import frame_prompt
from ..scenes.tasks import Example

DEFAULT_PROMPT = "{image} {question}"


@dataclass
class TaskScore:
    """Exact-match result of one task: counts plus every prediction (for inspection)."""

    task: str
    correct: int
    total: int
    predictions: list[str] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        """Fraction of exact matches (0.0 for an empty task)."""
        return self.correct / self.total if self.total else 0.0


def normalize_answer(text: str) -> str:
    """Lower-case, drop a trailing full stop and collapse whitespace (exact-match key)."""
    text = re.sub(r"\s+", " ", text.strip().lower())
    return text[:-1].rstrip() if text.endswith(".") else text


def build_prompt(processor, question: str, template: str | None = None) -> str:
    """Prompt text for one question.

    ``template`` may use ``{image}`` (the processor's image token) and ``{question}``. Without
    one, a processor that has a chat template gets a one-turn chat with an image and the
    question plus the generation prompt; otherwise ``"<image> question"`` is used.
    """
    image_token = getattr(processor, "image_token", "<image>")
    if template is None and getattr(processor, "chat_template", None):
        messages = [{"role": "user", "content": [{"type": "image"},
                                                 {"type": "text", "text": question}]}]
        return processor.apply_chat_template(messages, add_generation_prompt=True)
    return (template or DEFAULT_PROMPT).format(image=image_token, question=question)


def build_clip_prompt(processor, question: str, n_frames: int, template: str | None = None) -> str:
    """Prompt text for a question about a clip given as ``n_frames`` images: each frame's
    image placeholder after a ``frame N`` label (InternVL / SmolVLM style; each frame is then
    one run of visual tokens between text tokens). ``template``'s ``{image}`` receives the
    labelled frames; a processor with a chat template gets a one-turn chat of label text and
    image items."""
    image_token = getattr(processor, "image_token", "<image>")
    if template is None and getattr(processor, "chat_template", None):
        content = []
        for t in range(n_frames):
            content += [{"type": "text", "text": f"frame {t + 1}"}, {"type": "image"}]
        content.append({"type": "text", "text": question})
        return processor.apply_chat_template([{"role": "user", "content": content}],
                                             add_generation_prompt=True)
    return (template or DEFAULT_PROMPT).format(image=frame_prompt(n_frames, image_token),
                                               question=question)


def visuals_of(ex: Example) -> list:
    """The images of one example: a clip's frames in order, or its one image."""
    frames = getattr(ex, "frames", None)
    return list(frames) if frames else [ex.image]


def prompt_of(processor, ex: Example, template: str | None = None) -> str:
    frames = getattr(ex, "frames", None)
    if frames:
        return build_clip_prompt(processor, ex.question, len(frames), template)
    return build_prompt(processor, ex.question, template)


def prepare_processor(processor):
    """Left padding (needed for batched generation) and a pad token; returns ``processor``."""
    tok = processor.tokenizer
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return processor


@torch.inference_mode()
def generate_answers(model, processor, examples: list[Example], batch_size: int = 16,
                     max_new_tokens: int = 8, prompt_template: str | None = None,
                     progress=None) -> list[str]:
    """Greedy answers (decoded new tokens, special tokens skipped) for ``examples``.

    ``progress``, if given, is a tqdm bar advanced by one per batch.
    """
    prepare_processor(processor)
    answers: list[str] = []
    for i in range(0, len(examples), batch_size):
        chunk = examples[i:i + batch_size]
        inputs = processor(images=[im for ex in chunk for im in visuals_of(ex)],
                           text=[prompt_of(processor, ex, prompt_template) for ex in chunk],
                           return_tensors="pt", padding=True)
        inputs = inputs.to(model.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
        out = model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens,
                             pad_token_id=processor.tokenizer.pad_token_id)
        new = out[:, inputs["input_ids"].shape[1]:]
        answers += processor.tokenizer.batch_decode(new, skip_special_tokens=True)
        if progress is not None:
            progress.update(1)
    return answers


def score_task(task: str, examples: list[Example], predictions: list[str]) -> TaskScore:
    """Exact match of normalised predictions against normalised reference answers."""
    refs = [ex.answer for ex in examples]
    correct = sum(normalize_answer(p) == normalize_answer(r) for p, r in zip(predictions, refs))
    return TaskScore(task, correct, len(refs), list(predictions), refs)


def evaluate_model(model, processor, datasets: dict[str, list[Example]], batch_size: int = 16,
                   max_new_tokens: int = 8, prompt_template: str | None = None,
                   progress=None) -> dict[str, TaskScore]:
    """Score ``model`` on every task in ``datasets`` (task name -> examples)."""
    return {task: score_task(task, exs, generate_answers(
                model, processor, exs, batch_size, max_new_tokens, prompt_template, progress))
            for task, exs in datasets.items()}


def n_batches(datasets: dict[str, list[Example]], batch_size: int) -> int:
    """How many generate calls :func:`evaluate_model` makes (for progress bars)."""
    return sum(-(-len(exs) // batch_size) for exs in datasets.values())
