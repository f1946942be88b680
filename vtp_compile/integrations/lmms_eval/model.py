"""``lmms-eval --model vtp``: any transformers VLM, pruned by vtp, batched with left padding.

Loading: ``AutoModelForImageTextToText`` + ``AutoProcessor`` from ``pretrained``, then
``model.compile(backend="vtp", options=...)`` (``method=none``: ``model.compile(backend=
"inductor")``, or nothing with ``inner_backend=eager``). Options are validated before anything
loads, the layers against the checkpoint's config before the weights load.

Requests are grouped by task and generation settings and batched in the order lmms-eval gives
them (no re-sorting: the same batches as ``vtp eval`` for the same examples and batch size).

Failures: an exception while compiling or generating stops the run. lmms-eval 0.7 catches
exceptions around an evaluation, prints them and exits 0 with no results; so the wrapper logs
the traceback and raises :class:`VtpRunAborted` (a ``SystemExit`` with status 3, which
lmms-eval does not catch): no answer is ever scored from a failed generation. Bad
``--model_args`` on the command line exit with status 2 and the message (as argparse does);
constructed from Python, the class raises :class:`vtp_compile.OptionError` (a ``ValueError``).

What vtp did is logged at the end of ``generate_until`` (WARNING for graphs left unpruned,
with the reason) and recorded in the results JSON through lmms-eval's throughput metrics
(``throughput.avg_vtp_unpruned_graphs`` and friends); ``report=PATH`` writes the full report.
"""
from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path

import torch
from loguru import logger as eval_logger
from tqdm import tqdm

from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms

from ...errors import OptionError
from . import report
from .inputs import build_inputs
from .model_args import ModelArgs, check_depth, decoder_depth, parse_model_args, valid_keys_text

ABORT_STATUS = 3
USAGE_STATUS = 2


class _Exit(SystemExit):
    """A ``SystemExit`` with a status and a message (printed to stderr when raised)."""
    status = 1

    def __init__(self, message: str):
        super().__init__(self.status)
        self.message = message
        print(message, file=sys.stderr, flush=True)

    def __str__(self) -> str:
        return self.message


class VtpRunAborted(_Exit):
    """A compile or generation failure: ends the lmms-eval process (status 3) with no results."""
    status = ABORT_STATUS


class VtpOptionsRejected(_Exit):
    """Bad ``--model_args`` on lmms-eval's command line (status 2, before anything loads)."""
    status = USAGE_STATUS


def _default_device() -> str:
    """``cuda:LOCAL_RANK`` under a data-parallel launcher (lmms-eval shards the documents over
    the ranks and sets each rank's ``_rank``/``_world_size``), ``cuda``, else ``cpu``."""
    if not torch.cuda.is_available():
        return "cpu"
    local = os.environ.get("LOCAL_RANK")
    return f"cuda:{int(local)}" if local is not None else "cuda"


class VTP(lmms):
    """A transformers VLM compiled with the vtp backend (see the module docstring)."""

    is_simple = True

    def __init__(self, pretrained: str | None = None, **kwargs) -> None:
        super().__init__()
        self.args: ModelArgs = parse_model_args({"pretrained": pretrained, **kwargs})
        s = self.args.settings
        if s["threads"]:
            torch.set_num_threads(s["threads"])
        self._device = torch.device(s["device"] or _default_device())
        self.batch_size_per_gpu = s["batch_size"]
        self._model, self.processor = self._load()
        self._warm_up()
        self._compile()
        self.run_report: dict = {}

    # -- lmms-eval's CLI path --------------------------------------------------------------
    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None):
        """``--model_args`` plus ``--batch_size``/``--device`` (a key in ``--model_args`` wins).
        Bad options exit with status 2 and the message, before anything loads."""
        from lmms_eval import utils
        args = utils.simple_parse_args_string(arg_string)
        for k, v in (additional_config or {}).items():
            if v is not None and k not in args:
                args[k] = v
        try:
            return cls(**args)
        except OptionError as e:
            eval_logger.error(f"lmms-eval --model vtp: {e}")
            raise VtpOptionsRejected(f"lmms-eval --model vtp: error: {e}\n({valid_keys_text()})") from e

    # -- loading ---------------------------------------------------------------------------
    def _load(self):
        from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

        s = self.args.settings
        common = {"trust_remote_code": bool(s["trust_remote_code"])}
        config = AutoConfig.from_pretrained(s["pretrained"], **common)
        depth = decoder_depth(config)
        if depth is not None:
            check_depth(self.args.options, depth)
        dtype = s["dtype"] if s["dtype"] == "auto" else getattr(torch, s["dtype"])
        load = {"dtype": dtype, "attn_implementation": s["attn_implementation"], **common}
        if s["device_map"]:
            load["device_map"] = s["device_map"]
        model = AutoModelForImageTextToText.from_pretrained(s["pretrained"], **load).eval()
        if not s["device_map"]:
            model = model.to(self._device)
        processor = AutoProcessor.from_pretrained(s["pretrained"], **common,
                                                  **self.args.processor_kwargs)
        from ...bench.evaluate import prepare_processor
        prepare_processor(processor)      # left padding and a pad token
        return model, processor

    def _warm_up(self) -> None:
        """One eager forward before compiling: transformers installs its output-capturing hooks
        on the first call, and a compiled first call would graph-break there (README: Gotchas)."""
        from PIL import Image
        try:
            inputs = build_inputs(self.processor, ["describe the image"],
                                  [[Image.new("RGB", (224, 224), (128, 128, 128))]])
            with torch.inference_mode():
                self._model(**self._on_device(inputs))
        except Exception as e:     # the run itself will show whether the model works
            eval_logger.warning(f"vtp: the eager warm-up call failed ({type(e).__name__}: {e})")

    def _on_device(self, inputs):
        inputs = inputs.to(self._model.device)
        for key in ("pixel_values", "pixel_values_videos"):
            if key in inputs and inputs[key].is_floating_point():
                inputs[key] = inputs[key].to(self._model.dtype)
        return inputs

    def _compile(self) -> None:
        """``model.compile`` as ``vtp eval``'s ``compiled_copy`` does it (no copy: one config)."""
        from ... import configure_dynamo
        from ...bench.compile import RECOMPILE_LIMIT
        configure_dynamo(max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT))
        # a failing compile must raise, never fall back to the unpruned eager model
        torch._dynamo.config.suppress_errors = False
        options = self.args.options
        if options is None:
            if self.args.unpruned_backend != "eager":
                self._model.compile(backend=self.args.unpruned_backend)
            return
        from ...config import PruneConfig
        from ...methods.registry import get_method
        cfg = PruneConfig.from_options(options)
        if get_method(cfg.method).needs_vision(cfg):
            from ...vision_context import attach
            attach(self._model, cfg.params.get("vision_layer"))
        self._model.compile(backend="vtp", options=options)

    # -- lmms interface ----------------------------------------------------------------------
    @property
    def model(self):
        return self._model

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    @property
    def device(self):
        return self._device

    @property
    def eot_token_id(self):
        return self.tokenizer.eos_token_id

    def loglikelihood(self, requests: list[Instance]):
        raise NotImplementedError("vtp: loglikelihood is not supported (generation tasks only)")

    def generate_until_multi_round(self, requests):
        raise NotImplementedError("vtp: multi-round generation is not supported")

    def generate_until(self, requests: list[Instance]) -> list[str]:
        start, t0 = report.mark(self._model), time.time()
        answers: list[str | None] = [None] * len(requests)
        n_tokens = 0
        groups: dict[tuple, list[int]] = {}
        for i, req in enumerate(requests):
            _, gen_kwargs, _, _, task, split = req.args
            key = (task, split, json.dumps(gen_kwargs, sort_keys=True, default=str))
            groups.setdefault(key, []).append(i)
        bar = tqdm(total=len(requests), desc="vtp generate", disable=self.rank != 0)
        try:
            for idx in groups.values():
                for b in range(0, len(idx), self.batch_size):
                    chunk = idx[b:b + self.batch_size]
                    outs, new = self._generate([requests[i] for i in chunk])
                    n_tokens += new
                    for i, text in zip(chunk, outs):
                        answers[i] = text
                    bar.update(len(chunk))
        except Exception as e:
            self._finish(start, t0, n_tokens, len(requests), failed=e)
            raise VtpRunAborted(f"vtp: generation failed, the run stops ({type(e).__name__}: "
                                f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}); "
                                "no answer was scored") from e
        finally:
            bar.close()
        self._finish(start, t0, n_tokens, len(requests))
        return answers

    @torch.inference_mode()
    def _generate(self, reqs: list[Instance]) -> tuple[list[str], int]:
        s = self.args.settings
        contexts = [r.args[0] for r in reqs]
        gen_kwargs = dict(reqs[0].args[1] or {})
        visuals = []
        for r in reqs:
            ctx, _, doc_to_visual, doc_id, task, split = r.args
            visuals.append(doc_to_visual(self.task_dict[task][split][doc_id]))
        inputs = build_inputs(self.processor, contexts, visuals, max_frames=s["max_frames"],
                              template=s["prompt"], system_prompt=s["system_prompt"])
        inputs = self._on_device(inputs)
        until = gen_kwargs.pop("until", None) or []
        until = [until] if isinstance(until, str) else list(until)
        out = self._model.generate(**inputs, **self._generation_args(gen_kwargs),
                                   pad_token_id=self.tokenizer.pad_token_id)
        new = out[:, inputs["input_ids"].shape[1]:]
        texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
        for i, text in enumerate(texts):
            for stop in until:
                if stop:
                    text = text.split(stop)[0]
            texts[i] = text
        pad = self.tokenizer.pad_token_id
        return texts, int((new != pad).sum()) if pad is not None else new.numel()

    def _generation_args(self, g: dict) -> dict:
        """Greedy (``do_sample=False``) unless the task asks for a temperature > 0."""
        out = {"max_new_tokens": int(g.get("max_new_tokens") or self.args.settings["max_new_tokens"])}
        temperature = g.get("temperature") or 0
        if g.get("do_sample") or temperature > 0:
            out.update(do_sample=True, temperature=float(temperature or 1.0))
            if g.get("top_p") is not None:
                out["top_p"] = float(g["top_p"])
        else:
            out["do_sample"] = False
        if int(g.get("num_beams") or 1) > 1:
            out["num_beams"] = int(g["num_beams"])
        return out

    # -- the run's report -------------------------------------------------------------------
    def _finish(self, start: int, t0: float, n_tokens: int, n_requests: int, failed=None) -> None:
        summary = report.summarize(self._model, start)
        summary.update(method=self.args.method_label, budget=self.args.budget,
                       options=self.args.options, requests=n_requests,
                       elapsed_s=round(time.time() - t0, 3))
        if failed is not None:
            summary["error"] = "".join(traceback.format_exception(failed)).strip()
            eval_logger.error(f"vtp: generation failed:\n{summary['error']}")
        for line in report.log_lines(summary):
            (eval_logger.warning if "left unpruned (" in line else eval_logger.info)(line)
        self.run_report = summary
        if self.args.settings["report"]:
            path = Path(self.args.settings["report"])
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(summary, indent=2, default=str))
        if failed is None:
            from lmms_eval.models.model_utils.gen_metrics import log_metrics
            elapsed = time.time() - t0
            log_metrics(total_elapsed_time=elapsed, total_gen_tokens=n_tokens,
                        avg_speed=n_tokens / elapsed if elapsed > 0 else 0.0,
                        additional_metrics={
                            "total_requests": n_requests,
                            "vtp_graphs": summary["graphs"],
                            "vtp_pruned_graphs": summary["pruned_graphs"],
                            "vtp_decode_graphs": summary["decode_graphs"],
                            "vtp_unpruned_graphs": summary["unpruned_graphs"]})
