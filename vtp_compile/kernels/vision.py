"""Carriers for the vision tower's internals (see :mod:`vtp_compile.vision_context`), and the
record of the last attached call they read: the model hooks of
:func:`vtp_compile.vision_context.attach` write it (:func:`set_record`), the op reads it."""
from __future__ import annotations

import dataclasses

import torch

from .registry import STATEFUL_TAGS, decomposed, stateful



@dataclasses.dataclass
class Record:
    """The internals of the images of one ``generate`` call, with their projected features."""
    features: torch.Tensor      # [n_img * N, D] as the prefill splices them
    cls_attn: torch.Tensor      # [n_img, N]; N = gh * gw, plus 1 (the CLS token, first) with "full"
    upper: torch.Tensor         # [n_img, N, Dv]
    keys: torch.Tensor          # [n_img, N, hd]
    received: torch.Tensor      # [n_img, N]
    grid: tuple[int, int]
    layer: int = -2             # the vision layer whose attention cls_attn/keys/received read
    refused: str = ""           # why these images' internals cannot be used (then all else empty)
    no_grid: str = ""           # why there is no one patch grid (then grid = (1, T): every token
                                # in one row; sites that read the grid refuse, VisionZip does not)


_RECORD: Record | None = None


def last_record() -> Record | None:
    """The record the model pre-hook (or a Qwen tower's forward hook) left (None before any
    attached call)."""
    return _RECORD


def set_record(rec: Record | None) -> None:
    global _RECORD
    _RECORD = rec


@torch.library.custom_op("vtp::vision_context", mutates_args=())
def vision_context(features: torch.Tensor, cls_attn: torch.Tensor, upper: torch.Tensor,
                   keys: torch.Tensor, received: torch.Tensor, grid_h: int, grid_w: int,
                   layer: int) -> torch.Tensor:
    """A carrier: returns ``features`` (a copy) and brings the vision tower's internals into the
    graph, where the passes read them from this node's arguments and then remove it."""
    return features.clone()


@vision_context.register_fake
def _(features, cls_attn, upper, keys, received, grid_h, grid_w, layer):
    return torch.empty_like(features)


@torch.library.custom_op("vtp::vision_lookup", mutates_args=(), **STATEFUL_TAGS)
def vision_lookup(features: torch.Tensor, grid_h: int, grid_w: int, dv: int,
                  hd: int, lead: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The internals :func:`vtp_compile.vision_context.attach` recorded for exactly these
    projected ``features`` ``[n_img * N, D]``: ``(cls_attn [n_img, N], upper [n_img, N, dv],
    keys [n_img, N, hd], received [n_img, N])``, ``N = lead + grid_h * grid_w`` (``lead``: the
    non-patch tokens each image starts with, 1 for a kept CLS token)."""
    return lookup(features, grid_h, grid_w, dv)


def lookup(features: torch.Tensor, grid_h: int, grid_w: int, dv: int):
    """:func:`vision_lookup`'s body (on CUDA it reads nothing on the host)."""
    rec = last_record()
    msg = ("vtp: the vision internals recorded by vtp_compile.attach() do not belong "
           "to the images of this call (features differ); call attach(model) before "
           "compiling, set torch._dynamo.config.capture_scalar_outputs = True (else a "
           "direct forward splits the vision tower from the decoder), and do not pass "
           "mm_encoder_outputs computed elsewhere")
    if rec is not None and rec.refused:
        raise ValueError(rec.refused)
    if rec is None or rec.features.shape != features.shape or rec.grid != (grid_h, grid_w):
        raise ValueError(msg)
    if features.shape[0] != rec.cls_attn.numel():
        raise ValueError(f"vtp: the vision internals hold {rec.cls_attn.numel()} patches and the "
                         f"prefill splices {features.shape[0]} visual features (the projector packs, "
                         "pools or merges patches): per-patch internals do not apply to this model")
    same = (rec.features.to(features.device, features.dtype) == features).all()
    if features.device.type == "cpu":
        if not bool(same):
            raise ValueError(msg)
    else:       # no host read on CUDA: a device-side assertion
        torch._assert_async(same, msg)
    dev = features.device
    return tuple(t.to(dev).clone(memory_format=torch.contiguous_format)
                 for t in (rec.cls_attn, rec.upper, rec.keys, rec.received))


@vision_lookup.register_fake
def _(features, grid_h, grid_w, dv, hd, lead=0):
    N = lead + grid_h * grid_w
    n = features.shape[0] // N
    return (features.new_empty((n, N), dtype=torch.float32),
            features.new_empty((n, N, dv), dtype=torch.float32),
            features.new_empty((n, N, hd), dtype=torch.float32),
            features.new_empty((n, N), dtype=torch.float32))


# ---- how these ops lower (kernels/registry.py) ----------------------------------------
def _vision_context_decomposed(features, cls_attn, upper, keys, received, grid_h, grid_w, layer):
    return features.clone()


decomposed("vision_context", _vision_context_decomposed)   # a carrier the passes remove; never left in a graph
stateful("vision_lookup", "returns the vision internals attach() recorded for this call")
