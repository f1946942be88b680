"""``--model_args`` of ``lmms-eval --model vtp``: loader settings plus every vtp option.

lmms-eval passes ``--model_args`` as flat ``key=value`` pairs (values: bool, int, float or str;
a value in brackets, braces or quotes may hold commas). This module splits them into the
wrapper's own settings (:data:`WRAPPER_KEYS`) and the vtp options given to
``model.compile(backend="vtp", options=...)``, and validates the options with
:meth:`vtp_compile.PruneConfig.from_options` before anything loads.

Syntax (everything after ``pretrained=...`` is optional)::

    pretrained=PATH,method=fastv,budget=64,layer=2          # a method and its own options
    pretrained=PATH,method=fastv,ratio=0.25                 # a kept fraction instead of a count
    pretrained=PATH,method=none                             # the unpruned baseline (also: no method)
    pretrained=PATH,method=divprune+fastv,stage1.budget=128,stage2.budget=32,stage2.layer=2
    pretrained=PATH,method=chain,stages=[{"method":"divprune","budget":128},{"method":"fastv","budget":32}]
    pretrained=PATH,method=fastv,budget=64,inductor.max_autotune=true,mode=max-autotune-no-cudagraphs

* a chain: ``method=A+B[+C...]`` (or ``method=chain``) with ``stageN.KEY=VALUE`` (N from 1) for
  stage N's budget/ratio and options, or the whole ``stages`` list as JSON;
* ``inductor.KEY=VALUE``: one Inductor config patch (or ``inductor={...}`` as JSON);
* a value in ``[...]`` or ``{...}`` is JSON (``layers=[8,16,24]``); ``true``/``false``/numbers as
  lmms-eval parses them.

Errors are :class:`vtp_compile.OptionError` (a ``ValueError``) naming what is valid.
"""
from __future__ import annotations

import dataclasses
import json
import re
from typing import Any, Mapping

from ...errors import OptionError

NONE_METHOD = "none"

# the wrapper's own keys -> (default, meaning); everything else is a vtp option
WRAPPER_KEYS: dict[str, tuple[Any, str]] = {
    "pretrained": (None, "local checkpoint directory or hub id (AutoModelForImageTextToText)"),
    "device": (None, "torch device; default cuda if available, else cpu"),
    "device_map": (None, "transformers device_map (e.g. auto); overrides device"),
    "dtype": ("auto", "auto (the checkpoint's), bfloat16, float16 or float32"),
    "attn_implementation": ("sdpa", "sdpa, eager or flash_attention_2"),
    "trust_remote_code": (False, "passed to from_pretrained"),
    "batch_size": (1, "prompts per generate call (left padding); lmms-eval's --batch_size"),
    "max_batch_size": (None, "accepted for lmms-eval's CLI; unused"),
    "max_new_tokens": (256, "new tokens when a task's generation_kwargs name none"),
    "max_frames": (32, "frames sampled uniformly from a video"),
    "prompt": (None, "prompt template with {image} (the visual placeholders) and {question} "
                     "(lmms-eval's context); default: the processor's chat template if it has "
                     "one, else '{image} {question}'"),
    "system_prompt": (None, "system message for chat templates"),
    "threads": (None, "torch CPU threads"),
    "report": (None, "write the vtp report (every compiled graph: pruned or why not) as JSON here"),
}
PREFIXES = {"processor.": "AutoProcessor.from_pretrained keyword (e.g. processor.max_pixels=1605632)",
            "stage": "stageN.KEY=VALUE: option KEY of chain stage N (from 1)",
            "inductor.": "inductor.KEY=VALUE: one Inductor config patch"}
# wrapper keys whose values stay text (a prompt template may start with "{")
TEXT_KEYS = ("pretrained", "device", "device_map", "dtype", "prompt", "system_prompt", "report")
DTYPES = ("auto", "bfloat16", "float16", "float32")


@dataclasses.dataclass
class ModelArgs:
    """Parsed ``--model_args``: loader settings, the vtp options (None: unpruned) and labels."""
    settings: dict[str, Any]
    processor_kwargs: dict[str, Any]
    options: dict[str, Any] | None          # for model.compile(backend="vtp", options=...)
    unpruned_backend: str = "inductor"      # method=none: what compiles the model ("eager": nothing)

    @property
    def method_label(self) -> str:
        """``none``, ``fastv`` or ``dstp:reserve=12,tau=0.1`` (``vtp eval``'s labels)."""
        if self.options is None:
            return NONE_METHOD
        from ...bench.compile import method_label
        opts = {k: v for k, v in self.options.items()
                if k not in ("method", "budget", "ratio", "inner_backend", "mode", "inductor")}
        return method_label(self.options["method"], opts)

    @property
    def budget(self) -> int | float | None:
        """The budget (count) or ratio (fraction) of the run; None for unpruned and chains."""
        if self.options is None:
            return None
        return self.options.get("budget", self.options.get("ratio"))


def coerce(value: Any) -> Any:
    """A ``--model_args`` value: JSON for ``[...]``/``{...}``/quoted strings, booleans and
    numbers from strings (lmms-eval already converts most), anything else unchanged."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text[:1] in "[{\"":
        try:
            return json.loads(text)
        except ValueError as e:
            raise OptionError(f"vtp: model_args value {value!r} is not valid JSON: {e}") from None
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    if re.fullmatch(r"[+-]?\d+", text):
        return int(text)
    try:
        return float(text)
    except ValueError:
        return text


def valid_keys_text() -> str:
    """The model_args keys of the wrapper, for error messages."""
    keys = ", ".join(WRAPPER_KEYS)
    pre = ", ".join(f"{p}*" if p.endswith(".") else "stageN.*" for p in PREFIXES)
    return f"wrapper keys: {keys}; prefixed keys: {pre}; any other key is a vtp option"


def parse_model_args(args: Mapping[str, Any]) -> ModelArgs:
    """Split and validate ``--model_args`` (a dict, as lmms-eval builds it). Raises
    :class:`~vtp_compile.OptionError` for bad keys or values, before anything is loaded."""
    from ...config import PruneConfig

    args = {str(k).strip(): (v if str(k).strip() in TEXT_KEYS else coerce(v))
            for k, v in dict(args).items()}
    settings = {k: default for k, (default, _) in WRAPPER_KEYS.items()}
    processor_kwargs: dict[str, Any] = {}
    stages: dict[int, dict[str, Any]] = {}
    inductor: dict[str, Any] = {}
    vtp: dict[str, Any] = {}
    for key, value in args.items():
        if key in WRAPPER_KEYS:
            settings[key] = value
        elif key.startswith("processor."):
            processor_kwargs[key.removeprefix("processor.")] = value
        elif key.startswith("inductor."):
            inductor[key.removeprefix("inductor.")] = value
        elif (m := re.fullmatch(r"stage(\d+)\.(\w+)", key)):
            n = int(m.group(1))
            if n < 1:
                raise OptionError(f"vtp: {key!r}: stages count from 1 (stage1.KEY=VALUE)")
            stages.setdefault(n, {})[m.group(2)] = value
        elif "." in key:
            raise OptionError(f"vtp: unknown model_args key {key!r}; {valid_keys_text()}")
        else:
            vtp[key] = value
    _check_settings(settings)

    method = vtp.pop("method", None)
    method = NONE_METHOD if method in (None, "", NONE_METHOD) else method
    if not isinstance(method, str):
        raise OptionError(f"vtp: method must be a name, got {method!r}")
    if "+" in method:
        names = [m.strip() for m in method.split("+")]
        if len(names) < 2 or not all(names):
            raise OptionError(f"vtp: chain {method!r} must name two or more methods, e.g. divprune+fastv")
        for i, name in enumerate(names, 1):
            if "method" in stages.get(i, {}) and stages[i]["method"] != name:
                raise OptionError(f"vtp: stage{i}.method={stages[i]['method']!r} contradicts "
                                  f"method={method!r}")
            stages.setdefault(i, {})["method"] = name
        method = "chain"
    if inductor:
        if isinstance(vtp.get("inductor"), Mapping):
            inductor = {**vtp["inductor"], **inductor}
        vtp["inductor"] = inductor

    if method == NONE_METHOD:
        extra = sorted(set(vtp) - {"inner_backend", "mode", "inductor"}) + [f"stage{n}.*" for n in stages]
        if extra:
            raise OptionError(f"vtp: method=none (the unpruned baseline) takes no pruning options, "
                              f"got {extra}; give a method (one of {_methods()}) to prune")
        backend = vtp.get("inner_backend", "inductor")
        if backend != "eager":
            PruneConfig.from_options({"method": "fastv", **vtp})   # validates the backend/mode
        return ModelArgs(settings, processor_kwargs, None, backend)

    if stages:
        if method != "chain":
            raise OptionError(f"vtp: stageN.* keys configure a chain (method=A+B or method=chain), "
                              f"not method={method!r}")
        if "stages" in vtp:
            raise OptionError("vtp: give a chain's stages either as stageN.KEY=VALUE or as "
                              "stages=[...], not both")
        missing = [n for n in range(1, max(stages) + 1) if n not in stages]
        if missing:
            raise OptionError(f"vtp: chain stages must be numbered 1..N without gaps; missing {missing}")
        # the stage's method first (labels and reports read as written)
        vtp["stages"] = [{**({"method": stages[n]["method"]} if "method" in stages[n] else {}),
                          **stages[n]} for n in sorted(stages)]
    options = {"method": method, **vtp}
    PruneConfig.from_options(options)
    return ModelArgs(settings, processor_kwargs, options)


def _methods() -> str:
    from ...methods.registry import method_names
    return ", ".join(method_names())


def _check_settings(s: dict) -> None:
    if not s["pretrained"] or not isinstance(s["pretrained"], str):
        raise OptionError("vtp: model_args needs pretrained=PATH (a checkpoint directory or hub id)")
    if s["dtype"] not in DTYPES:
        raise OptionError(f"vtp: unknown dtype {s['dtype']!r}; valid: {list(DTYPES)}")
    if s["attn_implementation"] not in ("sdpa", "eager", "flash_attention_2"):
        raise OptionError(f"vtp: attn_implementation {s['attn_implementation']!r}; valid: "
                          "['sdpa', 'eager', 'flash_attention_2']")
    for key, lo in (("batch_size", 1), ("max_new_tokens", 1), ("max_frames", 1)):
        v = s[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise OptionError(f"vtp: {key} must be an int >= {lo}, got {v!r}")
    if s["threads"] is not None and (not isinstance(s["threads"], int) or s["threads"] < 1):
        raise OptionError(f"vtp: threads must be an int >= 1, got {s['threads']!r}")
    if s["prompt"] is not None and "{question}" not in str(s["prompt"]):
        raise OptionError("vtp: prompt must contain {question} (and usually {image})")


def check_depth(options: Mapping[str, Any] | None, num_layers: int) -> None:
    """Every layer a config's sites name exists in a decoder of ``num_layers`` layers (read from
    the checkpoint's config before the weights load). Raises OptionError otherwise."""
    if options is None:
        return
    from ...config import PruneConfig
    from ...methods.registry import get_method
    cfg = PruneConfig.from_options(options)
    for site in get_method(cfg.method).sites(cfg, num_layers):
        layer = getattr(site, "layer", None)
        if layer is not None and not 0 <= layer < num_layers:
            raise OptionError(f"vtp: layer {layer} is out of range; this model has {num_layers} "
                              f"decoder layers, so the layer must be in [1, {num_layers - 1}]")


def decoder_depth(config) -> int | None:
    """``num_hidden_layers`` of a VLM config's language model (None if it names none)."""
    for sub in (getattr(config, "text_config", None), config):
        n = getattr(sub, "num_hidden_layers", None) if sub is not None else None
        if isinstance(n, int):
            return n
    return None
