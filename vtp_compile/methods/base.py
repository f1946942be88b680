"""The method interface: a method is policy. It turns a config into sites; passes do the rest."""
from __future__ import annotations

from typing import Any, ClassVar, Mapping

from ..config import PruneConfig
from .options import MethodOptions, NoOptions


class Method:
    """Subclass, set the class attributes, implement :meth:`sites`, and register.

    ``options`` is the method's typed options class (:mod:`.options`): every method-specific
    option with its type, default and meaning, validated when built; the config rejects keys it
    does not list. Checks that need the model (a layer beyond its depth) belong in :meth:`sites`.
    """
    name: ClassVar[str]
    aliases: ClassVar[tuple[str, ...]] = ()
    paper: ClassVar[str] = ""
    options: ClassVar[type[MethodOptions]] = NoOptions
    # reads the vision tower's internals: needs vtp_compile.attach(model) (see vision_context)
    vision_internals: ClassVar[bool] = False
    # why a CUDA graph cannot replay this method's graphs (None: it can); refuses reduce-overhead
    no_cuda_graphs: ClassVar[str | None] = None
    # False: the config's own budget/ratio is meaningless (chains: each stage has its own)
    takes_budget: ClassVar[bool] = True
    # its score ranks every visual token, so ``per_frame`` can spread its choice over frames
    per_frame_ok: ClassVar[bool] = False
    # it reads each token's frame itself (video methods): frames are always located, and
    # ``default_per_frame`` is how its budget is spread when the user does not say
    reads_frames: ClassVar[bool] = False
    default_per_frame: ClassVar[str] = "off"
    # how it spreads its budget over frames itself, where it does (then ``per_frame`` is refused)
    own_frame_allocation: ClassVar[str | None] = None

    def cuda_graphs_refusal(self, params) -> str | None:
        """Why CUDA graphs cannot replay this method's graphs with these options (None: they
        can); default :attr:`no_cuda_graphs`."""
        return self.no_cuda_graphs

    @property
    def defaults(self) -> Mapping[str, Any]:
        return self.options.defaults()

    def sites(self, cfg: PruneConfig, num_layers: int) -> list:
        raise NotImplementedError

    def needs_vision(self, cfg: PruneConfig) -> bool:
        """Whether this config reads the vision tower's internals (needs ``attach``)."""
        return self.vision_internals

