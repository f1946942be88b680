"""Optional dependencies: the runtime (``import vtp_compile``, ``backend="vtp"``) needs none of
them; the tools that do (``vtp eval``/``vtp show``, scene training, plots) name the extra to
install when one is missing.

    pip install "vtp_compile[scenes]"   # pillow, tqdm: the scene model's data, vtp eval/show
    pip install "vtp_compile[plot]"     # matplotlib: --plot
"""
from __future__ import annotations

import importlib.util

# import name -> (distribution, extra)
OPTIONAL = {"PIL": ("pillow", "scenes"), "tqdm": ("tqdm", "scenes"),
            "matplotlib": ("matplotlib", "plot")}


class MissingExtraError(ImportError):
    """An optional dependency of a tool is not installed; the message names the extra."""


def require(module: str, what: str) -> None:
    """Raise :class:`MissingExtraError` unless ``module`` (a key of :data:`OPTIONAL`) can be
    imported; ``what`` names the feature that needs it."""
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):   # a None entry in sys.modules raises ValueError
        found = False
    if not found:
        dist, extra = OPTIONAL[module]
        raise MissingExtraError(f"{what} needs {dist}, which is not installed: "
                                f"pip install \"vtp_compile[{extra}]\"")
