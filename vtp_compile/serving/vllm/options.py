"""The ``vtp`` entry of vLLM's ``mm_processor_kwargs``: parse, validate, encode.

``{"vtp": {"method": "divprune", "budget": 64}}`` takes the same keys as
``torch.compile(..., options=...)`` on the transformers path (``method``, ``budget`` or
``ratio``, the method's own options), parsed by the same :class:`vtp_compile.PruneConfig`, so
the keep rule (``min(budget, V)`` or ``ceil(V * ratio)`` in integer arithmetic) and the score
functions are vtp's own. Only methods that select before the language model can run in vLLM:
vLLM fixes every request's length (its placeholder count) before the model runs and builds one
attention layout per step for all layers, so a method that decides at decoder layer K has no
place there (docs/serving_engines.md). Those get :class:`~vtp_compile.errors.OptionError` (a
``ValueError``) naming the methods that work.

The budget is per image: vLLM's processor fixes each image's placeholder count on its own.
The video methods (``vidcom2``, ``dycoke``, ``fastvid``) read each token's frame and run on the
families that know it (:data:`FRAME_FAMILIES`; a clip is pruned per clip, an image is one frame);
:func:`refuse_frames` refuses them elsewhere.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping

KEY = "vtp"
# keys of torch.compile's options that mean nothing in vLLM (vLLM compiles the model itself)
_COMPILE_ONLY = ("inner_backend", "inductor", "inductor_config", "mode")
# the methods this plugin serves, with what each needs from vLLM besides the image features
SERVED = {
    "random": "the image features",
    "divprune": "the image features",
    "cdpruner": "the image features and the prompt's token embeddings",
    "visionzip": "the vision tower's attention at vision layer -2",
    "nuwa": "the vision tower's internals; stage 1 only (the spatial anchors)",
    "acgr": "site='encoder': the image features and the prompt's last token embedding",
    "vidcom2": "a clip's features and its frames (Qwen-VL only)",
    "dycoke": "a clip's features and its frames (Qwen-VL only; stage 1)",
    "fastvid": "a clip's features and its frames (Qwen-VL only)",
}
# the families whose adapter knows each clip's frames (the methods that read frames run there)
FRAME_FAMILIES = ("Qwen2-VL, Qwen2.5-VL, Qwen3-VL, LLaVA-OneVision (Qwen2VLForConditionalGeneration, "
                  "Qwen2_5_VLForConditionalGeneration, Qwen3VLForConditionalGeneration, "
                  "LlavaOnevisionForConditionalGeneration)")
# methods that read the prompt: their selection is part of the image's cache key
_TEXT = ("cdpruner", "acgr")
_WHY_NOT = {
    "dart": "DART picks by the key norms of decoder layer K; on the projected features it would "
            "be another method",
}


def _error(msg: str):
    from ...errors import OptionError
    return OptionError(msg)


def served_methods() -> str:
    return ", ".join(f"{m} ({why})" for m, why in SERVED.items())


@dataclasses.dataclass(frozen=True)
class ServingSpec:
    """A validated ``vtp`` option dict and the encoder site it runs."""
    options: Mapping[str, Any]      # canonical, JSON-able (method by its canonical name)
    cfg: Any                        # vtp_compile.config.PruneConfig
    site: Any                       # vtp_compile.sites.EncoderSite
    text: bool                      # reads the prompt's token embeddings
    internals: bool                 # reads the vision tower's internals

    @property
    def reads_frames(self) -> bool:
        """The site reads ``x["frames"]`` (the video methods)."""
        return "frames" in getattr(self.site, "inputs", ())

    @property
    def method(self) -> str:
        return self.cfg.method

    def n_keep(self, n_visual: int) -> int:
        """Visual tokens an image of ``n_visual`` tokens keeps (vtp's keep rule, at most all)."""
        return min(int(self.site.keep.count(n_visual)), n_visual)

    def to_json(self) -> str:
        return json.dumps(dict(self.options), sort_keys=True)


def parse(raw: Any) -> ServingSpec | None:
    """``raw``: the value of ``mm_processor_kwargs["vtp"]`` (None: the plugin is off)."""
    if raw is None:
        return None
    if isinstance(raw, str):
        return _parse_json(raw)
    if not isinstance(raw, Mapping):
        raise _error(f"vtp: mm_processor_kwargs['vtp'] must be a dict such as "
                     f"{{'method': 'divprune', 'budget': 64}}, got {raw!r}")
    return _parse_cached(json.dumps(_plain(raw), sort_keys=True))


def _plain(raw: Mapping) -> dict:
    out = {}
    for k, v in raw.items():
        if not isinstance(k, str):
            raise _error(f"vtp: option names must be strings, got {k!r}")
        out[k] = v
    return out


def _parse_json(text: str) -> ServingSpec | None:
    try:
        raw = json.loads(text)
    except ValueError as e:
        raise _error(f"vtp: the 'vtp' option is not valid JSON ({e})") from None
    return parse(raw)


_CACHE: dict[str, ServingSpec] = {}


def _parse_cached(key: str) -> ServingSpec:
    spec = _CACHE.get(key)
    if spec is None:
        spec = _build(json.loads(key))
        if len(_CACHE) < 1024:
            _CACHE[key] = spec
    return spec


def _build(opts: dict) -> ServingSpec:
    from ...config import PruneConfig
    from ...methods.registry import get_method
    from ...sites import DecodeSite, EncoderSite

    bad = [k for k in _COMPILE_ONLY if k in opts]
    if bad:
        raise _error(f"vtp: option(s) {bad} belong to torch.compile and mean nothing in vLLM; "
                     "give 'method', 'budget' or 'ratio' and the method's own options")
    # vLLM merges a request's mm_processor_kwargs into the engine's: a request that sets
    # "budget" over an engine "ratio" passes "ratio": null (and the other way round)
    opts = {k: v for k, v in opts.items() if not (k in ("budget", "ratio") and v is None)}
    name = opts.get("method", "fastv")
    if not isinstance(name, str):
        raise _error(f"vtp: 'method' must be a string; served in vLLM: {served_methods()}")
    method = get_method(name)      # unknown names: OptionError listing every method
    if method.name not in SERVED:
        why = _WHY_NOT.get(method.name, "it selects at a decoder layer, inside the forward; "
                           "vLLM fixes each request's length and KV slots before the model runs "
                           "and shares one attention layout among all layers")
        raise _error(f"vtp: method {method.name!r} cannot run in vLLM: {why}. Methods that "
                     f"select before the language model do: {served_methods()}")
    cfg = PruneConfig.from_options({**opts, "method": method.name})
    sites = method.sites(cfg, 2)
    encoder = [s for s in sites if isinstance(s, EncoderSite)]
    if not encoder:
        raise _error(f"vtp: method {method.name!r} with these options selects at a decoder layer "
                     f"(site {sites[0].name!r}); in vLLM only its encoder site runs"
                     + (": give \"site\": \"encoder\"" if "site" in cfg.params else ""))
    decode = [s for s in sites if isinstance(s, DecodeSite)]
    if decode:
        raise _error(f"vtp: {method.name!r} with these options also selects in decode steps "
                     f"(site {decode[0].name!r}: DyCoke's stage 2, 'kv_keep'), inside the model's "
                     "layers, which vLLM's attention does not expose; in vLLM only its encoder "
                     "site runs: leave 'kv_keep' unset")
    site = encoder[0]
    canonical = {"method": method.name, **{k: v for k, v in opts.items() if k != "method"}}
    return ServingSpec(options=canonical, cfg=cfg, site=site, text=method.name in _TEXT,
                       internals=bool(site.context))


ENCODER_METHODS = "random, divprune, cdpruner, acgr (site='encoder')"


def refuse_internals(spec: ServingSpec, why: str, where: str = "here",
                     runs: str = ENCODER_METHODS) -> None:
    """Raise :class:`~vtp_compile.errors.OptionError` if ``spec``'s method reads the vision
    tower's internals per patch (``visionzip``, ``nuwa``): ``why`` says what the family's tower
    or projector does instead, ``runs`` names the methods that run ``where``."""
    if spec.internals:
        raise _error(f"vtp: {spec.method} reads the vision tower per patch, and {why}; methods "
                     f"that run {where}: {runs}")


def refuse_frames(spec: ServingSpec, family: str) -> None:
    """Raise :class:`~vtp_compile.errors.OptionError` if ``spec``'s method reads frames: on
    ``family`` (a vLLM class whose adapter does not know frames) it cannot run."""
    if spec.reads_frames:
        from ...methods.registry import get_method
        others = [m for m in SERVED if not get_method(m).reads_frames]
        raise _error(f"vtp: {spec.method} reads each token's video frame, which the vtp adapter "
                     f"of vLLM's {family} does not know (it prunes images only); it runs on "
                     f"{FRAME_FAMILIES}. Served methods that read no frames: {', '.join(others)}")


def from_mm_kwargs(kwargs: Mapping[str, Any] | None) -> ServingSpec | None:
    """The spec in merged ``mm_processor_kwargs`` (None: not configured)."""
    if not kwargs:
        return None
    return parse(kwargs.get(KEY))
