"""Make PyPI's torchvision 0.28.0 importable beside torch 2.13.0+cpu (the vLLM and lmms-eval
CPU environments).

PyPI's torchvision 0.28.0 wheel is a CUDA build: its ``_C.so`` needs ``libc10_cuda.so`` and does
not load beside a CPU torch. torchvision tolerates that (it runs without its C++ ops), except
that ``torchvision/_meta_registrations.py`` registers fake kernels for ``torchvision::nms`` and
``torchvision::qnms`` without checking that the ops exist, so ``import torchvision`` fails with
"operator torchvision::nms does not exist". Defining the two schemas first (no kernels: calling
them raises) lets it import; its transforms (what Qwen2-VL's image and video processors and
Pixtral's image processor use) are pure torch and work.

``requirements/install_torchvision_shim.py`` copies this file into the environment's
site-packages with a ``.pth`` line that calls :func:`install`, only where plain
``import torchvision`` fails that way (docs/serving_vllm.md); a machine with a working
torchvision (any GPU install of vLLM) never gets it. :func:`install` adds an import hook, so
torch is imported only when something imports torchvision, just before it.
"""
import sys

_LIB = None     # the torch.library.Library that holds the schemas (kept alive)


def _define():
    global _LIB
    if _LIB is not None:
        return
    import torch
    try:
        torch.ops.torchvision.nms   # noqa: B018  (defined: torchvision's _C loaded after all)
        return
    except (AttributeError, RuntimeError):
        pass
    _LIB = torch.library.Library("torchvision", "DEF")
    _LIB.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIB.define("qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor")


class _Finder:
    """A meta-path finder that finds nothing: it defines the schemas when torchvision is
    first imported, then steps aside."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        if name == "torchvision":
            sys.meta_path[:] = [f for f in sys.meta_path if f is not _Finder]
            try:
                _define()
            except Exception:   # torchvision then fails as it would without the shim
                pass
        return None


def install():
    if _Finder not in sys.meta_path:
        sys.meta_path.insert(0, _Finder)
